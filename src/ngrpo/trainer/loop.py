"""The training loop `train(cfg)`: set up, evaluate at start, then steps, logging, evaluations
(exploration off, `ngrpo.evaluation.evaluate`), `best/` and checkpoints; plus reading a run
directory back (`load_run_config`, `read_metrics`).

Run directory parts written here: `config.yaml` (the resolved configuration), `metrics.jsonl`
(one line per training step and per evaluation) and `best/` (the model with the best
`eval.best_metric` so far, written atomically like checkpoints; under FSDP the rollout copy's
weights, i.e. in the compute dtype). Every process decodes its share of an evaluation and rank 0
gathers the samples; only rank 0 writes files (under FSDP every rank writes its optimizer shard).
The gather and the waits for rank 0 run on a group of their own, outside the process group's
collective timeout (`ngrpo.trainer.waits`: NCCL's 10 minutes would end a long evaluation or a
slow checkpoint write).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from ngrpo.config import TrainConfig, derived_values, resolve_defaults, save_config
from ngrpo.trainer.checkpoints import (
    BEST_STEP,
    CHECKPOINTS,
    EVAL_PENDING,
    OOM_BUDGET,
    _rng_state,
    _save_model,
    _set_rng_state,
    checkpoint_dirs,
    save_checkpoint,
    save_sharded_checkpoint,
)
from ngrpo.trainer.oom import oom_error
from ngrpo.trainer.reporting import (
    check_trackers,
    eval_rows,
    report_completions,
    start_tracker,
)
from ngrpo.trainer.safe_point import PHASES, SafePoints, StepStart
from ngrpo.trainer.setup import Run, _setup, engine_options
from ngrpo.trainer.step import _train_step
from ngrpo.trainer.stop import GracefulStop, StepAbandoned
from ngrpo.trainer.waits import wait_for_main
from ngrpo.utils.errors import NgrpoError, TrainingStopped
from ngrpo.utils.io import DiskError, disk_problem, write_atomically
from ngrpo.utils.oom import PhaseOutOfMemory, oom_phase

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int, dict], None]


def _evaluate(run: Run) -> dict[str, list]:
    """This process's share of every evaluation set's graded samples (`ngrpo.evaluation.
    sample_examples`: the shards of all processes together are one process's samples)."""
    from ngrpo.evaluation import sample_examples

    cfg, acc, samples = run.cfg, run.accelerator, {}
    with acc.autocast():
        for name, examples in run.eval_sets.items():
            samples[name] = sample_examples(
                run.policy, run.tokenizer, examples, n=cfg.eval.n,
                temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size,
                seed=cfg.seed, pool=run.pool, engine=engine_options(cfg),
                decoders=run.decoders,  # the kept decoder, if any
                shard=(acc.process_index, acc.num_processes),
            )  # fmt: skip
    return samples


def _eval_results(run: Run, shards: list[dict[str, list]]) -> tuple[dict[str, float], list[dict]]:
    """Evaluation metrics from every process's samples, and completion rows of the first problems
    of each set (none when `logging.completions_every` is 0)."""
    from ngrpo.evaluation import eval_metrics, summarize

    cfg, metrics, rows = run.cfg, {}, []
    for name, examples in run.eval_sets.items():
        samples = [sample for shard in shards for sample in shard[name]]
        metrics.update(eval_metrics(name, summarize(examples, samples, cfg.eval.n, pool=run.pool)))
        if cfg.logging.completions_every:  # the rows only feed the completion files
            rows += eval_rows(run.step, name, examples, samples)
    return metrics, rows


def _gather_eval(run: Run, local: dict | None) -> tuple[bool, list[dict] | None]:
    """(whether any process's evaluation was cut by a stop, every process's samples on rank 0)
    after each process's share (`local`, None when cut). On the group the processes wait on
    (`ngrpo.trainer.waits`): a slow share must not run into the collective timeout."""
    import torch.distributed as dist

    acc = run.accelerator
    if acc.num_processes == 1:
        return local is None, [local]
    cut: list = [None] * acc.num_processes
    dist.all_gather_object(cut, local is None, group=run.waits)
    if any(cut):
        return True, None
    shards = [None] * acc.num_processes if acc.is_main_process else None
    dist.gather_object(local, shards, dst=0, group=run.waits)
    return False, shards


def _saved_model(run: Run):
    """What a checkpoint holds: the adapter (peft format) of a LoRA run, else the whole model."""
    return run.peft_model if run.peft_model is not None else run.policy


def _trainer_state(run: Run) -> dict:
    from ngrpo.sharding.checkpoint import OPTIMIZER_IN_DCP

    optimizer = OPTIMIZER_IN_DCP if run.sharded else run.optimizer.state_dict()
    return {
        "step": run.step, "best": run.best, "skipped": run.skipped_total,
        "optimizer": optimizer, "scheduler": run.scheduler.state_dict(),
        "sampler": run.sampler.state_dict(), "rng": _rng_state(),
        OOM_BUDGET: run.params.max_tokens_per_micro_batch, BEST_STEP: run.best_step,
        EVAL_PENDING: run.eval_pending,
    }  # fmt: skip


def _save(run: Run) -> None:
    """`checkpoints/step-N/` for the current step (every process calls this)."""
    try:
        if run.sharded:
            save_sharded_checkpoint(run, run.step, _trainer_state(run))
        elif run.accelerator.is_main_process:
            save_checkpoint(
                run.run_dir, run.step, _saved_model(run), run.tokenizer, _trainer_state(run),
                run.cfg.logging.keep_last,
            )  # fmt: skip
    except DiskError as err:
        newest = checkpoint_dirs(run.run_dir)
        kept = f"{newest[-1].name} is the newest complete checkpoint" if newest else (
            "no checkpoint was complete before it")  # fmt: skip
        raise NgrpoError(
            f"{err}; {kept}: free space or make {err.target.parent} writable, then "
            f"`ngrpo train --resume {run.run_dir}`"
        ) from err
    wait_for_main(run.accelerator, run.waits)


def _cause(stop: GracefulStop) -> str:
    """The signal and how long the stop took since it came (another process's: unknown)."""
    if stop.signal_name is None:
        return "a signal to another process"
    return f"{stop.signal_name}, {time.monotonic() - stop.received_at:.1f} s after it"


def _stop(run: Run, stop: GracefulStop, saved: int, abandoned: str | None = None) -> None:
    """End the run after a stop request: a checkpoint of the last complete step (unless there
    is one), then `TrainingStopped` saying where it stopped, how long the stop took and what to
    do next. `abandoned`: the phase of step `run.step + 1` it left (the run's state is that
    step's start again, `ngrpo.trainer.safe_point`); None: between steps."""
    steps, resume = run.cfg.train.steps, f"`ngrpo train --resume {run.run_dir}`"
    if abandoned is None and run.step == 0:
        raise TrainingStopped(f"before the first step ({_cause(stop)}); nothing to save")
    if abandoned is None:
        where, redo = f"after step {run.step} of {steps}", ""
    else:
        where = f"during step {run.step + 1} of {steps}, in {PHASES[abandoned]}"
        redo = f" (step {run.step + 1} was dropped: {resume} redoes it)"
    if run.step == 0:
        raise TrainingStopped(f"{where} ({_cause(stop)}); nothing to save: {resume} starts over")
    if run.eval_pending:
        redo = f" (step {run.step}'s evaluation was cut short: {resume} runs it first)"
    if saved != run.step:  # (a save after a cut evaluation already says it is due)
        _save(run)
    checkpoint = run.run_dir / CHECKPOINTS / f"step-{run.step:06d}"
    raise TrainingStopped(
        f"{where} ({_cause(stop)}); checkpoint {checkpoint} is complete{redo}: {resume} continues"
    )


def _log(run: Run, row: dict, tracker) -> None:
    if not run.accelerator.is_main_process:
        return
    path = run.run_dir / "metrics.jsonl"
    try:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
    except OSError as err:  # a full disk: the line may be cut, which `--resume` drops
        raise NgrpoError(f"cannot write {path}: {disk_problem(path.parent, err)}") from err
    tracker.log(row, row["step"])


def _maybe_eval(run: Run, tracker, progress: Progress | None, stop: GracefulStop) -> None:
    """The evaluation due after `run.step`: every process decodes its share of the problems,
    rank 0 gathers the samples, logs the metrics and writes `best/`. A stop request during it
    cuts it short: nothing of it is kept (no metrics row, no `best/`), the random states are put
    back to where it began and `run.eval_pending` tells the checkpoint, so `--resume` runs it
    first and the run goes on as an uninterrupted one. The decoding runs no collective, so a
    process may leave it at once (`GracefulStop.abandonable`); the processes agree on the cut
    when they gather."""
    cfg = run.cfg
    due = (run.step == 0 and cfg.eval.at_start) or (
        cfg.eval.every > 0 and run.step > 0
        and (run.step % cfg.eval.every == 0 or run.step == cfg.train.steps)
    )  # fmt: skip
    run.eval_pending = False
    if not due or not cfg.data.eval_sets:
        return
    shape = (f"{len(run.eval_sets)} sets, {cfg.eval.n} samples per problem of up to "
             f"{cfg.eval.max_new_tokens} new tokens")  # fmt: skip
    rng = _rng_state()
    try:
        with oom_phase("evaluation", shape), stop.abandonable("evaluation"):
            local = _evaluate(run)
    except PhaseOutOfMemory as err:
        raise oom_error(run, err, f"after step {run.step}") from None
    except StepAbandoned:
        _set_rng_state(rng)
        local = None
    cut, shards = _gather_eval(run, local)
    if cut:
        _set_rng_state(rng)
        run.eval_pending = True
        return
    if run.accelerator.is_main_process:
        metrics, rows = _eval_results(run, shards)
        _log(run, {"step": run.step, "type": "eval", **metrics}, tracker)
        if rows:
            report_completions(run, tracker, rows, kind="eval")
        if progress is not None:
            progress("eval", run.step, cfg.train.steps, metrics)
        value = metrics.get(cfg.eval.best_metric) if cfg.eval.best_metric else None
        if cfg.eval.best_metric and value is None:
            raise NgrpoError(
                f"eval.best_metric {cfg.eval.best_metric!r} is not among the evaluation metrics: "
                f"{', '.join(sorted(metrics))}"
            )
        if value is not None and (run.best is None or value > run.best):
            run.best, run.best_step = value, run.step

            def write(tmp: Path) -> None:
                _save_model(tmp, _saved_model(run), run.tokenizer)
                (tmp / "best.json").write_text(json.dumps({"step": run.step, "value": value}))

            write_atomically(run.run_dir / "best", write)
    wait_for_main(run.accelerator, run.waits)


def train(
    cfg: TrainConfig,
    resume: bool = False,
    progress: Progress | None = None,
    reward_funcs: list | None = None,
) -> Path:
    """Run (or resume) training; returns the run directory.

    `progress(kind, step, total, metrics)` is called after every step (`kind="train"`) and every
    evaluation (`kind="eval"`); the CLI draws its progress bar and tables from it.
    `reward_funcs`: (callable or spec, weight) pairs that replace `cfg.train.reward(s)` (the Python
    API records their specs in `cfg.train.rewards` before calling this).

    Faults: a first SIGTERM / SIGINT finishes the current step, writes its checkpoint and raises
    `TrainingStopped`; a second one raises `Interrupted` at once (`ngrpo.trainer.stop`). Out of
    memory raises an `NgrpoError` naming the phase, the batch shape and the settings that lower
    it (`ngrpo.trainer.oom`; `train.oom_retry` retries learner micro-batches instead), and so
    does a disk that refuses a checkpoint (`ngrpo.utils.io`); none of them touches a complete
    checkpoint.
    """
    resolve_defaults(cfg)  # `output_dir` / `data.eval_sets` null: what they follow (a config
    run_dir = Path(cfg.output_dir).expanduser()  # built in Python may not have been validated)
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise NgrpoError(
            f"{str(run_dir)!r} already holds a run; resume it with --resume {run_dir} or choose "
            "another output_dir=..."
        )
    created = [d for d in (run_dir, *run_dir.parents) if not d.exists()]  # deepest first
    check_trackers(cfg)  # a chosen tracker that is not installed stops before any work
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NgrpoError(f"cannot create output_dir {str(run_dir)!r}: {err.strerror}") from err
    with GracefulStop() as stop:  # SIGTERM / SIGINT: finish the step, save, stop (`stop`)
        try:
            run = _setup(cfg, run_dir, resume, reward_funcs)
        except BaseException:
            _remove_empty(created)  # a failed start leaves no empty run directory behind
            raise
        try:
            _loop(run, stop, progress, start_tracker(run, resume))
        finally:
            run.rewards.close()
            run.pool.close()
    return run_dir


def _remove_empty(directories: list[Path]) -> None:
    """Remove the directories this run created (deepest first) while they are empty."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:  # not empty (another process wrote there), or already gone
            return


def _loop(run: Run, stop: GracefulStop, progress: Progress | None, tracker) -> None:
    """Steps until `train.steps`, with logging (`metrics.jsonl`, `tracker`, completions),
    evaluations and checkpoints; a stop request (`stop`, agreed by every process) ends the run
    with a checkpoint, between steps or at a safe point inside one (`ngrpo.trainer.safe_point`:
    the step is dropped). Closes `tracker` with the last metrics as its summary."""
    cfg = run.cfg
    if run.accelerator.is_main_process:
        save_config(cfg, run.run_dir / "config.yaml")
        log.info("derived values: %s", derived_values(cfg))
    saved = run.step  # the step of the newest checkpoint (a resumed run's, or none at 0)
    points = SafePoints(stop, run.accelerator)
    try:
        if run.step == 0 or run.eval_pending:  # at start, or the evaluation a stop cut short
            _maybe_eval(run, tracker, progress, stop)
        while run.step < cfg.train.steps:
            if stop.requested(run.accelerator):
                _stop(run, stop, saved)
            start = StepStart.take(run)  # what a dropped step puts back
            try:
                metrics = _train_step(run, points)
            except PhaseOutOfMemory as err:
                raise oom_error(run, err, f"at step {run.step + 1}") from None
            except StepAbandoned as abandoned:
                points.settle(abandoned)  # every process now drops the step
                start.restore(run)
                _stop(run, stop, saved, abandoned.phase)
            run.step += 1
            run.skipped_total += int(metrics["train/skipped_updates"])
            metrics["train/skipped_total"] = float(run.skipped_total)
            metrics["train/dropped_prompts"] = float(run.dropped_prompts)
            _log(run, {"step": run.step, "type": "train", **metrics}, tracker)
            report_completions(run, tracker, run.completions)
            if progress is not None:
                progress("train", run.step, cfg.train.steps, metrics)
            _maybe_eval(run, tracker, progress, stop)
            save_every = cfg.logging.save_every
            if run.step == cfg.train.steps or (save_every and run.step % save_every == 0):
                _save(run)
                saved = run.step
        if run.eval_pending:  # a stop cut the last evaluation (every process knows): still due
            _stop(run, stop, saved)
    finally:
        tracker.close(summary=_summary(run.run_dir) if run.accelerator.is_main_process else None)


def _summary(run_dir: Path) -> dict[str, float]:
    """The last value of every metric in metrics.jsonl (the trackers' run summary)."""
    last: dict[str, float] = {}
    path = run_dir / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # a line cut by a full disk
            continue
        last.update({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"})
    return last


def load_run_config(run_dir: str | Path, overrides=()) -> TrainConfig:
    """The resolved configuration saved in a run directory (for `--resume`)."""
    from ngrpo.config import load_config

    path = Path(run_dir).expanduser() / "config.yaml"
    if not path.is_file():
        raise NgrpoError(f"{str(run_dir)!r} is not a run directory: no config.yaml")
    return load_config(path, overrides)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All rows of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
