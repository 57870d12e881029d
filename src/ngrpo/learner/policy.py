"""The policy module: recorded soft inputs in, per-token log-probabilities and entropy out.

`SoftInputPolicy` holds the Hugging Face causal LM as `self.model`; its `forward` is the body of
`ngrpo.learner.scoring.score_tokens` (`ngrpo.learner.scoring.score_records`: the one
`ngrpo.method.soft_inputs.embed`, the body's forward with the head bypassed, the chunked head).
Because the embedding and the head run *inside* this module's forward, a data-parallel wrapper
around it sees them as ordinary parameters: under FSDP2 (`ngrpo.sharding`) the root's hooks gather
the embedding and lm_head rows before the forward and reduce-scatter their gradients after the
backward, as for any parameter; under DDP the wrapper all-reduces them. The learner scores through
this module for every strategy (`policy_scores`); the rollout and evaluation call the bare `model`.
"""

from __future__ import annotations

import torch

from ngrpo.learner.scoring import score_records
from ngrpo.method.soft_inputs import SoftInputs
from ngrpo.rollout import RolloutBatch
from ngrpo.rollout.replay import mixed_detach_mask


class SoftInputPolicy(torch.nn.Module):
    """A causal LM scored on recorded soft inputs (see the module docstring). Its parameter names
    are the model's with a `model.` prefix (the FQNs of sharded checkpoints' optimizer state)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        ids: torch.Tensor,
        weights: torch.Tensor,
        noise: torch.Tensor | None,
        detach: torch.Tensor | None,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        response_mask: torch.Tensor,
        temperature: float,
        chunk_elements: int | None = None,
        full_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Records ids / weights (N, P + T, K), noise (N, P + T, d) or None, `detach` (N, P + T)
        bool or None, attention mask (N, P + T), sampled tokens `labels` (N, T), `response_mask`
        (N, T) -> log-probs (N, T) and entropies (N, T), fp32, 0 outside the response mask."""
        return score_records(
            self.model, SoftInputs(ids, weights, noise), detach, attention_mask, labels,
            response_mask, temperature, chunk_elements=chunk_elements, full_logits=full_logits,
        )  # fmt: skip


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (`.module`), or the module itself (FSDP2 wraps in place)."""
    inner = getattr(module, "module", None)
    return inner if isinstance(inner, torch.nn.Module) else module


def as_policy(model: torch.nn.Module) -> torch.nn.Module:
    """`model` when it is (or wraps) a `SoftInputPolicy`, else a `SoftInputPolicy` around it (a
    bare causal LM passed to the learner's public functions)."""
    return model if isinstance(unwrap(model), SoftInputPolicy) else SoftInputPolicy(model)


def policy_scores(
    policy: torch.nn.Module,
    batch: RolloutBatch,
    temperature: float,
    *,
    chunk_elements: int | None = None,
    full_logits: bool = False,
    detach_mixed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies (N, T) of `batch` through `policy` (a `SoftInputPolicy`, possibly
    wrapped): the batch's tensors are passed to its forward, so wrappers' hooks run."""
    soft = batch.soft_inputs
    return policy(
        soft.ids, soft.weights, soft.noise, mixed_detach_mask(batch, detach_mixed),
        batch.attention_mask, batch.response_ids, batch.response_mask, temperature,
        chunk_elements=chunk_elements, full_logits=full_logits,
    )  # fmt: skip
