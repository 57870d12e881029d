"""Plots for the demo report and the probe: each function writes one PNG from plain dicts and lists.

Values are either a number or a `(value, ci_low, ci_high)` triple (a mean with its 95% confidence
interval, e.g. over seeds); intervals are drawn as shaded bands on curves and as error bars on
points and bars. Every figure has a title, axis labels and a legend. Figures are built with
`matplotlib.figure.Figure` and the Agg canvas directly (no pyplot, no global backend switch), so
plotting works headless and never opens a window. Each function returns the path it wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

Value = float | Sequence[float]  # a number, or (value, ci_low, ci_high)

DPI = 120
# Colours per method, stable across figures; other names get the default cycle.
COLORS = {
    "base": "#7f7f7f",
    "none": "#1f77b4",
    "grpo": "#1f77b4",
    "neighbor": "#d62728",
    "n-grpo": "#d62728",
    "gaussian": "#2ca02c",
    "stht": "#2ca02c",
    "stht-style": "#2ca02c",
    "n-grpo (release)": "#d62728",
    "n-grpo (paper text)": "#9467bd",
    "n-grpo (sampled anchor)": "#ff7f0e",
    "n-grpo (full release)": "#8c564b",
    "n-grpo (release), mix rate annealed": "#e377c2",
    "n-grpo (release), no candidate-row gradient": "#17becf",
    "n-grpo (release), output-table neighbours": "#bcbd22",
    "n-grpo (release), strict gate (entropy >= 1.0)": "#000000",
}
# Probe perturbations: the matched-shift pair, and N-GRPO's own mixing as a reference point.
PROBE_COLORS = {
    "none": "#7f7f7f",
    "gaussian": "#2ca02c",
    "neighbor": "#ff7f0e",
    "n-grpo": "#d62728",
    "n-grpo (release)": "#d62728",
    "n-grpo (paper text)": "#9467bd",
}
# Probe panels: (row key, axis label).
PROBE_PANELS = (
    ("accuracy", "accuracy (mean@n)"),
    ("answer_agreement", "answer agreement with unperturbed"),
    ("distinct_answers", "distinct answers per group"),
    ("pairwise_edit", "pairwise edit distance"),
)


def split_value(value: Value) -> tuple[float, float | None, float | None]:
    """A number or (value, ci_low, ci_high) -> (value, low, high); no interval gives Nones."""
    if isinstance(value, int | float):
        return float(value), None, None
    if len(value) == 1:
        return float(value[0]), None, None
    if len(value) == 3:
        return float(value[0]), float(value[1]), float(value[2])
    raise ValueError(f"expected a number or (value, ci_low, ci_high), got {value!r}")


def _color(name: str) -> str | None:
    return COLORS.get(name.lower())


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _plot_series(ax, xs, values, label: str, color: str | None, marker: str = "o") -> None:
    """One line with markers; a shaded band where intervals are given (error bars for 1 point)."""
    parts = [split_value(v) for v in values]
    ys = [p[0] for p in parts]
    (line,) = ax.plot(xs, ys, marker=marker, markersize=10 if marker == "*" else 6, label=label,
                      color=color)  # fmt: skip
    with_ci = [(x, lo, hi) for x, (_, lo, hi) in zip(xs, parts, strict=True) if lo is not None]
    if not with_ci:
        return
    if len(xs) == 1:
        (_, lo, hi), y = with_ci[0], ys[0]
        ax.errorbar(
            xs, ys, yerr=[[y - lo], [hi - y]], fmt="none", capsize=4, color=line.get_color()
        )
    else:
        cx, lo, hi = zip(*with_ci, strict=True)
        ax.fill_between(cx, lo, hi, alpha=0.2, color=line.get_color(), linewidth=0)


def plot_accuracy_over_steps(
    curves: Mapping[str, Sequence[Sequence[float]]],
    path: str | Path,
    title: str = "Accuracy over training",
    ylabel: str = "accuracy",
) -> Path:
    """Curves `{method: [(step, value) or (step, value, ci_low, ci_high), ...]}` -> PNG."""
    if not curves:
        raise ValueError("no curves to plot")
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for method, points in curves.items():
        points = sorted(points, key=lambda p: p[0])
        _plot_series(ax, [p[0] for p in points], [tuple(p[1:]) for p in points], method,
                     _color(method))  # fmt: skip
    ax.set(title=title, xlabel="training step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(title="method")
    fig.tight_layout()
    return _save(fig, path)


def plot_panels(
    panels: Mapping[str, Mapping[str, Sequence[Sequence[float]]]],
    path: str | Path,
    title: str,
    xlabel: str = "training step",
) -> Path:
    """`{panel title: {method: [(x, value) or (x, value, lo, hi), ...]}}` -> one line panel each
    (side by side, own y scale)."""
    if not panels:
        raise ValueError("no panels to plot")
    fig = Figure(figsize=(3.6 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, curves) in zip(axes, panels.items(), strict=True):
        for method, points in curves.items():
            points = sorted(points, key=lambda p: p[0])
            _plot_series(ax, [p[0] for p in points], [tuple(p[1:]) for p in points], method,
                         _color(method), marker=".")  # fmt: skip
        ax.set(title=panel, xlabel=xlabel)
        ax.grid(alpha=0.3)
    axes[0].legend(title="method", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_pass_at_k(
    results: Mapping[str, Mapping[int, Value]],
    path: str | Path,
    title: str = "pass@k",
) -> Path:
    """`{method: {k: value or (value, ci_low, ci_high)}}` -> pass@k vs k (log2 axis) PNG."""
    if not results:
        raise ValueError("no pass@k results to plot")
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    all_ks: set[int] = set()
    for method, by_k in results.items():
        ks = sorted(int(k) for k in by_k)
        lookup = {int(k): v for k, v in by_k.items()}
        _plot_series(ax, ks, [lookup[k] for k in ks], method, _color(method))
        all_ks.update(ks)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(all_ks), [str(k) for k in sorted(all_ks)])
    ax.set(title=title, xlabel="k (samples per problem)", ylabel="pass@k")
    ax.grid(alpha=0.3)
    ax.legend(title="method")
    fig.tight_layout()
    return _save(fig, path)


def plot_diversity(
    per_method: Mapping[str, Mapping[str, Value]],
    path: str | Path,
    title: str = "Rollout diversity",
) -> Path:
    """`{method: {metric: value or (value, lo, hi)}}` -> one bar panel per metric (own scale)."""
    if not per_method:
        raise ValueError("no diversity results to plot")
    methods = list(per_method)
    metrics = list(dict.fromkeys(m for values in per_method.values() for m in values))
    fig = Figure(figsize=(max(4.0, 3.0 * len(metrics)), 3.8))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        for i, method in enumerate(methods):
            if metric not in per_method[method]:
                continue
            value, lo, hi = split_value(per_method[method][metric])
            yerr = None if lo is None else [[value - lo], [hi - value]]
            ax.bar(i, value, yerr=yerr, capsize=4, label=method, color=_color(method) or f"C{i}")
        ax.set_xticks(range(len(methods)), methods, rotation=20)
        ax.set(title=metric.removeprefix("diversity/"), xlabel="method", ylabel="value")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, title="method", loc="upper right", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    return _save(fig, path)


def plot_probe(
    probe_results: Mapping,
    path: str | Path,
    title: str = "Semantic consistency under matched embedding shifts",
) -> Path:
    """The probe's `{"rows": [...]}` (see `ngrpo.study.probe.run_probe`) -> 2×2 panels of accuracy,
    answer agreement, distinct answers and edit distance vs the measured shift, one line per
    perturbation; the unperturbed row is drawn as each line's point at shift 0, and rows without a
    target shift (the N-GRPO reference) as lone stars. A row key `<metric>_ci = [low, high]` adds
    an interval."""
    rows = list(probe_results["rows"])
    if not rows:
        raise ValueError("no probe rows to plot")
    baseline = [r for r in rows if r["perturbation"] == "none"]
    kinds = list(dict.fromkeys(r["perturbation"] for r in rows if r["perturbation"] != "none"))
    fig = Figure(figsize=(9.6, 7.2))
    axes = fig.subplots(2, 2).ravel()
    for ax, (key, label) in zip(axes, PROBE_PANELS, strict=True):
        for kind in kinds or ["none"]:
            own = [r for r in rows if r["perturbation"] == kind]
            reference = all(r.get("target_shift") is None for r in own)
            series = own if reference else baseline + [r for r in own if kind != "none"]
            series = sorted(series, key=lambda r: r["achieved_shift"])
            xs = [r["achieved_shift"] for r in series]
            values = [(r[key], *r[f"{key}_ci"]) if f"{key}_ci" in r else r[key] for r in series]
            marker = "*" if reference else "o"
            _plot_series(ax, xs, values, kind, PROBE_COLORS.get(kind), marker)
        ax.set(title=label, xlabel="measured relative shift ‖ẽ − e(y)‖ / ‖e(y)‖", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend(title="perturbation", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
