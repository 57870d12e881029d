"""The learner: GRPO / N-GRPO updates on recorded soft inputs.

One call of `update_policy` learns from one step's rollouts: `num_iterations` epochs over the
rows, each split into mini-batches of whole groups (one optimizer step each), each split into
micro-batches (gradient accumulation). Log-probabilities are recomputed by one full-sequence
forward over the *recorded* inputs (`ngrpo.rollout.replay_logits`, which calls the shared
`ngrpo.soft_inputs.embed`), so the policy is trained on exactly the perturbed inputs the rollout
fed it; mixing weights and noise are constants and the gradient flows into the embedding rows of
every candidate (`soft_input_grad: all`, the paper's text). With `soft_input_grad: none` (our
reading of the release, which builds the soft embeddings under FSDP's parameter gather without
writing gradients back) the candidate rows of *mixed* positions are detached: those positions give
no embedding gradient at all, while plain positions train their token's row as usual. The forward
values are identical either way, so the replay invariant holds for both. The loss is
`ngrpo.losses.grpo_loss`.

Choices worth knowing:
- π_old is the rollout's own log-probabilities (`RolloutBatch.logprobs`). Before the first update
  they equal the recomputed ones (the replay invariant, fp32 within 1e-4), so no extra forward is
  spent on them; `actor/replay_logp_err` logs the largest difference seen on the first mini-batch,
  a free health check (it grows under bf16, where verl recomputes π_old instead).
- The mini-batch's loss normaliser (tokens or sequences) is computed once over the whole
  mini-batch and shared by its micro-batches, so accumulation equals one big batch exactly.
- A non-finite loss or gradient skips that optimizer step (gradients dropped, counted in
  `train/skipped_updates`, logged as a warning); training goes on. Every micro-batch still runs
  its backward and the decision is all-reduced, so data-parallel processes skip together.
- After every optimizer step the neighbour index is invalidated (embeddings changed).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ngrpo.losses import entropy_from_logits, grpo_loss, loss_normalizer
from ngrpo.rollout import RolloutBatch, replay_logits, token_logprobs

log = logging.getLogger(__name__)

REPLAY_ERR = "actor/replay_logp_err"  # largest |recomputed − rollout| log-prob, first mini-batch


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


def disable_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout probability: dropout modules, attention-dropout rates, the config.

    Training mode stays on (gradient checkpointing needs it), but a stochastic forward would break
    the replay invariant: the learner must score exactly the computation the rollout sampled from.
    """
    names = ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop",
             "attn_pdrop")  # fmt: skip
    # Attention layers copy their rate from the config at construction: zero both.
    for owner in [model.config, *model.modules()]:
        if isinstance(owner, torch.nn.Dropout):
            owner.p = 0.0
        for name in names:
            if isinstance(getattr(owner, name, None), float):
                setattr(owner, name, 0.0)


def sequence_logprobs(
    model, batch: RolloutBatch, temperature: float, with_entropy: bool = False, embedding=None,
    soft_input_grad: str = "all",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (N, T) of the sampled tokens from the recorded inputs, and optionally the
    entropy (N, T) of the temperature-scaled policy. Gradients flow when enabled; with
    `soft_input_grad="none"` not into the candidate rows of mixed positions."""
    logits = replay_logits(
        model, batch, embedding=embedding, detach_mixed=soft_input_grad == "none"
    )  # (N, T, V)
    logp = token_logprobs(logits, batch.response_ids, temperature)  # (N, T)
    entropy = None
    if with_entropy:
        scale = temperature if temperature > 0 else 1.0
        entropy = entropy_from_logits(logits.float() / scale)  # (N, T)
    return logp, entropy


@torch.no_grad()
def reference_logprobs(
    ref_model, batch: RolloutBatch, temperature: float, micro_batch_size: int
) -> torch.Tensor:
    """Log-probs (N, T) of the sampled tokens under the frozen reference, on the same inputs."""
    chunks = []
    for rows in torch.arange(len(batch.response_ids)).split(micro_batch_size):
        logp, _ = sequence_logprobs(ref_model, batch.select(rows), temperature)
        chunks.append(logp)
    return torch.cat(chunks)


def loss_mask(batch: RolloutBatch, mask_truncated: bool) -> torch.Tensor:
    """Response tokens that enter the loss (N, T)."""
    mask = batch.response_mask.float()  # (N, T)
    if mask_truncated and batch.truncated is not None:
        mask = mask * (~batch.truncated).float()[:, None]
    return mask


def _grads_finite(parameters: Sequence[torch.nn.Parameter]) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in parameters)


def _agreed(ok: bool, accelerator, device) -> bool:
    """`ok` on every process (one all-reduce; identity in a single process). Every process must
    take the same skip decision, or data-parallel ranks would fall out of step."""
    if accelerator is None or accelerator.num_processes == 1:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=device)
    return float(accelerator.reduce(flag, reduction="sum")) == 0.0


class _Averages:
    """Running means of metric dicts; `actor/replay_logp_err` keeps its maximum instead."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if key == REPLAY_ERR:
                self.totals[key] = max(self.totals.get(key, 0.0), float(value))
                self.counts[key] = 1
                continue
            self.totals[key] = self.totals.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1

    def result(self) -> dict[str, float]:
        return {key: self.totals[key] / self.counts[key] for key in self.totals}


def update_policy(
    model,
    optimizer: torch.optim.Optimizer,
    scheduler,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    params: LearnerParams,
    *,
    ref_model=None,
    accelerator=None,
    neighbor_index=None,
    embedding=None,
) -> dict[str, float]:
    """Learn from one step's rollouts; returns averaged metrics (loss/*, actor/*, train/*).

    `advantages` is per row (N,). `model` may be wrapped for data parallelism (then pass the
    unwrapped model's input `embedding`); `accelerator` (Hugging Face accelerate) does backward,
    clipping and gradient synchronisation when given. Metrics of skipped mini-batches are left
    out of the averages; `actor/grad_norm` is the mean pre-clipping norm of the applied steps.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    device = batch.response_ids.device
    mask = loss_mask(batch, params.mask_truncated_completions)  # (N, T)
    ref_logp = None
    if params.beta > 0:
        ref_logp = reference_logprobs(
            ref_model, batch, params.temperature, params.micro_batch_size
        )  # (N, T)
    rows_per_mini = params.mini_batch_groups * params.group_size
    averages = _Averages()
    skipped, grad_norms, first = 0, [], True
    for _ in range(params.num_iterations):
        for mini in torch.arange(len(batch.response_ids), device=device).split(rows_per_mini):
            normalizer = loss_normalizer(mask[mini], params.loss_type)
            optimizer.zero_grad(set_to_none=True)
            finite, mini_metrics = True, _Averages()
            micro_batches = mini.split(params.micro_batch_size)
            for i, micro in enumerate(micro_batches):
                sub = batch.select(micro)
                # Every micro-batch runs backward, even after a non-finite loss: data-parallel
                # ranks synchronise on the last one, so none may leave the loop early.
                sync = accelerator is None or i == len(micro_batches) - 1
                context = contextlib.nullcontext() if sync else accelerator.no_sync(model)
                with context:
                    logp, entropy = sequence_logprobs(
                        model, sub, params.temperature, with_entropy=True, embedding=embedding,
                        soft_input_grad=params.soft_input_grad,
                    )  # (n, T)
                    loss, metrics = grpo_loss(
                        logp, sub.logprobs, advantages[micro], mask[micro],
                        ref_logp=None if ref_logp is None else ref_logp[micro],
                        entropy=entropy.detach() if params.entropy_coef == 0 else entropy,
                        beta=params.beta, kl_estimator=params.kl_estimator,
                        clip_low=params.clip_low, clip_high=params.clip_high,
                        clip_ratio_c=params.clip_ratio_c,
                        level=params.importance_sampling_level, loss_type=params.loss_type,
                        entropy_coef=params.entropy_coef, normalizer=normalizer,
                    )  # fmt: skip
                    if first:
                        err = ((logp.detach() - sub.logprobs).abs() * mask[micro]).max()
                        averages.add({REPLAY_ERR: float(err)})  # kept even if skipped
                    finite = finite and bool(torch.isfinite(loss))
                    if accelerator is not None:
                        accelerator.backward(loss)
                    else:
                        loss.backward()
                mini_metrics.add(metrics)
            first = False
            finite = _agreed(finite and _grads_finite(parameters), accelerator, device)
            grad_norm = _clip(parameters, params.max_grad_norm, accelerator) if finite else 0.0
            if not (finite and math.isfinite(grad_norm)):
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                log.warning("non-finite loss or gradient: optimizer step skipped")
                continue
            averages.add(mini_metrics.result())
            grad_norms.append(grad_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if neighbor_index is not None:
                neighbor_index.invalidate()
    result = averages.result()
    result["actor/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else 0.0
    result["train/skipped_updates"] = float(skipped)
    result["train/optimizer_steps"] = float(len(grad_norms))
    return result


def _clip(parameters, max_norm: float | None, accelerator) -> float:
    """Global gradient norm (before clipping), clipping it to `max_norm` when set."""
    limit = max_norm if max_norm is not None else float("inf")
    if accelerator is not None:
        return float(accelerator.clip_grad_norm_(parameters, limit))
    return float(torch.nn.utils.clip_grad_norm_(parameters, limit))
