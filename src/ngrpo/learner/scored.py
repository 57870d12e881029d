"""Log-probabilities without gradients over the learner's own micro-batches: the frozen KL
reference's, and π_old recomputed by the policy itself (`train.old_logprobs: recompute`)."""

from __future__ import annotations

import torch

from ngrpo.learner.batching import (
    LearnerParams,
    budget_tokens,
    describe_shape,
    fsdp_padding,
    iter_micro_batches,
    mini_batches,
)
from ngrpo.learner.policy import as_policy, policy_scores
from ngrpo.rollout import RolloutBatch
from ngrpo.utils.oom import oom_phase


@torch.no_grad()
def _score_rows(policy, batch: RolloutBatch, row_groups, temperature: float, params, accelerator,
                phase: str):  # fmt: skip
    """Log-probs (N, T) of the sampled tokens through `policy` without gradients, each group of
    rows split into the learner's micro-batches; 0 outside `response_mask`. Out of memory is
    reported as `phase`. Under FSDP every process runs as many forwards as the busiest, and the
    root's gathered parameters are released afterwards (FSDP2 keeps the root unsharded after a
    forward without backward)."""
    device = batch.response_ids.device
    out = torch.zeros(batch.response_ids.shape, dtype=torch.float32, device=device)  # (N, T)
    for rows in row_groups:
        parts = list(iter_micro_batches(batch, rows, params))
        count = len(parts) + fsdp_padding(len(parts), accelerator, device)
        for i in range(count):
            micro, sub, width = parts[min(i, len(parts) - 1)]
            shape = describe_shape(f"micro-batch {i + 1} of {count}", sub, width)
            with oom_phase(phase, shape, len(micro), budget_tokens(sub, width)):
                logp, _ = policy_scores(policy, sub, temperature,
                                        chunk_elements=params.chunk_elements,
                                        full_logits=params.full_logits)  # fmt: skip
            if i < len(parts):  # the rest is padding (FSDP: the same collectives everywhere)
                out[micro, :width] = logp
    if hasattr(policy, "reshard"):
        policy.reshard()
    return out


def reference_logprobs(
    ref_model, batch: RolloutBatch, temperature: float, params: LearnerParams, accelerator=None
) -> torch.Tensor:
    """Log-probs (N, T) of the sampled tokens under the frozen reference, on the same inputs and
    micro-batches as the learner; 0 outside `response_mask`. `ref_model`: a causal LM or a
    `SoftInputPolicy` (under FSDP a sharded one)."""
    rows = torch.arange(len(batch.response_ids), device=batch.response_ids.device)
    return _score_rows(as_policy(ref_model), batch, [rows], temperature, params, accelerator,
                       "reference")  # fmt: skip


def recompute_old_logprobs(
    model, batch: RolloutBatch, params: LearnerParams, accelerator=None
) -> torch.Tensor:
    """π_old (N, T): the policy's own log-probs of the sampled tokens before any update, scored
    mini-batch by mini-batch in the very micro-batches `update_policy` uses, so that its first
    mini-batch recomputes them bitwise (ratios exactly 1); 0 outside `response_mask`."""
    policy = as_policy(model)
    return _score_rows(policy, batch, mini_batches(batch, params), params.temperature, params,
                       accelerator, "old_logprobs")  # fmt: skip
