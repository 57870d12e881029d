"""Scoring recorded sequences without full logits: per-token log-probabilities and entropy.

The learner needs, at every response position t, log π(y_t) and the entropy of the
temperature-scaled policy. Taking them from the model's logits keeps an (N, P + T, V) logits tensor
in the model dtype and several fp32 (N, T, V) tensors (the upcast, the log-softmax, their
gradients) alive for the backward: at 8k tokens and V = 151,936 that is tens of GB per row.

Here the model's body runs once through the model's own forward (so data-parallel wrappers,
gradient checkpointing and attention kernels see an ordinary call) with the output-embedding
module bypassed for that call: its forward returns its input, so the "logits" are the final hidden
states (N, P + T, d) the head would have seen. The head is then applied to chunks of the scored
positions by one autograd function (`_ChunkedHead`) that keeps only its inputs: the backward
recomputes each chunk's logits, writes that chunk's hidden-state gradient and adds its share into
a single (V, d) weight-gradient buffer, so at most one chunk's logits (c, V) exist at a time. The
inputs come from `ngrpo.rollout.replay.replay_records` (and through it the one
`ngrpo.method.soft_inputs.embed`).

Deviations from the full-logits path, all deliberate:
- Positions outside `response_mask` are not scored at all (no head FLOPs on padding): their
  log-probability and entropy are 0. Every consumer masks them anyway.
- The head's logits are computed twice (forward, and recomputed in the backward): about 2·V·d
  extra FLOPs per token, ~4 % of a 1.5B model's update, bought for the memory.
- The gradients are written by hand (formula in `_ChunkedHead`), not by autograd: they equal
  autograd's on the full logits within 1e-6 relative (tested). Double backward is not supported.
- With bf16 weights the head's weight gradient is summed over chunks in fp32 and cast once (the
  full path's single matmul rounds once too); the hidden-state gradient is in the model dtype.
- When the output embedding is not a `torch.nn.Linear`, or the model transforms the head's output
  (logit soft-capping, a logit scale: detected because the returned logits are not the head's own
  output), this falls back to full logits and logs a warning once per model class.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ngrpo.method.losses import entropy_from_logits
from ngrpo.method.soft_inputs import SoftInputs
from ngrpo.rollout import RolloutBatch, token_logprobs
from ngrpo.rollout.hf import head_bypassed
from ngrpo.rollout.replay import mixed_detach_mask, replay_records

log = logging.getLogger(__name__)

CHUNK_ELEMENTS = {"cuda": 2**26, "cpu": 2**22}
"""Logits elements per chunk by default (fp32: 256 MiB on CUDA, 16 MiB elsewhere), i.e. 441 / 27
positions at V = 151,936. Every chunk adds its share into the head's (V, d) weight gradient, so
fewer, larger chunks are faster where memory allows; on CPU memory is what the target is about."""


def default_chunk_elements(device: torch.device) -> int:
    """`CHUNK_ELEMENTS` for this device type (the CPU value for anything but CUDA)."""
    return CHUNK_ELEMENTS["cuda" if device.type == "cuda" else "cpu"]


_FULL_LOGITS_CLASSES: set[type] = set()  # model classes whose logits are not the head's output


def output_head(model) -> torch.nn.Linear | None:
    """The model's output embedding when it is a plain `torch.nn.Linear`, else None."""
    try:
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    return head if isinstance(head, torch.nn.Linear) else None


def _chunk_scores(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    labels: torch.Tensor, temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Log-prob, entropy, log-softmax and softmax of M positions: hidden (M, d), labels (M,) ->
    (M,), (M,), (M, V), (M, V). The full path's arithmetic (`token_logprobs`,
    `entropy_from_logits`: fp32 logits divided by the temperature) with at most two (M, V)
    tensors alive: the division is in place and the entropy's sum is a batched dot product."""
    scale = temperature if temperature > 0 else 1.0
    logits = F.linear(hidden, weight, bias).float()  # (M, V) fp32, a fresh tensor either way
    logp_all = F.log_softmax(logits.div_(scale), dim=-1)  # (M, V)
    del logits
    logp = logp_all.gather(-1, labels[:, None]).squeeze(-1)  # (M,)
    probs = logp_all.exp()  # (M, V)
    entropy = -torch.bmm(probs[:, None, :], logp_all[:, :, None]).view(-1)  # (M,) Σ p log p
    return logp, entropy, logp_all, probs


class _ChunkedHead(torch.autograd.Function):
    """log π(y) and entropy H of M positions through the head, chunk by chunk, both ways.

    Forward keeps only its inputs; backward recomputes each chunk's logits and writes the
    gradients of the hidden states, the head weight and bias chunk by chunk: the weight's
    gradient is one (V, d) buffer accumulated in place (`addmm_`), never one per chunk.

    With p = softmax(z / τ), a = ∂L/∂log π(y), b = ∂L/∂H (per position):
        ∂L/∂z = (a · onehot(y) − p ⊙ (a + b · (log p + H))) / τ
    since ∂log π(y)/∂(z/τ) = onehot(y) − p and ∂H/∂(z/τ) = −p ⊙ (log p + H).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, temperature, rows):
        ctx.save_for_backward(hidden, weight, bias, labels)
        ctx.temperature, ctx.rows = temperature, rows
        ctx.set_materialize_grads(False)
        logps, entropies = [], []
        for h, y in zip(hidden.split(rows), labels.split(rows), strict=True):
            logp, entropy, _, _ = _chunk_scores(h, weight, bias, y, temperature)
            logps.append(logp)
            entropies.append(entropy)
        return torch.cat(logps), torch.cat(entropies)  # (M,), (M,)

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, labels = ctx.saved_tensors
        scale = ctx.temperature if ctx.temperature > 0 else 1.0
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None  # (M, d)
        grad_weight = None  # (V, d) fp32: a bf16 sum over many chunks would lose bits
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_bias = None
        if bias is not None and ctx.needs_input_grad[2]:
            grad_bias = torch.zeros_like(bias)  # (V,)
        if grad_logp is None and grad_entropy is None:
            return grad_hidden, grad_weight, grad_bias, None, None, None
        for start in range(0, hidden.shape[0], ctx.rows):
            rows = slice(start, start + ctx.rows)
            h, y = hidden[rows], labels[rows]  # (c, d), (c,)
            _, entropy, logp_all, p = _chunk_scores(h, weight, bias, y, ctx.temperature)
            a = grad_logp[rows, None] if grad_logp is not None else None  # (c, 1)
            if grad_entropy is not None:  # −p ⊙ (a + b · (log p + H)), built in place of log p
                coef = logp_all.add_(entropy[:, None]).mul_(grad_entropy[rows, None])  # (c, V)
                if a is not None:
                    coef.add_(a)
                grad_z = p.mul_(coef).neg_()  # (c, V)
            else:  # −p ⊙ a
                grad_z = p.mul_(-a)  # (c, V)
            del logp_all
            if a is not None:
                grad_z.scatter_add_(-1, y[:, None], a)
            grad_z = grad_z.div_(scale).to(weight.dtype)  # (c, V)
            if grad_hidden is not None:
                grad_hidden[rows] = grad_z @ weight  # (c, d)
            if grad_weight is not None:
                if weight.dtype == torch.float32:
                    grad_weight.addmm_(grad_z.T, h)  # (V, d)
                else:  # the product in the weight dtype (fp32 accumulation inside), summed in fp32
                    grad_weight.add_(grad_z.T @ h)  # (V, d)
            if grad_bias is not None:
                grad_bias.add_(grad_z.sum(0))
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None


def chunked_scores(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    labels: torch.Tensor,
    temperature: float,
    chunk_elements: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies of M positions, hidden (M, d), labels (M,) -> (M,), (M,), with the
    head applied to chunks of ⌊chunk_elements / V⌋ positions (at least 1; default
    `default_chunk_elements`), in the forward and again in the backward (`_ChunkedHead`), so no
    (M, V) tensor is ever built."""
    elements = chunk_elements or default_chunk_elements(hidden.device)
    rows = max(1, elements // head.weight.shape[0])
    if hidden.shape[0] == 0:  # nothing to score
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return _ChunkedHead.apply(hidden, head.weight, head.bias, labels, temperature, rows)


def _full_scores(
    model, soft, detach, attention_mask, labels, temperature, embedding
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = replay_records(
        model, soft, attention_mask, labels.shape[1], embedding=embedding, detach=detach
    )  # (N, T, V)
    scale = temperature if temperature > 0 else 1.0
    logp = token_logprobs(logits, labels, temperature)  # (N, T)
    return logp, entropy_from_logits(logits.float() / scale)  # (N, T), (N, T)


def score_tokens(
    model,
    batch: RolloutBatch,
    temperature: float,
    *,
    embedding=None,
    head: torch.nn.Module | None = None,
    chunk_elements: int | None = None,
    full_logits: bool = False,
    detach_mixed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs (N, T) of the sampled tokens from the recorded inputs and the entropy (N, T) of
    the temperature-scaled policy, both fp32 and 0 outside `response_mask`. Gradients flow when
    enabled.

    `full_logits=True` takes the full-logits path (for comparisons); `chunk_elements`: logits
    elements per chunk (None: `default_chunk_elements`). `embedding` and
    `head`: the unwrapped model's input and output embeddings, when `model` is a data-parallel
    wrapper that does not expose them (default: the model's own). `detach_mixed`: no gradient
    into the candidate rows of mixed positions (`train.soft_input_grad: none`).
    """
    return score_records(
        model, batch.soft_inputs, mixed_detach_mask(batch, detach_mixed), batch.attention_mask,
        batch.response_ids, batch.response_mask, temperature, embedding=embedding, head=head,
        chunk_elements=chunk_elements, full_logits=full_logits,
    )  # fmt: skip


def score_records(
    model,
    soft: SoftInputs,
    detach: torch.Tensor | None,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
    *,
    embedding=None,
    head: torch.nn.Module | None = None,
    chunk_elements: int | None = None,
    full_logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`score_tokens` on bare tensors (the body of `ngrpo.learner.policy.SoftInputPolicy.forward`):
    records (N, P + T, K), `detach` (N, P + T) bool or None, attention mask (N, P + T), sampled
    tokens `labels` (N, T) and their `response_mask` (N, T) -> log-probs, entropies (N, T)."""
    mask = response_mask.bool()  # (N, T)
    head = output_head(model) if head is None else head
    if full_logits or not isinstance(head, torch.nn.Linear) or type(model) in _FULL_LOGITS_CLASSES:
        if not full_logits and type(model) not in _FULL_LOGITS_CLASSES:
            _FULL_LOGITS_CLASSES.add(type(model))
            log.warning("%s: output embedding is not a torch.nn.Linear; scoring with full logits",
                        type(model).__name__)  # fmt: skip
        logp, entropy = _full_scores(
            model, soft, detach, attention_mask, labels, temperature, embedding
        )  # (N, T), (N, T)
        return logp.masked_fill(~mask, 0.0), entropy.masked_fill(~mask, 0.0)
    seen: list[torch.Tensor] = []
    with head_bypassed(head, seen):
        hidden = replay_records(
            model, soft, attention_mask, labels.shape[1], embedding=embedding, detach=detach
        )  # (N, T, d) final hidden states
    if len(seen) != 1 or not _same_storage(hidden, seen[0]):
        _FULL_LOGITS_CLASSES.add(type(model))
        log.warning("%s transforms its head's output; scoring with full logits",
                    type(model).__name__)  # fmt: skip
        return score_records(
            model, soft, detach, attention_mask, labels, response_mask, temperature,
            embedding=embedding, head=head, full_logits=True,
        )  # fmt: skip
    picked = hidden[mask]  # (M, d) scored positions only
    # The head runs outside any autocast (accelerate's mixed precision wraps the whole policy
    # module's forward): in the head's own dtype, as when it ran after the wrapped body.
    with torch.autocast(picked.device.type, enabled=False):
        logp_m, entropy_m = chunked_scores(
            picked.to(head.weight.dtype), head, labels[mask], temperature, chunk_elements
        )  # (M,), (M,)
    logp = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)  # (N, T)
    entropy = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)  # (N, T)
    return logp.masked_scatter(mask, logp_m), entropy.masked_scatter(mask, entropy_m)


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether `a` is a view into `b`'s memory (the model returned the head's output as is)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
