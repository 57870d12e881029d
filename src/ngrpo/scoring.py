"""Scoring recorded sequences without full logits: per-token log-probabilities and entropy.

The learner needs, at every response position t, log π(y_t) and the entropy of the
temperature-scaled policy. Taking them from the model's logits keeps an (N, P + T, V) logits tensor
in the model dtype and several fp32 (N, T, V) tensors (the upcast, the log-softmax, their
gradients) alive for the backward: at 8k tokens and V = 151,936 that is tens of GB per row.

Here the model's body runs once through the model's own forward (so data-parallel wrappers,
gradient checkpointing and attention kernels see an ordinary call) with the output-embedding
module bypassed for that call: its forward returns its input, so the "logits" are the final hidden
states (N, P + T, d) the head would have seen. The head is then applied to chunks of the scored
positions inside `torch.utils.checkpoint`, so at most one chunk's logits (M, V) exist at a time, in
the forward and again in the backward, which recomputes them instead of storing them. The inputs
come from `ngrpo.rollout.replay_logits` (and through it the one `ngrpo.soft_inputs.embed`).

Deviations from the full-logits path, all deliberate:
- Positions outside `response_mask` are not scored at all (no head FLOPs on padding): their
  log-probability and entropy are 0. Every consumer masks them anyway.
- The head's logits are computed twice (forward, and recomputed in the backward): about 2·V·d
  extra FLOPs per token, ~4 % of a 1.5B model's update, bought for the memory.
- When the output embedding is not a `torch.nn.Linear`, or the model transforms the head's output
  (logit soft-capping, a logit scale: detected because the returned logits are not the head's own
  output), this falls back to full logits and logs a warning once per model class.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ngrpo.losses import entropy_from_logits
from ngrpo.rollout import RolloutBatch, replay_logits, token_logprobs

log = logging.getLogger(__name__)

CHUNK_ELEMENTS = 2**24
"""Logits elements per chunk by default (64 MiB in fp32): 110 positions at V = 151,936."""

_FULL_LOGITS_CLASSES: set[type] = set()  # model classes whose logits are not the head's output


def output_head(model) -> torch.nn.Linear | None:
    """The model's output embedding when it is a plain `torch.nn.Linear`, else None."""
    try:
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    return head if isinstance(head, torch.nn.Linear) else None


@contextlib.contextmanager
def _bypassed(head: torch.nn.Module, seen: list[torch.Tensor]) -> Iterator[None]:
    """Within the block `head(x)` returns `x` (recorded in `seen`): an instance attribute shadows
    the class's `forward` and is deleted on exit."""

    def passthrough(hidden: torch.Tensor) -> torch.Tensor:
        seen.append(hidden)
        return hidden

    head.forward = passthrough
    try:
        yield
    finally:
        del head.forward


def _chunk_scores(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    labels: torch.Tensor, temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Log-prob and entropy of M positions: hidden (M, d), labels (M,) -> (M,), (M,).

    The same arithmetic as the full path (`token_logprobs`, `entropy_from_logits` on the fp32
    logits divided by the temperature), on one chunk."""
    logits = F.linear(hidden, weight, bias)  # (M, V) in the model dtype, as the head computes it
    scale = temperature if temperature > 0 else 1.0
    logp = token_logprobs(logits, labels, temperature)  # (M,)
    entropy = entropy_from_logits(logits.float() / scale)  # (M,)
    return logp, entropy


def chunked_scores(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    labels: torch.Tensor,
    temperature: float,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies of M positions, hidden (M, d), labels (M,) -> (M,), (M,), with the
    head applied to chunks of ⌊chunk_elements / V⌋ positions (at least 1), each checkpointed when
    gradients are enabled so its logits are recomputed in the backward rather than stored."""
    rows = max(1, chunk_elements // head.weight.shape[0])
    logps, entropies = [], []
    for h, y in zip(hidden.split(rows), labels.split(rows), strict=True):
        if torch.is_grad_enabled():
            logp, entropy = checkpoint(  # deterministic: no RNG state to stash per chunk
                _chunk_scores, h, head.weight, head.bias, y, temperature, use_reentrant=False,
                preserve_rng_state=False,
            )  # fmt: skip
        else:
            logp, entropy = _chunk_scores(h, head.weight, head.bias, y, temperature)
        logps.append(logp)
        entropies.append(entropy)
    if not logps:  # nothing to score
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat(logps), torch.cat(entropies)


def _full_scores(model, batch, temperature, embedding) -> tuple[torch.Tensor, torch.Tensor]:
    logits = replay_logits(model, batch, embedding=embedding)  # (N, T, V)
    scale = temperature if temperature > 0 else 1.0
    logp = token_logprobs(logits, batch.response_ids, temperature)  # (N, T)
    return logp, entropy_from_logits(logits.float() / scale)  # (N, T), (N, T)


def score_tokens(
    model,
    batch: RolloutBatch,
    temperature: float,
    *,
    embedding=None,
    head: torch.nn.Module | None = None,
    chunk_elements: int | None = CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs (N, T) of the sampled tokens from the recorded inputs and the entropy (N, T) of
    the temperature-scaled policy, both fp32 and 0 outside `response_mask`. Gradients flow when
    enabled.

    `chunk_elements=None` takes today's full-logits path (for comparisons). `embedding` and
    `head`: the unwrapped model's input and output embeddings, when `model` is a data-parallel
    wrapper that does not expose them (default: the model's own).
    """
    mask = batch.response_mask.bool()  # (N, T)
    head = output_head(model) if head is None else head
    if chunk_elements is None or not isinstance(head, torch.nn.Linear) or (
        type(model) in _FULL_LOGITS_CLASSES
    ):
        if chunk_elements is not None and type(model) not in _FULL_LOGITS_CLASSES:
            _FULL_LOGITS_CLASSES.add(type(model))
            log.warning("%s: output embedding is not a torch.nn.Linear; scoring with full logits",
                        type(model).__name__)  # fmt: skip
        logp, entropy = _full_scores(model, batch, temperature, embedding)
        return logp.masked_fill(~mask, 0.0), entropy.masked_fill(~mask, 0.0)
    seen: list[torch.Tensor] = []
    with _bypassed(head, seen):
        hidden = replay_logits(model, batch, embedding=embedding)  # (N, T, d) final hidden states
    if len(seen) != 1 or not _same_storage(hidden, seen[0]):
        _FULL_LOGITS_CLASSES.add(type(model))
        log.warning("%s transforms its head's output; scoring with full logits",
                    type(model).__name__)  # fmt: skip
        return score_tokens(model, batch, temperature, embedding=embedding, head=head)
    picked = hidden[mask]  # (M, d) scored positions only
    logp_m, entropy_m = chunked_scores(
        picked, head, batch.response_ids[mask], temperature, chunk_elements
    )  # (M,), (M,)
    logp = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)  # (N, T)
    entropy = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)  # (N, T)
    return logp.masked_scatter(mask, logp_m), entropy.masked_scatter(mask, entropy_m)


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether `a` is a view into `b`'s memory (the model returned the head's output as is)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
