"""The training loop `train(cfg)`: set up, evaluate at start, then steps, logging, evaluations
(exploration off, `ngrpo.evaluation.evaluate`), `best/` and checkpoints; plus reading a run
directory back (`load_run_config`, `read_metrics`).

Run directory parts written here: `config.yaml` (the resolved configuration), `metrics.jsonl`
(one line per training step and per evaluation) and `best/` (the model with the best
`eval.best_metric` so far, written atomically like checkpoints; under FSDP the rollout copy's
weights, i.e. in the compute dtype). Only rank 0 evaluates and writes files (under FSDP every rank
writes its optimizer shard); the others wait at a barrier.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from ngrpo.config import TrainConfig, derived_values, save_config
from ngrpo.trainer.checkpoints import (
    _rng_state,
    _save_model,
    save_checkpoint,
    save_sharded_checkpoint,
)
from ngrpo.trainer.setup import Run, _setup
from ngrpo.trainer.step import _train_step
from ngrpo.utils.errors import NgrpoError
from ngrpo.utils.io import write_atomically

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int, dict], None]


def _evaluate(run: Run) -> dict[str, float]:
    from ngrpo.evaluation import eval_metrics, evaluate

    cfg, metrics = run.cfg, {}
    with run.accelerator.autocast():
        for name, examples in run.eval_sets.items():
            result = evaluate(
                run.policy, run.tokenizer, examples, n=cfg.eval.n,
                temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.seed, pool=run.pool,
            )  # fmt: skip
            metrics.update(eval_metrics(name, result.summary))
    return metrics


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
    }  # fmt: skip


def _log(run: Run, row: dict, writer) -> None:
    if not run.accelerator.is_main_process:
        return
    with (run.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    if writer is not None:
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "step":
                writer.add_scalar(key, value, row["step"])


def _tensorboard(run: Run):
    if not (run.cfg.logging.tensorboard and run.accelerator.is_main_process):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise NgrpoError(
            "logging.tensorboard=true needs the tensorboard package: "
            "pip install 'ngrpo[tensorboard]'"
        ) from err
    return SummaryWriter(str(run.run_dir / "tensorboard"))


def _maybe_eval(run: Run, writer, progress: Progress | None) -> None:
    cfg = run.cfg
    due = (run.step == 0 and cfg.eval.at_start) or (
        cfg.eval.every > 0 and run.step > 0
        and (run.step % cfg.eval.every == 0 or run.step == cfg.train.steps)
    )  # fmt: skip
    if not due or not cfg.data.eval_sets:
        return
    if run.accelerator.is_main_process:
        metrics = _evaluate(run)
        _log(run, {"step": run.step, "type": "eval", **metrics}, writer)
        if progress is not None:
            progress("eval", run.step, cfg.train.steps, metrics)
        value = metrics.get(cfg.eval.best_metric) if cfg.eval.best_metric else None
        if cfg.eval.best_metric and value is None:
            raise NgrpoError(
                f"eval.best_metric {cfg.eval.best_metric!r} is not among the evaluation metrics: "
                f"{', '.join(sorted(metrics))}"
            )
        if value is not None and (run.best is None or value > run.best):
            run.best = value

            def write(tmp: Path) -> None:
                _save_model(tmp, _saved_model(run), run.tokenizer)
                (tmp / "best.json").write_text(json.dumps({"step": run.step, "value": value}))

            write_atomically(run.run_dir / "best", write)
    run.accelerator.wait_for_everyone()


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
    """
    run_dir = Path(cfg.output_dir).expanduser()
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise NgrpoError(
            f"{str(run_dir)!r} already holds a run; resume it with --resume {run_dir} or choose "
            "another output_dir=..."
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NgrpoError(f"cannot create output_dir {str(run_dir)!r}: {err.strerror}") from err
    run = _setup(cfg, run_dir, resume, reward_funcs)
    if run.accelerator.is_main_process:
        save_config(cfg, run_dir / "config.yaml")
        log.info("derived values: %s", derived_values(cfg))
    writer = _tensorboard(run)
    try:
        if run.step == 0:
            _maybe_eval(run, writer, progress)
        while run.step < cfg.train.steps:
            metrics = _train_step(run)
            run.step += 1
            run.skipped_total += int(metrics["train/skipped_updates"])
            metrics["train/skipped_total"] = float(run.skipped_total)
            metrics["train/dropped_prompts"] = float(run.dropped_prompts)
            _log(run, {"step": run.step, "type": "train", **metrics}, writer)
            if progress is not None:
                progress("train", run.step, cfg.train.steps, metrics)
            _maybe_eval(run, writer, progress)
            save_every = cfg.logging.save_every
            if run.step == cfg.train.steps or (save_every and run.step % save_every == 0):
                if run.sharded:
                    save_sharded_checkpoint(run, run.step, _trainer_state(run))
                elif run.accelerator.is_main_process:
                    save_checkpoint(
                        run_dir, run.step, _saved_model(run), run.tokenizer, _trainer_state(run),
                        cfg.logging.keep_last,
                    )  # fmt: skip
                run.accelerator.wait_for_everyone()
    finally:
        run.rewards.close()
        run.pool.close()
        if writer is not None:
            writer.close()
    return run_dir


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
