"""The learner: GRPO / N-GRPO updates on recorded soft inputs.

One call of `update_policy` learns from one step's rollouts: `num_iterations` epochs over the
rows, each split into mini-batches of whole groups (one optimizer step each), each split into
micro-batches (gradient accumulation). Log-probabilities are recomputed by one full-sequence
forward over the *recorded* inputs (`ngrpo.rollout.replay_logits`, which calls the shared
`ngrpo.method.soft_inputs.embed`), so the policy is trained on exactly the perturbed inputs the
rollout fed it; mixing weights and noise are constants and the gradient flows into the embedding
rows of every candidate (`soft_input_grad: all`, the paper's text). With `soft_input_grad: none`
(our reading of the release, which builds the soft embeddings under FSDP's parameter gather without
writing gradients back) the candidate rows of *mixed* positions are detached: those positions give
no embedding gradient at all, while plain positions train their token's row as usual. The forward
values are identical either way, so the replay invariant holds for both. The loss is
`ngrpo.method.losses.grpo_loss`.

Choices worth knowing:
- π_old (`old_logprobs`): `rollout` takes the rollout's own log-probabilities
  (`RolloutBatch.logprobs`), exact in fp32 (the replay invariant) and free; `recompute` scores
  every row with the learner's own forward, without gradients, before the first update, mini-batch
  by mini-batch in exactly the micro-batches the update then uses (the same shapes, hence the same
  kernels), so the first mini-batch's PPO ratios are exactly 1, as verl's "recompute
  old_log_probs" (and the authors' release) do. The trainer picks `recompute` whenever the compute
  dtype is not fp32 (`train.old_logprobs: auto`).
- The rollout–learner gap (`ngrpo.method.rollout_correction`): `mismatch/*` compares the learner's
  log-probabilities with the rollout's on every token under `recompute`, on the tokens scored
  before the first optimizer step under `rollout`; `actor/replay_logp_err` is its maximum.
  `rollout_correction` multiplies each token's policy-gradient term by a truncated or masked
  importance weight π_old / π_rollout (exactly 1 under `rollout`); with
  `rollout_correction_masked="drop"` the tokens a `*_mask` mode leaves out also leave the loss
  mask (normaliser, KL and entropy terms), as verl's rejection sampling does.
- The mini-batch's loss normaliser (tokens or sequences) is computed once over the whole
  mini-batch and shared by its micro-batches, so accumulation equals one big batch exactly. Under
  data parallelism it is summed over the processes and each process's loss scaled by the world
  size (`ngrpo.sharding.data_parallel.global_loss_normalizer`): the averaged gradient is the global
  token (or sequence) mean exactly.
- Scoring goes through the policy module (`ngrpo.learner.policy.SoftInputPolicy`, wrapped by DDP or
  sharded by FSDP2), so the soft-input embedding and the head run inside the wrapped forward.
- A non-finite loss or gradient skips that optimizer step (gradients dropped, counted in
  `train/skipped_updates`, logged as a warning); training goes on. Every micro-batch still runs
  its backward and the decision is all-reduced, so data-parallel processes skip together. Under
  fp16 loss scaling (accelerate's `GradScaler`: `model.dtype=float16` on a GPU) the skipped step
  still ends the scaler's iteration: the gradients are unscaled (if clipping did not already) and
  `scaler.update()` backs the scale off, so the next mini-batch trains at the smaller scale
  instead of failing on a second `unscale_()`.
- The neighbour index and a kept decoder's weight copies are not refreshed from here: the
  trainer tells them after the update (`ngrpo.trainer.step`), since the parameters' version
  counter does not move under fused AdamW.
- Log-probabilities and entropy never go through full logits: `ngrpo.learner.scoring.score_tokens`
  runs the body once and the head over chunks of the scored positions, recomputed in the backward
  (`full_logits=True` restores the full-logits path, for comparisons).
- Out of memory raises `ngrpo.utils.oom.PhaseOutOfMemory` naming the phase (`reference`,
  `old_logprobs`, `learner`, `optimizer`) and the micro-batch's shape; with `on_oom` (the
  trainer's `train.oom_retry`) a reference, π_old or learner one is retried with a smaller token
  budget, redoing the mini-batch from zeroed gradients (see `update_policy`). After a learner
  retry the recomputed π_old came from the larger micro-batches: the mini-batch's ratios are then
  1 up to the kernels' batch-variance, not bitwise.
- Stop requests (`safe_points`, the trainer's `ngrpo.trainer.safe_point.SafePoints`): nothing a
  checkpoint holds changes before the first optimizer step, so reference and π_old scoring and
  the mini-batches before that step run inside its `region`s (a stop request may leave them at
  once) and are followed by its `check`s (every process the same ones); either raises the
  trainer's `StepAbandoned`, and the trainer saves the state at the step's start.
- Micro-batches: `micro_batch_size` rows in order, or, with `max_tokens_per_micro_batch`, rows
  sorted by length and packed greedily so that rows × (longest prompt + longest response) stays
  within the budget (a row longer than the budget goes alone). Each micro-batch is cut to its
  longest prompt and response (left prompt padding, right response padding), which changes no
  score: positions come from the mask and padded keys are masked out. Under data parallelism the
  processes may then run different numbers of micro-batches; each still runs exactly one
  synchronising backward (its last) per mini-batch, so the gradient all-reduces pair up. Under
  FSDP every forward gathers parameters (a collective), so a process with fewer micro-batches
  runs zero-gradient repeats of its last one until all have run as many.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from functools import partial

import torch

from ngrpo.learner.averages import MAX_KEYS, MIN_KEYS, RATIO_TOKENS, WEIGHTED_KEYS, Averages
from ngrpo.learner.batching import (
    LearnerParams,
    budget_tokens,
    describe_shape,
    fsdp_padding,
    iter_micro_batches,
    loss_mask,
    micro_batches,
    mini_batches,
    trim_padding,
)
from ngrpo.learner.policy import as_policy, policy_scores
from ngrpo.learner.scored import recompute_old_logprobs, reference_logprobs
from ngrpo.learner.scoring import score_tokens
from ngrpo.method.losses import AGGREGATIONS, grpo_loss, resolve_aggregation
from ngrpo.method.rollout_correction import (
    MASKED,
    importance_weights,
    masked_tokens,
    mismatch_metrics,
)
from ngrpo.rollout import RolloutBatch
from ngrpo.sharding.data_parallel import global_loss_normalizer
from ngrpo.utils.oom import PhaseOutOfMemory, oom_phase

log = logging.getLogger(__name__)

REPLAY_ERR = "actor/replay_logp_err"  # largest |learner − rollout| log-prob: mismatch/logp_abs_max
OLD_LOGPROBS = ("rollout", "recompute")
__all__ = [  # the learner's public names, including those defined by its parts
    "MAX_KEYS", "MIN_KEYS", "RATIO_TOKENS", "WEIGHTED_KEYS", "LearnerParams", "loss_mask",
    "micro_batches", "recompute_old_logprobs", "reference_logprobs", "sequence_logprobs",
    "trim_padding", "update_policy",
]  # fmt: skip


def sequence_logprobs(
    model,
    batch: RolloutBatch,
    temperature: float,
    with_entropy: bool = False,
    embedding=None,
    head=None,
    chunk_elements: int | None = None,
    full_logits: bool = False,
    soft_input_grad: str = "all",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (N, T) of the sampled tokens from the recorded inputs, and optionally the
    entropy (N, T) of the temperature-scaled policy; 0 outside `response_mask`. Gradients flow
    when enabled; with `soft_input_grad="none"` not into the candidate rows of mixed positions.
    See `ngrpo.learner.scoring.score_tokens`."""
    logp, entropy = score_tokens(
        model, batch, temperature, embedding=embedding, head=head,
        chunk_elements=chunk_elements, full_logits=full_logits,
        detach_mixed=soft_input_grad == "none",
    )  # fmt: skip
    return logp, entropy if with_entropy else None


def _agreed(ok: bool, accelerator, device) -> bool:
    """`ok` on every process (one all-reduce; identity in a single process). Every process must
    take the same skip decision, or data-parallel ranks would fall out of step."""
    if accelerator is None or accelerator.num_processes == 1:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=device)
    return float(accelerator.reduce(flag, reduction="sum")) == 0.0


OomRetry = Callable[[LearnerParams, PhaseOutOfMemory], "LearnerParams | None"]
"""`on_oom(params, err)`: the settings to retry with after an out-of-memory error `err` in the
reference or learner phase (a smaller token budget), or None to let the error through."""


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
    ref_context=None,
    on_oom: OomRetry | None = None,
    safe_points=None,
) -> dict[str, float]:
    """Learn from one step's rollouts; returns averaged metrics (loss/*, actor/*, train/*,
    mismatch/*, rollout_correction/*, time/*).

    `advantages` is per row (N,). `model`: a `ngrpo.learner.policy.SoftInputPolicy`, possibly
    wrapped for data parallelism, or a bare causal LM (wrapped in one here). `accelerator` does
    backward, clipping, reductions and gradient synchronisation when given: Hugging Face
    accelerate's `Accelerator` (DDP) or `ngrpo.sharding.FsdpStrategy` (same methods). Metrics of
    skipped mini-batches are left out of the averages; `actor/grad_norm` is the mean pre-clipping
    norm of the applied steps. `ref_context`: a context-manager factory the reference is scored
    under (LoRA: the policy itself as `ref_model`, with peft's `disable_adapter`, so no second
    model). `time/reference_s`, `time/old_logprobs_s`, `time/forward_backward_s` and
    `time/optimizer_s` (clipping, the optimizer and scheduler steps) time those phases
    (device-synchronised).

    Out of memory raises `ngrpo.utils.oom.PhaseOutOfMemory` naming the phase (`reference`,
    `old_logprobs`, `learner`, `optimizer`) and the micro-batch's shape. With `on_oom` (single
    process), a reference, π_old or learner out-of-memory error is retried with the settings it
    returns: the reference or π_old log-probs are recomputed, a mini-batch restarts from its first
    micro-batch with zeroed gradients, so the update goes on from the state before the failed
    attempt (earlier mini-batches' optimizer steps were complete; the failed one changed only
    gradients); `train/oom_retries` counts the retries.

    `safe_points`: an object with `region(phase, collectives=True)` (a context manager) and
    `check(phase)` (see the module), used up to the first optimizer step; None: none.
    """
    if params.old_logprobs not in OLD_LOGPROBS:
        raise ValueError(f"old_logprobs must be one of {OLD_LOGPROBS}, got {params.old_logprobs!r}")
    if params.rollout_correction_masked not in MASKED:
        raise ValueError(f"rollout_correction_masked must be one of {MASKED}, got "
                         f"{params.rollout_correction_masked!r}")  # fmt: skip
    model = as_policy(model)
    parameters = [p for p in model.parameters() if p.requires_grad]
    world = 1 if accelerator is None else accelerator.num_processes
    device = batch.response_ids.device
    mask = loss_mask(batch, params.mask_truncated_completions)  # (N, T)
    retries = [0]
    clock = _PhaseClock(device)
    ref_logp = None
    safe = _SafePoints(safe_points)
    if params.beta > 0:
        reference = ref_context() if ref_context is not None else contextlib.nullcontext()
        with reference, safe.region("reference"):
            ref_logp, params = _retrying(  # (N, T)
                partial(reference_logprobs, ref_model, batch, params.temperature,
                        accelerator=accelerator),
                params, on_oom, retries,
            )  # fmt: skip
        safe.check("reference")
        clock.lap("time/reference_s")
    old_logp = batch.logprobs  # (N, T)
    learner_logp = torch.zeros_like(mask)  # (N, T) the learner's log-probs before any update
    measured = torch.zeros_like(mask)  # (N, T) 1 where `learner_logp` holds a value
    if params.old_logprobs == "recompute":
        with safe.region("old_logprobs"):
            old_logp, params = _retrying(  # (N, T)
                partial(recompute_old_logprobs, model, batch, accelerator=accelerator),
                params, on_oom, retries,
            )  # fmt: skip
        safe.check("old_logprobs")
        learner_logp, measured = old_logp, mask
        clock.lap("time/old_logprobs_s")
    is_weights, correction_metrics = importance_weights(
        old_logp, batch.logprobs, mask, params.rollout_correction, params.rollout_correction_cap,
        params.rollout_correction_min,
    )  # (N, T), exactly 1 when π_old is the rollout's  # fmt: skip
    if params.rollout_correction_masked == "drop":  # verl's rejection sampling: out of the mask
        mask = mask * ~masked_tokens(is_weights, params.rollout_correction)  # (N, T)
    minis = mini_batches(batch, params)
    averages = Averages()
    skipped, grad_norms, first = 0, [], True
    for _ in range(params.num_iterations):
        for number, mini in enumerate(minis, start=1):
            normalizer = global_loss_normalizer(
                _count(mask[mini], params.loss_type), world,
                lambda count: _sum_over_processes(count, accelerator, device),
            )  # fmt: skip
            accumulate = partial(
                _accumulate, model, optimizer, batch, mini, mask=mask, advantages=advantages,
                ref_logp=ref_logp, old_logp=old_logp, is_weights=is_weights,
                normalizer=normalizer, accelerator=accelerator,
                where=f"mini-batch {number} of {len(minis)}",
                record=(learner_logp, measured) if first and params.old_logprobs == "rollout"
                else None,
            )  # fmt: skip
            with safe.region("learner"):  # until the first optimizer step
                (finite, mini_metrics), params = _retrying(accumulate, params, on_oom, retries)
            first = False
            clock.lap("time/forward_backward_s")
            # A non-finite gradient makes the global norm non-finite (checked below), identically
            # on every process (it is taken after the gradients' reduction).
            finite = _agreed(finite, accelerator, device)
            safe.check("learner")  # the last point to abandon the step: nothing changed yet
            grad_norm = _clip(parameters, params.max_grad_norm, accelerator) if finite else 0.0
            if not (finite and math.isfinite(grad_norm)):
                skipped += 1
                _back_off_loss_scale(accelerator, unscaled=finite)
                optimizer.zero_grad(set_to_none=True)
                log.warning("non-finite loss or gradient: optimizer step skipped")
                continue
            averages.add(mini_metrics.result())
            grad_norms.append(grad_norm)
            safe.stepped = True  # no safe point after this: the step now runs to its end
            with oom_phase("optimizer", f"AdamW over {_numel(parameters):,} trainable parameters"):
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            clock.lap("time/optimizer_s")
    result = averages.result()
    gap = mismatch_metrics(learner_logp, batch.logprobs, measured, batch.mixed)
    result.update(gap)
    result[REPLAY_ERR] = gap["mismatch/logp_abs_max"]
    result.update(correction_metrics)
    result.update(clock.totals)
    result["actor/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else 0.0
    result["train/skipped_updates"] = float(skipped)
    result["train/optimizer_steps"] = float(len(grad_norms))
    result["train/oom_retries"] = float(retries[0])
    return result


def _back_off_loss_scale(accelerator, *, unscaled: bool) -> None:
    """End a skipped step's loss-scaler iteration (fp16): record the non-finite gradients if the
    clipping did not (`unscaled` False: the loss itself was not finite, nothing was clipped), then
    `update()`, which halves the scale (`backoff_factor`) and resets the per-optimizer state that
    the next `unscale_()` checks. No scaler (fp32, bf16, no accelerator): nothing to do."""
    scaler = None if accelerator is None else getattr(accelerator, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return
    if not unscaled:
        accelerator.unscale_gradients()
    scaler.update()


class _SafePoints:
    """The caller's safe points (or none) up to the first optimizer step, none after it."""

    def __init__(self, points) -> None:
        self.points, self.stepped = points, False

    def region(self, phase: str) -> contextlib.AbstractContextManager:
        if self.points is None or self.stepped:
            return contextlib.nullcontext()
        return self.points.region(phase, collectives=True)  # FSDP forwards, DDP's backward

    def check(self, phase: str) -> None:
        if self.points is not None and not self.stepped:
            self.points.check(phase)


def _retrying(attempt, params: LearnerParams, on_oom: OomRetry | None, retries: list[int]):
    """(`attempt(params)`, the settings it ran with), tried again with the settings `on_oom`
    returns after each reference / learner out-of-memory error (counted in `retries[0]`)."""
    while True:
        try:
            return attempt(params=params), params
        except PhaseOutOfMemory as err:
            smaller = None
            if on_oom is not None and err.phase in ("reference", "old_logprobs", "learner"):
                smaller = on_oom(params, err)
            if smaller is None:
                raise
        # out of the `except`: the failed attempt's tensors went with its traceback
        params, retries[0] = smaller, retries[0] + 1
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _accumulate(
    model, optimizer, batch: RolloutBatch, mini: torch.Tensor, *, params: LearnerParams,
    mask: torch.Tensor, advantages: torch.Tensor, ref_logp: torch.Tensor | None,
    old_logp: torch.Tensor, is_weights: torch.Tensor, normalizer: float, accelerator, where: str,
    record: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[bool, Averages]:  # fmt: skip
    """Gradients of one mini-batch, accumulated over its micro-batches from zero; returns
    (whether every loss was finite, the micro-batches' metrics). `record`: (log-probs, mask)
    buffers (N, T) that take the learner's log-probs of these rows before any optimizer step (the
    rollout–learner gap when π_old is the rollout's)."""
    optimizer.zero_grad(set_to_none=True)
    finite = torch.ones((), dtype=torch.bool, device=mask.device)  # read once per mini-batch
    mini_metrics = Averages()
    parts = list(iter_micro_batches(batch, mini, params))
    count = len(parts) + fsdp_padding(len(parts), accelerator, mask.device)
    for i in range(count):
        micro, sub, width = parts[min(i, len(parts) - 1)]
        # Every micro-batch runs backward, even after a non-finite loss: data-parallel
        # ranks synchronise on the last one, so none may leave the loop early.
        sync = accelerator is None or i == count - 1
        context = contextlib.nullcontext() if sync else accelerator.no_sync(model)
        sub_mask = mask[micro, :width]  # (n, T')
        shape = describe_shape(f"{where}, micro-batch {i + 1} of {count}", sub, width)
        with context, oom_phase("learner", shape, len(micro), budget_tokens(sub, width)):
            logp, entropy = policy_scores(
                model,
                sub,
                params.temperature,
                chunk_elements=params.chunk_elements,
                full_logits=params.full_logits,
                detach_mixed=params.soft_input_grad == "none",
            )  # (n, T')
            if i >= len(parts):  # padding (FSDP): same collectives, zero gradient
                accelerator.backward(logp.sum() * 0.0)
                continue
            if record is not None:
                record[0][micro, :width] = logp.detach()
                record[1][micro, :width] = sub_mask
            loss, metrics = grpo_loss(
                logp, old_logp[micro, :width], advantages[micro], sub_mask,
                ref_logp=None if ref_logp is None else ref_logp[micro, :width],
                entropy=entropy.detach() if params.entropy_coef == 0 else entropy,
                beta=params.beta, kl_estimator=params.kl_estimator,
                clip_low=params.clip_low, clip_high=params.clip_high,
                clip_ratio_c=params.clip_ratio_c,
                level=params.importance_sampling_level, loss_type=params.loss_type,
                entropy_coef=params.entropy_coef, normalizer=normalizer,
                is_weights=None if params.rollout_correction == "none"
                else is_weights[micro, :width],
            )  # fmt: skip
            metrics[RATIO_TOKENS] = float(sub_mask.sum())
            finite = finite & torch.isfinite(loss.detach())
            if accelerator is not None:
                accelerator.backward(loss)
            else:
                loss.backward()
        mini_metrics.add(metrics)
    return bool(finite), mini_metrics


def _numel(parameters) -> int:
    return sum(p.numel() for p in parameters)


class _PhaseClock:
    """Seconds spent per phase of an update, summed: `lap(name)` adds the time since the last
    lap to `name`, after waiting for the device's queued work (CUDA), so each phase is charged
    with its own kernels."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}
        self._last = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, name: str) -> None:
        now = self._now()
        self.totals[name] = self.totals.get(name, 0.0) + now - self._last
        self._last = now


def _count(mask: torch.Tensor, loss_type: str) -> float:
    """The raw token / sequence count of `mask` (N, T) for `loss_type` (not clamped to 1)."""
    return float(AGGREGATIONS[resolve_aggregation(loss_type)][1](mask))


def _sum_over_processes(value: float, accelerator, device) -> float:
    """`value` summed over the data-parallel processes (one all-reduce)."""
    total = torch.tensor([value], dtype=torch.float64, device=device)
    return float(accelerator.reduce(total, reduction="sum"))


def _clip(parameters, max_norm: float | None, accelerator) -> float:
    """Global gradient norm (before clipping), clipping it to `max_norm` when set."""
    limit = max_norm if max_norm is not None else float("inf")
    if accelerator is not None:
        return float(accelerator.clip_grad_norm_(parameters, limit))
    return float(torch.nn.utils.clip_grad_norm_(parameters, limit))
