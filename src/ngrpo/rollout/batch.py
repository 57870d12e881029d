"""The rollout record handed from the engine to rewards and the learner."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ngrpo.method.soft_inputs import SoftInputs


@dataclass
class RolloutBatch:
    """Rollouts, rows ordered prompt-major: row i*n + j is sample j of prompt i."""

    prompt_ids: torch.LongTensor  # (N, P) left-padded with the pad id
    prompt_mask: torch.LongTensor  # (N, P) 1 on prompt tokens
    response_ids: torch.LongTensor  # (N, T) right-padded with the pad id
    response_mask: torch.LongTensor  # (N, T) 1 up to and including EOS
    logprobs: torch.Tensor  # (N, T) log softmax(z/temperature) of each sampled token; 0 on padding
    soft_inputs: SoftInputs  # (N, P + T, K) records of the FULL sequence, prompt then response
    mixed: torch.BoolTensor  # (N, T) the input recorded at this response position is mixed
    stats: dict[str, float]  # rollout/* metrics
    prompt_index: torch.LongTensor  # (N,) which prompt each row answers
    truncated: torch.BoolTensor | None = None  # (N,) stopped by max_new_tokens, not by EOS
    eligible: torch.BoolTensor | None = field(default=None, repr=False)  # (N, T) gate could fire

    @property
    def attention_mask(self) -> torch.LongTensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)  # (N, P + T)

    def select(self, rows: torch.Tensor | slice | list[int]) -> RolloutBatch:
        """A subset of rows (e.g. a learner mini-batch); `stats` are shared, not recomputed."""

        def pick(x):
            return None if x is None else x[rows]

        return RolloutBatch(
            prompt_ids=self.prompt_ids[rows], prompt_mask=self.prompt_mask[rows],
            response_ids=self.response_ids[rows], response_mask=self.response_mask[rows],
            logprobs=self.logprobs[rows], soft_inputs=self.soft_inputs.select(rows),
            mixed=self.mixed[rows], stats=self.stats, prompt_index=self.prompt_index[rows],
            truncated=pick(self.truncated), eligible=pick(self.eligible),
        )  # fmt: skip

    def responses(self) -> list[list[int]]:
        """Each row's response ids up to and including EOS."""
        lengths = self.response_mask.sum(-1).tolist()
        return [row[:n] for row, n in zip(self.response_ids.tolist(), lengths, strict=True)]


_SUMMED_STATS = ("rollout/tokens", "rollout/mixed_tokens", "rollout/graph_capture_s",
                 "rollout/graphs", "rollout/seconds", "rollout/eligible_tokens",
                 "rollout/embed_shift_tokens")  # fmt: skip
WEIGHTED_STATS = {
    "rollout/mixed_frac": "rollout/eligible_tokens",
    "rollout/embed_shift": "rollout/embed_shift_tokens",
    "rollout/neighbor_weight": "rollout/mixed_tokens",
}
"""Ratio stats and the count each is a mean over: merging batches (or processes) weights each
part's value by its count, so the result is the ratio of the whole."""


def concat_batches(parts: list[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """Rollout batches of separately generated prompts as one batch (rows in order, prompt indices
    offset): prompts left-padded and responses right-padded to the widest part, records padded
    with plain pad-token records (weight 0 beyond the first slot, zero noise), which score nothing
    (masked). Stats: totals summed, fractions recomputed from the rows, ratios weighted by their
    counts (`WEIGHTED_STATS`), other means weighted by rows. One part is returned as is."""
    if len(parts) == 1:
        return parts[0]
    width_p = max(b.prompt_ids.shape[1] for b in parts)
    width_t = max(b.response_ids.shape[1] for b in parts)

    def pad(x: torch.Tensor, left: int, right: int, value) -> torch.Tensor:
        return torch.nn.functional.pad(x, (left, right), value=value)

    def records(ids: torch.Tensor) -> SoftInputs:
        return SoftInputs.from_token_ids(ids)

    pieces: dict[str, list] = {key: [] for key in (
        "prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs", "soft", "mixed",
        "prompt_index", "truncated", "eligible")}  # fmt: skip
    offset = 0
    for b in parts:
        n, p = b.prompt_ids.shape
        left, right = width_p - p, width_t - b.response_ids.shape[1]
        pieces["prompt_ids"].append(pad(b.prompt_ids, left, 0, pad_token_id))
        pieces["prompt_mask"].append(pad(b.prompt_mask, left, 0, 0))
        pieces["response_ids"].append(pad(b.response_ids, 0, right, pad_token_id))
        pieces["response_mask"].append(pad(b.response_mask, 0, right, 0))
        pieces["logprobs"].append(pad(b.logprobs, 0, right, 0.0))
        pieces["mixed"].append(pad(b.mixed, 0, right, False))
        pieces["eligible"].append(None if b.eligible is None else pad(b.eligible, 0, right, False))
        fill = torch.full((n, left), pad_token_id, dtype=torch.long, device=b.prompt_ids.device)
        tail = torch.full((n, right), pad_token_id, dtype=torch.long, device=b.prompt_ids.device)
        soft = b.soft_inputs
        pieces["soft"].append(SoftInputs.cat(
            [records(fill), soft, records(tail)], dim=1
        ))  # fmt: skip
        pieces["prompt_index"].append(b.prompt_index + offset)
        pieces["truncated"].append(b.truncated)
        offset += int(b.prompt_index.max()) + 1

    def cat(key: str):
        values = pieces[key]
        return None if any(v is None for v in values) else torch.cat(values)

    rows = [len(b.response_ids) for b in parts]
    stats: dict[str, float] = {}
    for key in parts[0].stats:
        values = [b.stats.get(key, 0.0) for b in parts]
        if key in _SUMMED_STATS:
            stats[key] = float(sum(values))
        elif WEIGHTED_STATS.get(key) in parts[0].stats:
            weights = [b.stats.get(WEIGHTED_STATS[key], 0.0) for b in parts]
            total = sum(weights)
            weighted = sum(v * w for v, w in zip(values, weights, strict=True))
            stats[key] = weighted / total if total else 0.0
        else:
            stats[key] = sum(v * r for v, r in zip(values, rows, strict=True)) / sum(rows)
    batch = RolloutBatch(
        prompt_ids=cat("prompt_ids"), prompt_mask=cat("prompt_mask"),
        response_ids=cat("response_ids"), response_mask=cat("response_mask"),
        logprobs=cat("logprobs"), soft_inputs=SoftInputs.cat(pieces["soft"], dim=0),
        mixed=cat("mixed"), stats=stats, prompt_index=cat("prompt_index"),
        truncated=cat("truncated"), eligible=cat("eligible"),
    )  # fmt: skip
    tokens = float(batch.response_mask.sum())
    stats["rollout/response_len"] = tokens / len(batch.response_ids)
    if batch.truncated is not None:
        stats["rollout/truncated_frac"] = float(batch.truncated.float().mean())
    if batch.eligible is not None and "rollout/mixed_frac" in stats:
        eligible = int(batch.eligible.sum())
        stats["rollout/mixed_frac"] = int(batch.mixed.sum()) / eligible if eligible else 0.0
    if "rollout/seconds" in stats:
        stats["rollout/tokens_per_s"] = tokens / max(stats["rollout/seconds"], 1e-9)
    return batch
