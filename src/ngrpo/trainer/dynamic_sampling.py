"""DAPO dynamic sampling (Yu et al. 2025; verl `algorithm.filter_groups`): keep only groups whose
rewards vary, and concatenate the rollouts of several rounds into one training batch.

A group whose G rewards are all equal has zero advantage everywhere and contributes no policy
gradient; dropping it and drawing more prompts keeps the effective batch size up. The trainer
calls `collect`, which runs `varied_groups` on each round's rewards and joins the kept rows with
`ngrpo.rollout.batch.concat_batches` (the one padding and concatenation of rollout batches);
`merge_stats` combines the rounds' `rollout/*` metrics so they describe every rollout generated in
the step.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence

import torch

from ngrpo.rollout import RolloutBatch
from ngrpo.rollout.batch import WEIGHTED_STATS, concat_batches


def varied_groups(rewards: torch.Tensor) -> torch.Tensor:
    """Groups (P,) whose rewards (P, G) are not all equal (exact comparison, as verl's std > 0)."""
    return rewards.max(dim=1).values != rewards.min(dim=1).values  # (P,)


def renumbered(batch: RolloutBatch) -> RolloutBatch:
    """`batch` with `prompt_index` renumbered 0..P−1 in row order (rows prompt-major)."""
    change = torch.ones_like(batch.prompt_index, dtype=torch.bool)  # (N,)
    change[1:] = batch.prompt_index[1:] != batch.prompt_index[:-1]
    batch.prompt_index = change.long().cumsum(0) - 1  # (N,)
    return batch


def cat_batches(batches: Sequence[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """Deprecated: `ngrpo.rollout.batch.concat_batches` (then `renumbered` and `merge_stats`)."""
    warnings.warn(
        "ngrpo.trainer.dynamic_sampling.cat_batches is deprecated; use "
        "ngrpo.rollout.batch.concat_batches", DeprecationWarning, stacklevel=2,
    )  # fmt: skip
    merged = renumbered(concat_batches(list(batches), pad_token_id))
    merged.stats = merge_stats([b.stats for b in batches], [len(b.prompt_index) for b in batches])
    return merged


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


def _moved(batch: RolloutBatch, device) -> RolloutBatch:
    """`batch` with every tensor on `device` (stats shared)."""
    fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    for name, value in fields.items():
        if isinstance(value, torch.Tensor):
            fields[name] = value.to(device)
    fields["soft_inputs"] = batch.soft_inputs.to(device)
    return RolloutBatch(**fields)


def _whole_round(batch, texts, rewards, values, gather, pad_token_id):
    """Every process's share of a round as one batch, in rank order (each process rolled out a
    contiguous share of the round's prompts, so rank order is the round's prompt order)."""
    device = batch.prompt_ids.device
    parts = gather((_moved(batch, "cpu"), texts, rewards.cpu(), values))
    whole = concat_batches([_moved(b, device) for b, *_ in parts], pad_token_id)
    if values is not None:
        values = {name: [v for *_, vs in parts for v in vs[name]] for name in values}
    return (
        whole,
        [t for _, ts, _, _ in parts for t in ts],
        torch.cat([r for _, _, r, _ in parts]).to(device),
        values,
    )


def collect(
    draw: Callable[[int], list[int]],
    rollout: Callable[[list[int], int], tuple[RolloutBatch, list[str], torch.Tensor]],
    *,
    need: int,
    group_size: int,
    max_rounds: int,
    pad_token_id: int,
    gather: Callable[[object], list] | None = None,
    values: dict[str, list] | None = None,
) -> tuple[RolloutBatch, list[str], torch.Tensor, dict[str, float]]:
    """Rounds of `need` fresh prompts (`draw(need)` -> indices; `rollout(indices, round)` ->
    (batch, texts, rewards (N,))), keeping the groups whose rewards vary, until `need` are kept
    (the excess of the last round is dropped, as verl does) or `max_rounds` rounds ran; then the
    step trains on what it has, or on the last round as drawn if no group varied at all.
    `values` (a dict): `rollout` returns a fourth item, each reward function's value per row, and
    `values` receives them for the rows of the merged batch.

    Several processes: `gather(obj)` returns every process's `obj` in rank order, and `rollout`
    rolls out this process's contiguous share of the indices it is given. Each round's rollouts
    are gathered whole, so every process makes the same choice of groups as one process would
    and returns the same merged batch (the caller takes its share for the learner); the merged
    `stats` describe this process's own rollouts (the trainer combines processes).

    Returns the merged batch, its texts, its rewards (N,) and `rollout/dynamic_sampling_rounds`,
    `rollout/groups_dropped` (all-equal groups seen), `rollout/groups_kept`. The caller's sampler
    advances by every round, so a checkpointed position keeps resume exact."""
    kept, texts_kept, rewards_kept, stats, rows = [], [], [], [], []
    values_kept: dict[str, list] = {}
    have = dropped = rounds = 0
    while have < need and rounds < max_rounds:
        batch, texts, rewards, *extra = rollout(draw(need), rounds)
        round_values = extra[0] if values is not None else None
        rounds += 1
        stats.append(batch.stats)
        rows.append(len(rewards))
        if gather is not None:
            batch, texts, rewards, round_values = _whole_round(
                batch, texts, rewards, round_values, gather, pad_token_id
            )
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
        for name, per_row in (round_values or {}).items():
            values_kept.setdefault(name, []).extend(per_row[i] for i in picked)
    if not kept:
        kept, texts_kept, rewards_kept = [batch], texts, [rewards]
        values_kept = dict(round_values or {})
    if values is not None:
        values.update(values_kept)
    merged = renumbered(concat_batches(kept, pad_token_id))
    merged.stats = merge_stats(stats, rows)
    metrics = {
        "rollout/dynamic_sampling_rounds": float(rounds),
        "rollout/groups_dropped": float(dropped),
        "rollout/groups_kept": float(have),
    }
    return merged, texts_kept, torch.cat(rewards_kept), metrics


def learner_slots(groups: int, mini_batch_prompts: int, world: int, rank: int) -> list[int]:
    """The merged groups process `rank` learns from: its slice of every mini-batch of
    `mini_batch_prompts` (`ngrpo.sharding.data_parallel.process_prompt_slots`), the last,
    partial mini-batch (a step at `max_sampling_rounds` with fewer groups) split evenly, the
    remainder of that split (fewer than `world` groups) left out."""
    from ngrpo.sharding.data_parallel import process_prompt_slots

    full = groups // mini_batch_prompts * mini_batch_prompts
    slots = process_prompt_slots(full, mini_batch_prompts, world, rank) if full else []
    rest = (groups - full) // world
    return slots + [full + rank * rest + i for i in range(rest)]
