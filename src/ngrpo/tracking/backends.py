"""The tracker adapters, one small class per library, registered in `BACKENDS` by name.

An adapter is started by `start(info, run_id)` (`run_id`: the id its previous start gave, to
continue that run, or None for a new one), then `log(metrics, step)`, `log_table(name, rows,
step)`, `summary(metrics)` and `close()`; `run_id` is what to keep for the next `start`. Each one
imports its library inside `start`, so choosing none costs no import.

Where each stores its run when nothing else is configured:
- tensorboard: `RUN_DIR/tensorboard/` event files (`SummaryWriter`); tables as text (markdown);
- wandb: `RUN_DIR/wandb/` (`dir=`), online unless `WANDB_MODE=offline`; resumes with
  `id=`, `resume="allow"`; tables as `wandb.Table`;
- trackio: its local store (`TRACKIO_DIR`, default `~/.cache/huggingface/trackio`), resuming the
  run by name; tables as `trackio.Table`;
- mlflow: `MLFLOW_TRACKING_URI` when set, else the SQLite store `RUN_DIR/mlflow/mlflow.db` with
  artifacts in `RUN_DIR/mlflow/artifacts`; resumes by `run_id`; metric names with `@` are written
  with `_at_` (MLflow refuses `@`); the config as parameters and `config.json`, tables as JSON
  artifacts `tables/<name>/step-NNNNNN.json`;
- swanlab: `RUN_DIR/swanlab/`, mode `offline` unless `SWANLAB_MODE` says otherwise (online needs
  a login; `local` needs the dashboard package); resumes with `id=`, `resume="allow"`; tables as
  `swanlab.echarts.Table`.
Their console banners (trackio, swanlab print them) are captured and sent to this module's logger
at debug level: library code does not print.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    """What every backend is started with."""

    run_dir: Path
    project: str
    run_name: str
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config, nested


class Backend(Protocol):
    run_id: str

    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def log_table(self, name: str, rows: list[dict[str, Any]], step: int) -> None: ...
    def summary(self, metrics: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Capture what a library prints (its banners) and log it at debug level."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        yield
    if out.getvalue().strip():
        log.debug("%s: %s", name, out.getvalue().strip())


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every key of the rows, in first-seen order."""
    return list(dict.fromkeys(key for row in rows for key in row))


def _cell(value: Any) -> Any:
    plain = isinstance(value, (str, int, float, bool)) or value is None
    return value if plain else json.dumps(value)


def _table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(columns, data rows) of `rows` for a tracker's table type."""
    columns = _columns(rows)
    return columns, [[_cell(row.get(c)) for c in columns] for row in rows]


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# --------------------------------------------------------------------------------- adapters


class TensorBoardBackend:
    module: ClassVar[str] = "tensorboard"

    def __init__(self, writer, run_id: str):
        self.writer, self.run_id = writer, run_id

    @classmethod
    def start(cls, info: RunInfo, run_id: str | None) -> TensorBoardBackend:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(info.run_dir / "tensorboard"))
        writer.add_text("config", "```\n" + json.dumps(info.config, indent=1) + "\n```", 0)
        return cls(writer, run_id or "tensorboard")

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        columns = _columns(rows)
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in rows:
            cells = (str(_cell(row.get(c, ""))).replace("|", "\\|").replace("\n", " ")
                     for c in columns)  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        self.writer.add_text(name, "\n".join(lines), step)

    def summary(self, metrics: dict[str, Any]) -> None:
        self.writer.add_text("summary", "```\n" + json.dumps(metrics, indent=1) + "\n```")

    def close(self) -> None:
        self.writer.close()


class WandbBackend:
    module: ClassVar[str] = "wandb"

    def __init__(self, run, wandb):
        self.run, self.wandb, self.run_id = run, wandb, run.id

    @classmethod
    def start(cls, info: RunInfo, run_id: str | None) -> WandbBackend:
        import wandb

        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True,
                                  save_code=False, disable_git=True)  # fmt: skip
        with _quiet("wandb"):
            run = wandb.init(
                project=info.project, name=info.run_name, tags=info.tags or None,
                config=info.config, dir=str(info.run_dir), id=run_id, resume="allow",
                settings=settings, reinit="create_new",
            )  # fmt: skip
        return cls(run, wandb)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        columns, data = _table(rows)
        self.run.log({name: self.wandb.Table(columns=columns, data=data)}, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        self.run.summary.update(metrics)

    def close(self) -> None:
        with _quiet("wandb"):
            self.run.finish()


class TrackioBackend:
    module: ClassVar[str] = "trackio"

    def __init__(self, run, trackio):
        self.run, self.trackio, self.run_id = run, trackio, run.name

    @classmethod
    def start(cls, info: RunInfo, run_id: str | None) -> TrackioBackend:
        import trackio

        with _quiet("trackio"):
            run = trackio.init(
                project=info.project, name=run_id or info.run_name, config=info.config,
                resume="allow", auto_log_gpu=False, auto_log_cpu=False, embed=False,
            )  # fmt: skip
        return cls(run, trackio)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        columns, data = _table(rows)
        self.run.log({name: self.trackio.Table(columns=columns, data=data)}, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        pass  # trackio keeps no summary apart from the logged values

    def close(self) -> None:
        with _quiet("trackio"):
            if self.trackio.context_vars.current_run.get() is self.run:
                self.trackio.finish()  # also forgets it: no second finish (and print) at exit
            else:
                self.run.finish()


_MLFLOW_BAD = re.compile(r"[^\w\-. /:]")


def mlflow_key(key: str) -> str:
    """A metric name MLflow accepts: `@` as `_at_` (as verl does), other characters as `_`."""
    return _MLFLOW_BAD.sub("_", key.replace("@", "_at_"))


class MlflowBackend:
    module: ClassVar[str] = "mlflow"

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    @classmethod
    def start(cls, info: RunInfo, run_id: str | None) -> MlflowBackend:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        local = info.run_dir / "mlflow"
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            local.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{(local / 'mlflow.db').resolve()}"
        client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            experiment = client.get_experiment_by_name(info.project)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(
                info.project,
                artifact_location=None if os.environ.get("MLFLOW_TRACKING_URI")
                else (local / "artifacts").resolve().as_uri(),
            )  # fmt: skip
            tags = {f"tag.{t}": "true" for t in info.tags}
            run_id = client.create_run(experiment_id, run_name=info.run_name, tags=tags).info.run_id
            params = [Param(k[:250], str(v)[:6000]) for k, v in _flat(info.config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                client.log_batch(run_id, params=params[i : i + 100])
            client.log_dict(run_id, info.config, "config.json")
        else:
            client.update_run(run_id, status="RUNNING")
        return cls(client, run_id)

    def log(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(mlflow_key(k), v, now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        columns = _columns(rows)
        table = {"columns": columns, "data": [[_cell(r.get(c)) for c in columns] for r in rows]}
        self.client.log_dict(self.run_id, table, f"tables/{name}/step-{step:06d}.json")

    def summary(self, metrics: dict[str, Any]) -> None:
        self.client.log_dict(self.run_id, metrics, "summary.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class SwanlabBackend:
    module: ClassVar[str] = "swanlab"

    def __init__(self, run, swanlab):
        self.run, self.swanlab, self.run_id = run, swanlab, run.id

    @classmethod
    def start(cls, info: RunInfo, run_id: str | None) -> SwanlabBackend:
        import swanlab

        settings = swanlab.Settings(
            interactive=False, terminal={"proxy_type": "none"},
            probe={"monitor": False, "hardware": False, "requirements": False, "git": False},
        )  # fmt: skip
        with _quiet("swanlab"):
            run = swanlab.init(
                project=info.project, name=info.run_name, tags=info.tags or None,
                config=info.config, log_dir=str(info.run_dir / "swanlab"),
                mode=os.environ.get("SWANLAB_MODE", "offline"), id=run_id, resume="allow",
                settings=settings, reinit=True,
            )  # fmt: skip
        return cls(run, swanlab)

    def log(self, metrics: dict[str, float], step: int) -> None:
        with _quiet("swanlab"):
            self.run.log(metrics, step=step)

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        columns = _columns(rows)
        table = self.swanlab.echarts.Table()
        table.add(columns, [[_cell(r.get(c)) for c in columns] for r in rows])
        with _quiet("swanlab"):
            self.run.log({name: table}, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        pass  # swanlab keeps each metric's last value itself

    def close(self) -> None:
        with _quiet("swanlab"):
            self.run.finish()


@dataclass(frozen=True)
class _Entry:
    module: str  # the import that must succeed (checked before any work)
    start: Callable[[RunInfo, str | None], Backend]


BACKENDS: dict[str, _Entry] = {
    cls_name: _Entry(cls.module, cls.start)
    for cls_name, cls in (
        ("tensorboard", TensorBoardBackend), ("wandb", WandbBackend), ("trackio", TrackioBackend),
        ("mlflow", MlflowBackend), ("swanlab", SwanlabBackend),
    )
}  # fmt: skip
