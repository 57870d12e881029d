"""Out of memory during training: the one-line error, and `train.oom_retry`'s smaller budget.

The step marks its phases (`ngrpo.utils.oom.oom_phase`: rollout, reference, learner, optimizer,
evaluation), so an allocation failure arrives here as `PhaseOutOfMemory`. `oom_error` turns it
into an `NgrpoError` whose one line names the phase and the step, the batch's shape, the device's
memory (CUDA: `torch.cuda.mem_get_info` and the step's peak; CPU: the host's memory and the
process's peak), `ngrpo plan`'s estimate for the config (`ngrpo.memory`) and the settings that
lower it. Nothing is written when it happens: the checkpoints stay as they were, and `--resume`
with a changed setting continues from the newest one.

`oom_retry(run)` (with `train.oom_retry`, single process) is the learner's `on_oom`: after an
out-of-memory error in a reference or learner micro-batch of several rows it halves the token
budget (`train.max_tokens_per_micro_batch`; without one, or when the failed micro-batch was
smaller, the failed micro-batch's tokens), logs it and keeps the new budget for the rest of the
run (saved with checkpoints, so a resumed run uses it too). The learner then redoes the work from
the state before the failed attempt (`ngrpo.learner.update.update_policy`). A single row that
does not fit cannot be split: the error is raised as without the option.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from ngrpo.learner.update import LearnerParams
from ngrpo.trainer.setup import Run
from ngrpo.utils.errors import NgrpoError
from ngrpo.utils.oom import PhaseOutOfMemory

log = logging.getLogger(__name__)

PLAN_PHASE = {
    "rollout": "rollout", "evaluation": "rollout", "reference": "learner",
    "old_logprobs": "learner", "learner": "learner", "optimizer": "step",
}  # fmt: skip
"""The `ngrpo plan` phase (`ngrpo.memory.estimate.PHASES`) each training phase falls in."""
GB = 1e9  # as `ngrpo plan` counts


def oom_error(run: Run, err: PhaseOutOfMemory, when: str) -> NgrpoError:
    """The one-line error for `err`, which happened `when` ("at step 7", "after step 7")."""
    cfg, device = run.cfg, run.accelerator.device
    world = run.accelerator.num_processes
    asked = f"; {err.requested} requested" if err.requested else ""
    parts = [
        f"out of memory in the {err.phase} {when} ({err.shape}{asked})",
        _device_memory(device),
        _plan(cfg, world, device.type, err.phase),
        "lower it with " + ", ".join(remedies(cfg, err, world)),
        f"checkpoints are unchanged: `ngrpo train --resume {run.run_dir} KEY=VALUE` continues "
        "from the newest one",
    ]
    return NgrpoError("; ".join(part for part in parts if part))


def _gb(size: float) -> str:
    """Bytes as GB (10⁹, as `ngrpo plan`), with three decimals below 0.1 GB."""
    return f"{size / GB:.{1 if size >= 0.1 * GB else 3}f} GB"


def _device_memory(device: torch.device) -> str:
    from ngrpo.memory.usage import peak_bytes

    peak = peak_bytes(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return (f"{device} has {_gb(total)}, {_gb(free)} free, {_gb(peak)} held by tensors at "
                "this step's peak")  # fmt: skip
    total, available = _host_memory()
    if total is None:
        return f"this process's peak: {_gb(peak)}"
    return (f"host memory {_gb(total)}, {_gb(available or 0)} available, this process's peak "
            f"{_gb(peak)}")  # fmt: skip


def _host_memory() -> tuple[int | None, int | None]:
    """(MemTotal, MemAvailable) of /proc/meminfo in bytes; (None, None) without it."""
    path = Path("/proc/meminfo")
    if not path.is_file():
        return None, None
    fields = dict(line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
    kib = {key: int(value.split()[0]) * 1024 for key, value in fields.items() if value.split()}
    return kib.get("MemTotal"), kib.get("MemAvailable")


def _plan(cfg, world: int, device_type: str, phase: str) -> str:
    """`ngrpo plan`'s estimate for this config, world size and device, for the phase."""
    from ngrpo.memory import estimate, inputs_from_config, shape_for_config

    try:
        plan = estimate(
            inputs_from_config(cfg, shape_for_config(cfg), world_size=world, device=device_type)
        )
    except Exception as err:  # noqa: BLE001 - the estimate is a hint: never hide the error
        return f"no `ngrpo plan` estimate ({type(err).__name__}: {err})"
    name = PLAN_PHASE[phase]
    return (f"`ngrpo plan` estimates {_gb(plan.phase_bytes[name])} per process for its {name} "
            f"phase (peak {_gb(plan.peak_bytes)}, {plan.peak_phase})")  # fmt: skip


def remedies(cfg, err: PhaseOutOfMemory, world: int) -> list[str]:
    """Settings that lower the memory of `err.phase`, with their values now."""
    t, r, m = cfg.train, cfg.rollout, cfg.model
    found: list[str] = []
    if err.phase in ("reference", "old_logprobs", "learner"):
        if err.rows is not None and err.rows > 1 and err.tokens:
            now = t.max_tokens_per_micro_batch or f"null, micro_batch_size={t.micro_batch_size}"
            found.append(f"train.max_tokens_per_micro_batch={err.tokens // 2} (now {now})")
        else:  # a single row: only shorter sequences or less memory per token help
            found.append(f"data.max_prompt_length / rollout.max_completion_length (now "
                         f"{cfg.data.max_prompt_length} / {r.max_completion_length})")  # fmt: skip
        if world == 1 and not t.oom_retry:
            found.append("train.oom_retry=true (halves the token budget and retries)")
    if err.phase == "learner" and not m.gradient_checkpointing:
        found.append("model.gradient_checkpointing=true")
    if err.phase == "rollout":
        half = max(1, (err.rows or 2) // 2 // r.num_generations) * r.num_generations
        now = r.generation_batch_size or "null: all at once"
        found.append(f"rollout.generation_batch_size={half} (now {now})")
        found.append(f"rollout.max_completion_length (now {r.max_completion_length})")
    if err.phase == "evaluation":
        rows = max(cfg.eval.n, cfg.eval.batch_size or 64)
        if rows > cfg.eval.n:
            found.append(f"eval.batch_size={max(cfg.eval.n, rows // 2)} (now {rows} rows)")
        found.append(f"eval.n (now {cfg.eval.n}), eval.max_new_tokens (now "
                     f"{cfg.eval.max_new_tokens})")  # fmt: skip
    if err.phase != "evaluation" and not m.lora.enabled:
        found.append("model.lora.r=16 (adapters on a frozen base: no fp32 master weights, "
                     "gradients or AdamW state for it)")  # fmt: skip
    if err.phase != "evaluation" and t.strategy != "fsdp" and not m.lora.enabled:
        found.append(f"train.strategy=fsdp over {'these' if world > 1 else 'more'} processes "
                     "(shards weights, gradients and AdamW state)")  # fmt: skip
    return found


def oom_retry(run: Run):
    """The learner's `on_oom` for `train.oom_retry`, or None when it is off (see the module)."""
    if not run.cfg.train.oom_retry:
        return None

    def halve(params: LearnerParams, err: PhaseOutOfMemory) -> LearnerParams | None:
        if err.rows is None or err.rows <= 1 or not err.tokens:
            return None  # one row cannot be split
        budget = min(params.max_tokens_per_micro_batch or err.tokens, err.tokens) // 2
        log.warning(
            "out of memory in the %s at step %d (%s): train.oom_retry halves the token budget "
            "to %d (train.max_tokens_per_micro_batch) and retries", err.phase, run.step + 1,
            err.shape, budget,
        )  # fmt: skip
        run.params = dataclasses.replace(params, max_tokens_per_micro_batch=budget)
        return run.params

    return halve
