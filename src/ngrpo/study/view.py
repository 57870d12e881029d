"""`ngrpo view`: one self-contained HTML page to look at one or several run directories.

The page (no network, no CDN: the data, styles and script are inline, so it opens on an offline
cluster node) has two parts:
- curves of every run overlaid, one chart per metric: reward, evaluation mean@n of each set,
  entropy, mixed fraction, rollout-learner mismatch, step time (`DEFAULT_CURVES`, the ones a run
  has), and a menu to add any other metric of `metrics.jsonl`;
- a completions browser over `completions/step-NNNNNN.jsonl` (and `eval-step-...`): pick a run, a
  step and a prompt (or all), see its group of responses with reward, advantage, length, and every
  mixed token highlighted; hovering shows its anchor, neighbours with their weights (or the noise
  norm) and the next token, clicking pins them in a side panel.
`#run=I&file=NAME&group=G` in the address selects a run, a completions file and a group.

`build_page(run_dirs)` returns the HTML; `write_page(run_dirs, out)` writes it. A run with many
completion files keeps `max_completion_files` of them, spread evenly and always the last one.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ngrpo.study.view_assets import PAGE
from ngrpo.utils.errors import NgrpoError

# (metric key pattern, chart title): the charts shown first, in this order, where a run has them
DEFAULT_CURVES = (
    (r"reward/mean", "reward"),
    (r"eval/[^/]+/mean@n", "evaluation mean@n"),
    (r"actor/entropy", "entropy"),
    (r"rollout/mixed_frac", "mixed fraction"),
    (r"mismatch/kl_k3", "rollout-learner mismatch (KL k3)"),
    (r"time/step_s", "step time (s)"),
)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut by an interrupted write
            continue
    return rows


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(rows: list[dict]) -> dict[str, list[list[float]]]:
    """{metric: [[step, value], ...]} of train and eval rows (`time/step_s`: rollout + learner)."""
    series: dict[str, list[list[float]]] = {}
    for row in rows:
        step = row.get("step")
        if not _finite(step):
            continue
        values = {k: v for k, v in row.items() if k not in ("step", "type") and _finite(v)}
        if "time/rollout_s" in values and "time/learner_s" in values:
            values["time/step_s"] = values["time/rollout_s"] + values["time/learner_s"]
        for key, value in values.items():
            series.setdefault(key, []).append([step, value])
    return series


def _spread(paths: list[Path], keep: int) -> list[Path]:
    if len(paths) <= keep:
        return paths
    picks = {round(i * (len(paths) - 1) / (keep - 1)) for i in range(keep)} if keep > 1 else {-1}
    return [paths[i] for i in sorted(picks)]


def load_run(run_dir: str | Path, max_completion_files: int = 20) -> dict[str, Any]:
    """A run directory's metrics and completion files, as the page's data."""
    path = Path(run_dir).expanduser()
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise NgrpoError(f"{str(run_dir)!r} is not a run directory: no metrics.jsonl")
    found = sorted((path / "completions").glob("*step-*.jsonl"))
    train = _spread([p for p in found if p.name.startswith("step-")], max_completion_files)
    evals = _spread([p for p in found if not p.name.startswith("step-")], max_completion_files)
    files = []
    for file in [*train, *evals]:
        rows = _read_jsonl(file)
        step = int(re.search(r"step-(\d+)", file.name).group(1))
        files.append({"name": file.stem, "step": step, "rows": rows})
    return {"name": path.name, "path": str(path), "series": _series(_read_jsonl(metrics)),
            "completions": files}  # fmt: skip


def _names(runs: list[dict]) -> None:
    """Distinct labels: a run's directory name, with its parent where two share one."""
    seen = [r["name"] for r in runs]
    for run in runs:
        if seen.count(run["name"]) > 1:
            run["name"] = "/".join(Path(run["path"]).parts[-2:])


def build_page(
    run_dirs: Sequence[str | Path], title: str | None = None, max_completion_files: int = 20
) -> str:
    """The self-contained HTML page for `run_dirs`."""
    if not run_dirs:
        raise NgrpoError("ngrpo view needs at least one run directory")
    runs = [load_run(d, max_completion_files) for d in run_dirs]
    _names(runs)
    data = {
        "title": title or ", ".join(r["name"] for r in runs),
        "defaults": [[pattern, label] for pattern, label in DEFAULT_CURVES],
        "runs": runs,
    }
    # inline JSON: `</` is escaped so that no text in a completion can close the script element
    payload = json.dumps(data, allow_nan=False).replace("</", "<\\/")
    return PAGE.replace("__TITLE__", _html_escape(data["title"])).replace("__DATA__", payload)


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_page(
    run_dirs: Sequence[str | Path], out: str | Path, title: str | None = None,
    max_completion_files: int = 20,
) -> Path:  # fmt: skip
    """Write `build_page(run_dirs)` to `out`; returns its path."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_page(run_dirs, title, max_completion_files), encoding="utf-8")
    return out
