"""How the learner cuts a step's rollouts (`LearnerParams` holds the knobs): mini-batches of whole
groups, micro-batches of rows in order or packed to a token budget, each trimmed to its longest
prompt and response, the loss mask, and under FSDP the padding micro-batches that keep every
process's collectives in step."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ngrpo.method.soft_inputs import SoftInputs
from ngrpo.rollout import RolloutBatch


@dataclass(frozen=True)
class LearnerParams:
    """The loss and batching knobs of one update (plain values, no config object)."""

    group_size: int
    mini_batch_groups: int
    micro_batch_size: int
    num_iterations: int = 1
    temperature: float = 1.0
    beta: float = 0.0
    kl_estimator: str = "k3"
    clip_low: float = 0.2
    clip_high: float = 0.2
    importance_sampling_level: str = "token"
    loss_type: str = "token-mean"
    entropy_coef: float = 0.0
    max_grad_norm: float | None = 1.0
    mask_truncated_completions: bool = False
    clip_ratio_c: float | None = None  # verl's dual clip for A < 0 (None: off)
    soft_input_grad: str = "all"  # all | none: embedding gradient through mixed positions
    max_tokens_per_micro_batch: int | None = None  # None: `micro_batch_size` rows per micro-batch
    chunk_elements: int | None = None  # logits elements per head chunk (None: the device default)
    full_logits: bool = False  # score through full logits (the old path, for comparisons)
    old_logprobs: str = "rollout"  # rollout | recompute: where π_old comes from
    rollout_correction: str = "none"  # see ngrpo.method.rollout_correction.CORRECTIONS
    rollout_correction_cap: float = 2.0  # truncation / masking threshold of the weights
    rollout_correction_min: float | None = None  # ... and their lower bound (None: none)
    rollout_correction_masked: str = "keep"  # keep | drop: masked tokens in the loss mask or not


def micro_batches(
    prompt_lengths: torch.Tensor,
    response_lengths: torch.Tensor,
    micro_batch_size: int,
    max_tokens: int | None = None,
) -> list[torch.Tensor]:
    """Split rows 0..n-1 (lengths (n,) each) into micro-batches of row indices.

    `max_tokens=None`: `micro_batch_size` consecutive rows each. Otherwise rows are taken longest
    first and a micro-batch grows while rows × (longest prompt + longest response) ≤ `max_tokens`;
    a row over the budget on its own gets a micro-batch alone."""
    n = len(prompt_lengths)
    if max_tokens is None:
        return list(torch.arange(n).split(micro_batch_size))
    order = torch.argsort(prompt_lengths + response_lengths, descending=True, stable=True)
    prompts, responses = prompt_lengths.tolist(), response_lengths.tolist()
    groups: list[list[int]] = []
    width_p = width_t = 0
    for row in order.tolist():
        p, t = max(width_p, prompts[row]), max(width_t, responses[row])
        if groups and (len(groups[-1]) + 1) * (p + t) <= max_tokens:
            groups[-1].append(row)
            width_p, width_t = p, t
        else:
            groups.append([row])
            width_p, width_t = prompts[row], responses[row]
    return [torch.tensor(rows, dtype=torch.long) for rows in groups]


def trim_padding(batch: RolloutBatch) -> tuple[RolloutBatch, int]:
    """The rows cut to their longest prompt (left padding dropped) and longest response (right
    padding dropped), and the kept response width T' (responses keep columns 0..T'-1)."""
    p = batch.prompt_mask.shape[1]
    # first prompt column any row uses (at least one column: position P − 1 scores token 0)
    start = min(p - int(batch.prompt_mask.sum(-1).max()), p - 1)
    width = int(batch.response_mask.sum(-1).max())  # response columns any row uses
    cols = slice(start, p + width)

    def pick(x):
        return None if x is None else x[:, :width]

    soft = batch.soft_inputs
    trimmed = dataclasses.replace(
        batch,
        prompt_ids=batch.prompt_ids[:, start:], prompt_mask=batch.prompt_mask[:, start:],
        response_ids=batch.response_ids[:, :width], response_mask=batch.response_mask[:, :width],
        logprobs=batch.logprobs[:, :width],
        soft_inputs=SoftInputs(soft.ids[:, cols], soft.weights[:, cols],
                               None if soft.noise is None else soft.noise[:, cols]),
        mixed=batch.mixed[:, :width], eligible=pick(batch.eligible),
    )  # fmt: skip
    return trimmed, width


def iter_micro_batches(batch: RolloutBatch, rows: torch.Tensor, params: LearnerParams):
    """(row indices, trimmed sub-batch, kept response width) of each micro-batch of `rows`."""
    prompt_lengths = batch.prompt_mask[rows].sum(-1).cpu()  # (n,)
    response_lengths = batch.response_mask[rows].sum(-1).cpu()  # (n,)
    parts = micro_batches(prompt_lengths, response_lengths, params.micro_batch_size,
                          params.max_tokens_per_micro_batch)  # fmt: skip
    for part in parts:
        micro = rows[part.to(rows.device)]
        sub, width = trim_padding(batch.select(micro))
        yield micro, sub, width


def loss_mask(batch: RolloutBatch, mask_truncated: bool) -> torch.Tensor:
    """Response tokens that enter the loss (N, T)."""
    mask = batch.response_mask.float()  # (N, T)
    if mask_truncated and batch.truncated is not None:
        mask = mask * (~batch.truncated).float()[:, None]
    return mask


def fsdp_padding(parts: int, accelerator, device) -> int:
    """Extra zero-gradient micro-batches this process runs so that every process runs as many
    as the busiest (only under FSDP, where every forward is a collective; DDP's processes
    synchronise once per mini-batch whatever their counts)."""
    if accelerator is None or not getattr(accelerator, "equal_micro_batches", False):
        return 0
    most = torch.tensor([float(parts)], device=device)
    torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
    return int(most.item()) - parts


def describe_shape(where: str, sub: RolloutBatch, width: int) -> str:
    """A trimmed micro-batch's shape, for out-of-memory messages."""
    rows, prompt = sub.prompt_ids.shape
    return f"{where}: {rows} rows × ({prompt} prompt + {width} response) tokens"


def budget_tokens(sub: RolloutBatch, width: int) -> int:
    """Tokens of a trimmed micro-batch as the token budget counts them: rows × (prompt +
    response width)."""
    return len(sub.prompt_ids) * (sub.prompt_ids.shape[1] + width)


def mini_batches(batch: RolloutBatch, params: LearnerParams) -> list[torch.Tensor]:
    """Row indices of each mini-batch (whole groups, in order)."""
    rows = torch.arange(len(batch.response_ids), device=batch.response_ids.device)
    return list(rows.split(params.mini_batch_groups * params.group_size))
