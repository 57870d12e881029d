"""Experiment trackers: one small interface the training loop calls, fanned out to the chosen
backends (`logging.report_to`: tensorboard, wandb, trackio, mlflow, swanlab).

    tracker = open_tracker(RunInfo(run_dir, project, run_name, tags, config), ["wandb"])
    tracker.log({"reward/mean": 0.4}, step=3)
    tracker.log_table("completions", rows, step=3)
    tracker.close(summary={...})

Each backend is a small adapter in `ngrpo.tracking.backends`, registered by name in `BACKENDS`;
its library is imported only when it is chosen, and `check_installed` says, before any work, which
chosen library is missing and which extra installs it (`pip install "ngrpo[wandb]"`). The run id
each backend gave is kept in the run directory (`trackers.json`), so that `--resume` continues the
same tracker runs. A backend that raises mid-run is logged once (a warning naming it and the error)
and dropped; training goes on with the others and `metrics.jsonl`. Only the caller decides who
reports: the trainer opens trackers on rank 0 only (`Tracker.disabled()` elsewhere).

`ngrpo.tracking.completions` builds the completion rows (prompt, response, rewards, advantage,
every mixed position with its anchor, neighbours and weights) that the loop writes to
`completions/step-NNNNNN.jsonl` and sends to the trackers as tables.

Taken from verl's `utils/tracking.py` (one `log(data, step)` over several backends) and what it
learnt: MLflow metric names may not hold `@` (rewritten `_at_`), wandb resumes by a stable run id.
Unlike it: a registry of adapters instead of a chain of `if "wandb" in backends`, runs finished by
an explicit `close()` (never in `__del__`), settings passed in rather than read from the
environment deep inside (the libraries' own variables, `WANDB_MODE`, `MLFLOW_TRACKING_URI`,
`TRACKIO_DIR`, ... keep their meaning).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ngrpo.tracking.backends import BACKENDS, Backend, RunInfo
from ngrpo.utils.errors import NgrpoError
from ngrpo.utils.io import write_text_atomically

log = logging.getLogger(__name__)

IDS_FILE = "trackers.json"  # {backend: the run id it gave}, for --resume

__all__ = [
    "BACKENDS", "IDS_FILE", "Backend", "RunInfo", "Tracker", "check_installed", "open_tracker",
]  # fmt: skip


def check_installed(names: Sequence[str]) -> None:
    """Raise one `NgrpoError` naming every chosen backend whose library is not importable and the
    extra that installs it (nothing is imported here)."""
    missing = []
    for name in names:
        if name not in BACKENDS:
            raise NgrpoError(f"unknown tracker {name!r}; choose from {', '.join(BACKENDS)}")
        module = BACKENDS[name].module
        if importlib.util.find_spec(module) is None:
            missing.append(name)
    if missing:
        extras = ",".join(missing)
        raise NgrpoError(
            f"logging.report_to={','.join(missing)} needs the "
            f"{' and '.join(BACKENDS[m].module for m in missing)} package"
            f'{"s" if len(missing) > 1 else ""}: pip install "ngrpo[{extras}]"'
        )


class Tracker:
    """The backends of one run behind `log`, `log_table` and `close`.

    A backend that raises is logged once and dropped (`failed` names it)."""

    def __init__(self, backends: dict[str, Backend]):
        self.backends = dict(backends)
        self.failed: dict[str, str] = {}

    @classmethod
    def disabled(cls) -> Tracker:
        """A tracker that reports nothing (processes other than rank 0, or none chosen)."""
        return cls({})

    def _each(self, what: str, step: int | None, call) -> None:
        for name, backend in list(self.backends.items()):
            try:
                call(backend)
            except Exception as err:  # a tracker must never stop training
                where = f" at step {step}" if step is not None else ""
                log.warning(
                    "tracker %s failed in %s%s (%s: %s); training goes on without it",
                    name, what, where, type(err).__name__, err,
                )  # fmt: skip
                self.failed[name] = f"{type(err).__name__}: {err}"
                del self.backends[name]
                try:
                    backend.close()
                except Exception:  # already failing: its close may fail too
                    log.debug("closing the failed tracker %s raised", name, exc_info=True)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Numeric `metrics` (other values are skipped) at `step`."""
        numbers = {
            k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
        }  # fmt: skip
        if numbers:
            self._each("log", step, lambda b: b.log(numbers, step))

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        """Rows of one table (flat dicts of str / number / bool) at `step`, as each backend's
        table type."""
        if rows:
            self._each("log_table", step, lambda b: b.log_table(name, rows, step))

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Finish every run (with the final `summary` where the backend keeps one)."""
        if summary:
            self._each("summary", None, lambda b: b.summary(summary))
        self._each("close", None, lambda b: b.close())
        self.backends.clear()


def _read_ids(run_dir: Path) -> dict[str, str]:
    path = run_dir / IDS_FILE
    if not path.is_file():
        return {}
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise NgrpoError(f"cannot read {path}: {err}; delete it to start new tracker runs") from err
    return {str(k): str(v) for k, v in ids.items()}


def open_tracker(info: RunInfo, names: Sequence[str], resume: bool = False) -> Tracker:
    """Start (or, with `resume`, continue) a run in each backend of `names`.

    The run ids are read from and written to `info.run_dir / IDS_FILE`. A backend that cannot
    start raises `NgrpoError` naming it (before the first step, so nothing is lost)."""
    check_installed(names)
    ids = _read_ids(info.run_dir) if resume else {}
    started: dict[str, Backend] = {}
    info.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        for name in names:
            try:
                started[name] = BACKENDS[name].start(info, ids.get(name))
            except NgrpoError:
                raise
            except Exception as err:
                raise NgrpoError(
                    f"tracker {name} could not start: {type(err).__name__}: {err}"
                ) from err
            ids[name] = started[name].run_id
        if started:
            write_text_atomically(info.run_dir / IDS_FILE, json.dumps(ids, indent=1) + "\n")
    except BaseException:
        Tracker(started).close()  # no run left open
        raise
    return Tracker(started)
