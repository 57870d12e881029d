"""What the loop reports besides `metrics.jsonl`: the trackers of `logging.report_to` and the
completion files of `logging.completions_every` (`ngrpo.tracking`).

- `tracker_names(cfg)`: the chosen trackers (`logging.tensorboard: true` adds `tensorboard`);
  `check_trackers(cfg)` fails before any work when one is not installed;
- `start_tracker(run, resume)`: rank 0 starts (or continues) the trackers' runs with the resolved
  config; other processes get a tracker that reports nothing;
- `completions_due(cfg, step)`: every `completions_every` steps and at the last step;
- `report_completions(run, tracker, rows, kind)`: the rows to `completions/[eval-]step-N.jsonl`
  and to the trackers as a table (`completions` or `eval_completions`).
Under several processes each process writes nothing but rank 0, so the completion files hold rank
0's share of the step's rollouts.
"""

from __future__ import annotations

from typing import Any

from ngrpo.config import TrainConfig, config_to_dict
from ngrpo.tracking import RunInfo, Tracker, check_installed, open_tracker
from ngrpo.tracking.completions import table_rows, write_completions
from ngrpo.utils.errors import NgrpoError

EVAL_COMPLETION_PROBLEMS = 4  # problems per evaluation set written to eval-step-N.jsonl


def tracker_names(cfg: TrainConfig) -> list[str]:
    names = list(cfg.logging.report_to)
    if cfg.logging.tensorboard and "tensorboard" not in names:
        names.append("tensorboard")
    return names


def check_trackers(cfg: TrainConfig) -> None:
    check_installed(tracker_names(cfg))


def start_tracker(run, resume: bool) -> Tracker:
    names = tracker_names(run.cfg)
    if not names or not run.accelerator.is_main_process:
        return Tracker.disabled()
    lg = run.cfg.logging
    info = RunInfo(
        run_dir=run.run_dir, project=lg.project, run_name=lg.run_name or run.run_dir.name,
        tags=list(lg.tags), config=config_to_dict(run.cfg),
    )  # fmt: skip
    return open_tracker(info, names, resume=resume)


def completions_due(cfg: TrainConfig, step: int) -> bool:
    every = cfg.logging.completions_every
    return every > 0 and step > 0 and (step % every == 0 or step == cfg.train.steps)


def report_completions(run, tracker: Tracker, rows: list[dict[str, Any]], kind: str = "train"):
    """Write `rows` for `run.step` (rank 0) and send them to the trackers."""
    if not rows or not run.accelerator.is_main_process:
        return
    try:
        write_completions(run.run_dir, run.step, rows, kind)
    except OSError as err:
        raise NgrpoError(f"cannot write completions in {run.run_dir}: {err}") from err
    name = "completions" if kind == "train" else f"{kind}_completions"
    tracker.log_table(name, table_rows(rows), run.step)


def eval_rows(step: int, set_name: str, examples, samples) -> list[dict[str, Any]]:
    """Completion rows of an evaluation: every sample of its first `EVAL_COMPLETION_PROBLEMS`
    problems (mixing is off at evaluation: no mixed positions)."""
    wanted = {e.id: e for e in examples[:EVAL_COMPLETION_PROBLEMS]}
    return [
        {"step": step, "kind": "eval", "set": set_name, "group": s.problem_id,
         "sample": s.sample, "prompt": str(wanted[s.problem_id].problem),
         "response": s.response, "extracted": s.extracted, "reward": float(s.correct),
         "correct": s.correct, "mixed": []}
        for s in samples if s.problem_id in wanted
    ]  # fmt: skip
