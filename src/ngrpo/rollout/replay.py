"""Replay: the learner's full-sequence forward over the recorded soft inputs.

Every response position's input was recorded as a `SoftInputs` row; one forward over prompt +
response records, embedded by the same `ngrpo.method.soft_inputs.embed` the engine called,
reproduces the rollout's log-probabilities (fp32: within 1e-4, tested) — the project's central
invariant.
"""

from __future__ import annotations

import torch

from ngrpo.method.soft_inputs import SoftInputs, embed
from ngrpo.rollout.batch import RolloutBatch
from ngrpo.rollout.hf import hf_forward, input_embeddings
from ngrpo.rollout.sampling import position_ids_from_mask, token_logprobs


def mixed_detach_mask(batch: RolloutBatch, detach_mixed: bool) -> torch.Tensor | None:
    """(N, P + T) bool: the positions whose candidate rows get no gradient (the mixed response
    positions under `train.soft_input_grad: none`), or None when every position trains."""
    if not detach_mixed or batch.mixed is None:
        return None
    prompt = torch.zeros_like(batch.prompt_ids, dtype=torch.bool)  # (N, P)
    return torch.cat([prompt, batch.mixed.to(prompt.device)], dim=1)  # (N, P + T)


def replay_records(
    model,
    soft: SoftInputs,
    attention_mask: torch.Tensor,
    width: int,
    embedding=None,
    detach: torch.Tensor | None = None,
) -> torch.Tensor:
    """`replay_logits` on bare tensors: records (N, P + T, K), attention mask (N, P + T), response
    width T -> logits (N, T, V) (what the policy module's forward calls; `ngrpo.learner.policy`)."""
    embedding = input_embeddings(model) if embedding is None else embedding
    mask = attention_mask  # (N, P + T)
    inputs = embed(embedding, soft.to(mask.device), detach)  # (N, P + T, d)
    logits = hf_forward(model, inputs, mask, position_ids_from_mask(mask))  # (N, P + T, V)
    p = mask.shape[1] - width
    return logits[:, p - 1 : p + width - 1]  # (N, T, V)


def replay_logits(
    model, batch: RolloutBatch, embedding=None, detach_mixed: bool = False
) -> torch.Tensor:
    """Full-sequence forward over the recorded soft inputs: logits (N, T, V) scoring each response
    token (position P − 1 + t predicts response token t). Runs with gradients if enabled.

    `embedding`: the input-embedding module, when `model` is a data-parallel wrapper that does not
    expose it. `detach_mixed`: the candidate rows of mixed positions (`batch.mixed`) get no
    gradient (`train.soft_input_grad: none`)."""
    return replay_records(
        model, batch.soft_inputs, batch.attention_mask, batch.response_ids.shape[1],
        embedding=embedding, detach=mixed_detach_mask(batch, detach_mixed),
    )  # fmt: skip


def replay_logprobs(model, batch: RolloutBatch, temperature: float) -> torch.Tensor:
    """Log-probabilities (N, T) of the sampled tokens recomputed from the recorded inputs; 0 on
    response padding. Equals `batch.logprobs` before any update (the replay invariant)."""
    logits = replay_logits(model, batch)  # (N, T, V)
    logp = token_logprobs(logits, batch.response_ids, temperature)  # (N, T)
    return logp.masked_fill(batch.response_mask == 0, 0.0)
