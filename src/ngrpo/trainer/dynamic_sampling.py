"""DAPO dynamic sampling (Yu et al. 2025; verl `algorithm.filter_groups`): keep only groups whose
rewards vary, and concatenate the rollouts of several rounds into one training batch.

A group whose G rewards are all equal has zero advantage everywhere and contributes no policy
gradient; dropping it and drawing more prompts keeps the effective batch size up. The trainer
calls `collect`, which runs `varied_groups` on each round's rewards and `cat_batches` on the kept
rows; `merge_stats` combines the rounds' `rollout/*` metrics so they describe every rollout
generated in the step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ngrpo.method.soft_inputs import SoftInputs
from ngrpo.rollout import RolloutBatch
from ngrpo.rollout.batch import WEIGHTED_STATS


def varied_groups(rewards: torch.Tensor) -> torch.Tensor:
    """Groups (P,) whose rewards (P, G) are not all equal (exact comparison, as verl's std > 0)."""
    return rewards.max(dim=1).values != rewards.min(dim=1).values  # (P,)


def _pad(x: torch.Tensor, length: int, value, left: bool) -> torch.Tensor:
    """Pad dim 1 of x (N, L, ...) to `length` with `value`, on the left or the right."""
    extra = length - x.shape[1]
    if extra == 0:
        return x
    fill = torch.full((x.shape[0], extra, *x.shape[2:]), value, dtype=x.dtype, device=x.device)
    return torch.cat([fill, x] if left else [x, fill], dim=1)


def _pad_soft(soft: SoftInputs, length: int, pad_id: int, left: bool, k: int) -> SoftInputs:
    soft = soft.pad_k(k)
    weights = _pad(soft.weights, length, 0.0, left)  # (N, L, K)
    first = _pad(soft.weights[..., :1], length, 1.0, left)  # plain [1, 0, ...] padding records
    weights = torch.cat([first, weights[..., 1:]], dim=-1)
    noise = None if soft.noise is None else _pad(soft.noise, length, 0.0, left)
    return SoftInputs(_pad(soft.ids, length, pad_id, left), weights, noise)


def cat_batches(batches: Sequence[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """Rows of several rollout batches in one (prompts left-padded, responses right-padded to the
    longest; padding records are plain pad tokens, masked out). `prompt_index` is renumbered
    0..P−1 in order; `stats` are `merge_stats` of the batches' stats."""
    p = max(b.prompt_ids.shape[1] for b in batches)
    t = max(b.response_ids.shape[1] for b in batches)
    k = max(b.soft_inputs.shape[2] for b in batches)
    parts = []
    for b in batches:
        p0 = b.prompt_ids.shape[1]
        noise = b.soft_inputs.noise
        prompt_soft = SoftInputs(
            b.soft_inputs.ids[:, :p0], b.soft_inputs.weights[:, :p0],
            None if noise is None else noise[:, :p0],
        )  # fmt: skip
        response_soft = SoftInputs(
            b.soft_inputs.ids[:, p0:], b.soft_inputs.weights[:, p0:],
            None if b.soft_inputs.noise is None else b.soft_inputs.noise[:, p0:],
        )  # fmt: skip
        soft = SoftInputs.cat(
            [_pad_soft(prompt_soft, p, pad_token_id, True, k),
             _pad_soft(response_soft, t, pad_token_id, False, k)], dim=1,
        )  # fmt: skip
        parts.append((b, soft))
    groups = sum(len(b.prompt_index.unique()) for b in batches)
    n_rows = sum(len(b.prompt_index) for b in batches)
    g = n_rows // groups
    device = batches[0].prompt_ids.device
    eligible = None
    if all(b.eligible is not None for b in batches):
        eligible = torch.cat([_pad(b.eligible, t, False, False) for b in batches])
    truncated = None
    if all(b.truncated is not None for b in batches):
        truncated = torch.cat([b.truncated for b in batches])
    return RolloutBatch(
        prompt_ids=torch.cat([_pad(b.prompt_ids, p, pad_token_id, True) for b in batches]),
        prompt_mask=torch.cat([_pad(b.prompt_mask, p, 0, True) for b in batches]),
        response_ids=torch.cat([_pad(b.response_ids, t, pad_token_id, False) for b in batches]),
        response_mask=torch.cat([_pad(b.response_mask, t, 0, False) for b in batches]),
        logprobs=torch.cat([_pad(b.logprobs, t, 0.0, False) for b in batches]),
        soft_inputs=SoftInputs.cat([soft for _, soft in parts], dim=0),
        mixed=torch.cat([_pad(b.mixed, t, False, False) for b in batches]),
        stats=merge_stats([b.stats for b in batches], [len(b.prompt_index) for b in batches]),
        prompt_index=torch.arange(groups, device=device).repeat_interleave(g),
        truncated=truncated,
        eligible=eligible,
    )


_SUMS = ("rollout/tokens", "rollout/mixed_tokens", "rollout/seconds", "rollout/eligible_tokens",
         "rollout/embed_shift_tokens")  # fmt: skip
# per-mixed-token means, weighted by mixed tokens
_PER_MIXED = ("rollout/embed_shift", "rollout/neighbor_weight")


def merge_stats(stats: Sequence[dict[str, float]], rows: Sequence[int]) -> dict[str, float]:
    """`rollout/*` metrics of several batches as if they were one: totals summed, per-mixed-token
    means weighted by mixed tokens, `mixed_frac` by eligible tokens, the rest by rows."""
    merged: dict[str, float] = {}
    mixed = [s.get("rollout/mixed_tokens", 0.0) for s in stats]
    eligible = [m / s["rollout/mixed_frac"] if s.get("rollout/mixed_frac") else 0.0
                for m, s in zip(mixed, stats, strict=True)]  # fmt: skip
    for key in stats[0]:
        values = [s[key] for s in stats]
        if key in _SUMS:
            merged[key] = float(sum(values))
            continue
        weights = mixed if key in _PER_MIXED else eligible if key == "rollout/mixed_frac" else rows
        if WEIGHTED_STATS.get(key) in stats[0]:  # the count the ratio is a mean over
            weights = [s.get(WEIGHTED_STATS[key], 0.0) for s in stats]
        total = sum(weights)
        weighted = sum(v * w for v, w in zip(values, weights, strict=True))
        merged[key] = weighted / total if total else 0.0
    if "rollout/tokens" in merged:
        merged["rollout/response_len"] = merged["rollout/tokens"] / max(sum(rows), 1)
        if merged.get("rollout/seconds"):
            merged["rollout/tokens_per_s"] = merged["rollout/tokens"] / merged["rollout/seconds"]
    return merged


def collect(
    draw: Callable[[int], list[int]],
    rollout: Callable[[list[int], int], tuple[RolloutBatch, list[str], torch.Tensor]],
    *,
    need: int,
    group_size: int,
    max_rounds: int,
    pad_token_id: int,
) -> tuple[RolloutBatch, list[str], torch.Tensor, dict[str, float]]:
    """Rounds of `need` fresh prompts (`draw(need)` -> indices; `rollout(indices, round)` ->
    (batch, texts, rewards (N,))), keeping the groups whose rewards vary, until `need` are kept
    (the excess of the last round is dropped, as verl does) or `max_rounds` rounds ran; then the
    step trains on what it has, or on the last round as drawn if no group varied at all.

    Returns the merged batch, its texts, its rewards (N,) and `rollout/dynamic_sampling_rounds`,
    `rollout/groups_dropped` (all-equal groups seen), `rollout/groups_kept`. The caller's sampler
    advances by every round, so a checkpointed position keeps resume exact."""
    kept, texts_kept, rewards_kept, stats, rows = [], [], [], [], []
    have = dropped = rounds = 0
    while have < need and rounds < max_rounds:
        batch, texts, rewards = rollout(draw(need), rounds)
        rounds += 1
        stats.append(batch.stats)
        rows.append(len(rewards))
        keep = varied_groups(rewards.view(-1, group_size))  # (P,)
        dropped += int((~keep).sum())
        groups = keep.nonzero().flatten()[: need - have].tolist()
        have += len(groups)
        if not groups:
            continue
        picked = [i * group_size + j for i in groups for j in range(group_size)]
        kept.append(batch.select(torch.tensor(picked, device=batch.prompt_ids.device)))
        texts_kept += [texts[i] for i in picked]
        rewards_kept.append(rewards[picked])
    if not kept:
        kept, texts_kept, rewards_kept = [batch], texts, [rewards]
    merged = cat_batches(kept, pad_token_id)
    merged.stats = merge_stats(stats, rows)
    metrics = {
        "rollout/dynamic_sampling_rounds": float(rounds),
        "rollout/groups_dropped": float(dropped),
        "rollout/groups_kept": float(have),
    }
    return merged, texts_kept, torch.cat(rewards_kept), metrics
