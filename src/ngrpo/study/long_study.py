"""The long-training setting and its diagnosis: statistics and report section.

Inputs: `long[method]`, one entry per seed (`ngrpo.study.demo`; each with its `seed`, its
`final` evaluation, its ID `curve` and its per-step `series` of `LONG_SERIES_KEYS`). Methods may
have finished different numbers of seeds (a run continued across invocations); every entry list
is a prefix of the same seed order, so a comparison pairs the first `min(len(a), len(b))` seeds,
which are the same seeds for both.

- `summarize_long`: per method the per-step mean [95% CI] over seeds of every series (each seed's
  `WINDOW`-step trailing moving average: one step is 16 groups, too noisy to read), the ID curve,
  the start / end window means of the diagnostics and the final mean@n per split; paired differences
  (with their minimal detectable difference, `ngrpo.study.stats`) of every method against GRPO and
  of every switch against N-GRPO (release) on final mean@n and on the end-window diagnostics; and
  the diagnosis verdict of each switch by the decision rule fixed before the runs
  (`docs/results/long_diagnosis.md`).
- `long_lines`: the report section; `long_plots`: its figures.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from ngrpo.study.settings import DIAGNOSIS_METHODS, FULL_METHODS, LONG_COMPARED
from ngrpo.study.stats import mean_ci, minimal_detectable_difference, paired_difference, paired_sd
from ngrpo.study.stats import verdict as ci_verdict

WINDOW = 10  # training steps at the start and at the end that the diagnostics are averaged over
MIN_DIAGNOSIS_SEEDS = 5  # fewer finished seeds: a switch's verdict is `undecided`
# Per-step diagnostics shown in the report (series key -> column name)
SERIES_NAMES = {
    "reward/accuracy": "rollout acc.",
    "diversity/zero_adv_frac": "zero-adv. groups",
    "reward/std_in_group": "reward std",
    "actor/entropy": "entropy",
    "diversity/canonical_paths": "canonical paths",
    "rollout/mixed_frac": "mixed frac.",
    "rollout/embed_shift": "embed shift",
    "rollout/neighbor_synonym_frac": "synonym frac.",
    "embedding/drift": "table drift",
    "actor/clip_frac": "clip frac.",
    "actor/grad_norm": "grad norm",
}
# Why N-GRPO (release) falls behind GRPO in the long setting: one hypothesis per switch, stated
# before the runs (docs/results/long_diagnosis.md has the reasoning and the predicted logs)
DIAGNOSIS_HYPOTHESES = {
    "n-grpo-anneal": "D1, persistent perturbation: constant mixing keeps perturbing the rollouts "
    "when the policy should sharpen (late rollouts less accurate, more zero-advantage groups); "
    "annealing the mix rate to 0 closes most of the gap.",
    "n-grpo-nograd": "D2, embedding drift: the gradient into every candidate row moves the input "
    "table more than GRPO's (`embedding/drift`), degrading how numbers are read (OOD hit "
    "hardest); without it the gap closes.",
    "n-grpo-output": "D3, drifting neighbour table: neighbours searched in the trained input "
    "table stop being synonyms (`rollout/neighbor_synonym_frac` falls); the output table keeps "
    "them and closes the gap.",
    "n-grpo-gate": "D4, the gate keeps mixing: surface-form positions stay uncertain, so ~10% of "
    "positions mix all through training; a stricter gate (1.0 nats) mixes fewer and closes part "
    "of the gap if D1 holds (a dose test of D1).",
    "n-grpo-full": "The authors' full reading (output table, no candidate-row gradient, dual clip "
    "3): closes the gap if D2 or D3 holds.",
}
PLOT_PANELS = (
    ("long_training", ("reward/accuracy", "diversity/zero_adv_frac", "reward/std_in_group",
                       "actor/entropy")),
    ("long_mechanism", ("rollout/mixed_frac", "embedding/drift", "rollout/neighbor_synonym_frac",
                        "actor/clip_frac")),
)  # fmt: skip


def _values(series: Sequence[float | None]) -> list[float]:
    return [v for v in series if v is not None]


def _smooth(series: Sequence[float | None], width: int = WINDOW) -> list[float | None]:
    """The trailing `width`-step moving average of a per-step series (None where no value)."""
    out: list[float | None] = []
    for i in range(len(series)):
        values = _values(series[max(0, i + 1 - width) : i + 1])
        out.append(statistics.fmean(values) if values else None)
    return out


def _window(entry: dict, key: str, end: bool) -> float | None:
    values = _values(entry["series"].get(key, []))
    if not values:
        return None
    return statistics.fmean(values[-WINDOW:] if end else values[:WINDOW])


def _paired(a: list[float], b: list[float]) -> dict:
    """A paired difference row: mean, 95% CI, seeds, verdict and (>= 2 seeds) the MDE."""
    mean, low, high = paired_difference(a, b)
    seeds = len(a)
    mde = minimal_detectable_difference(paired_sd(a, b), seeds) if seeds >= 2 else None
    return {"difference": mean, "ci": [low, high], "seeds": seeds,
            "verdict": ci_verdict(low, high, seeds), "mde": mde}  # fmt: skip


def _pairs(long: dict[str, list[dict]]) -> list[tuple[str, str]]:
    pairs = [(m, "grpo") for m in long if m != "grpo" and "grpo" in long]
    pairs += [(m, "n-grpo") for m in long if m not in LONG_COMPARED and "n-grpo" in long]
    return pairs


def _compare(long: dict[str, list[dict]], a: str, b: str, value) -> dict | None:
    n = min(len(long[a]), len(long[b]))
    first, second = long[a][:n], long[b][:n]
    if [e["seed"] for e in first] != [e["seed"] for e in second]:
        raise ValueError(f"{a} and {b}: the long runs must cover the same leading seeds")
    xs, ys = [value(e) for e in first], [value(e) for e in second]
    if any(v is None for v in (*xs, *ys)):
        return None
    return _paired(xs, ys)


def summarize_long(long: dict[str, list[dict]]) -> dict | None:
    """The long setting's statistics (module docstring); None when no long run finished."""
    long = {m: es for m, es in long.items() if es}
    if not long:
        return None
    methods = {}
    for method, entries in long.items():
        keys = [k for k in entries[0]["series"] if all(k in e["series"] for e in entries)]
        series = {}  # per step: mean [CI] over seeds of each seed's WINDOW-step moving average
        for key in keys:
            steps = zip(*(_smooth(e["series"][key]) for e in entries), strict=True)
            series[key] = [
                None if any(v is None for v in step) else mean_ci(step) for step in steps
            ]
        ends = {}
        for end in (False, True):
            ends["end" if end else "start"] = {
                key: mean_ci([_window(e, key, end) for e in entries])
                for key in keys
                if all(_window(e, key, end) is not None for e in entries)
            }
        curve_steps = [s for s, _ in entries[0]["curve"]]
        methods[method] = {
            "seeds": [e["seed"] for e in entries],
            "series": series,
            **ends,
            "curve": [
                (step, *mean_ci([e["curve"][i][1] for e in entries]))
                for i, step in enumerate(curve_steps)
            ],
            "final": {
                split: mean_ci([e["final"][split]["mean@n"] for e in entries])
                for split in entries[0]["final"]
            },
        }
    comparisons, mechanism = [], []
    for a, b in _pairs(long):
        for split in long[b][0]["final"]:
            row = _compare(long, a, b, lambda e, s=split: e["final"][s]["mean@n"])
            comparisons.append({"a": a, "b": b, "split": split, **row})
        for key in SERIES_NAMES:
            row = _compare(long, a, b, lambda e, k=key: _window(e, k, True))
            if row is not None:
                mechanism.append({"a": a, "b": b, "key": key, **row})
    return {
        "window": WINDOW,
        "methods": methods,
        "comparisons": comparisons,
        "mechanism": mechanism,
        "diagnosis": diagnose(comparisons),
        "premises": premise_checks(long, mechanism),
    }


def premise_checks(long: dict[str, list[dict]], mechanism: list[dict]) -> dict[str, dict]:
    """What the per-step logs say of each hypothesis's premise, by the checks written with the
    hypotheses (`docs/results/long_diagnosis.md`), so a switch's verdict can be read against them:

    - D2 is refuted by the logs when N-GRPO (release)'s end-window `embedding/drift` is not larger
      than GRPO's (paired CI not above 0);
    - D3 is refuted by the logs when N-GRPO (release)'s `rollout/neighbor_synonym_frac` does not
      fall over training (its end − start window means, paired by seed, CI not below 0);
    - D1's predicted signs (end-window rollout accuracy below GRPO's, zero-advantage groups above)
      and D4's premise (the gate still mixes at the end) are reported, not judged: no refutation
      rule was stated for them.
    Each entry: `status` (`holds`, `refuted by the logs`, `not resolved` or `reported`), the
    evidence rows and a one-line `text`. Methods or series that did not run are left out."""

    def row(a: str, b: str, key: str) -> dict | None:
        return next((r for r in mechanism if (r["a"], r["b"], r["key"]) == (a, b, key)), None)

    out: dict[str, dict] = {}
    drift = row("n-grpo", "grpo", "embedding/drift")
    if drift is not None:
        larger = drift["ci"][0] > 0
        out["D2"] = {
            "status": "holds" if larger else "refuted by the logs",
            "evidence": {"drift N-GRPO (release) − GRPO": drift},
            "text": f"table drift, N-GRPO (release) − GRPO: {_pts(drift, 1.0, 3)} "
            f"({'larger' if larger else 'not larger'} under N-GRPO)",
        }
    entries = long.get("n-grpo", [])
    key = "rollout/neighbor_synonym_frac"
    starts = [_window(e, key, False) for e in entries]
    ends = [_window(e, key, True) for e in entries]
    if len(entries) >= 2 and None not in (*starts, *ends):
        change = _paired(ends, starts)
        falls = change["ci"][1] < 0
        out["D3"] = {
            "status": "holds" if falls else "refuted by the logs",
            "evidence": {"synonym fraction end − start, N-GRPO (release)": change},
            "text": f"synonym fraction of N-GRPO (release), end − start of training: "
            f"{_pts(change, 1.0, 3)} ({'falls' if falls else 'does not fall'})",
        }
    accuracy = row("n-grpo", "grpo", "reward/accuracy")
    zero_adv = row("n-grpo", "grpo", "diversity/zero_adv_frac")
    if accuracy is not None and zero_adv is not None:
        seen = accuracy["ci"][1] < 0 and zero_adv["ci"][0] > 0
        out["D1"] = {
            "status": "holds" if seen else "not resolved",
            "evidence": {"rollout accuracy": accuracy, "zero-advantage groups": zero_adv},
            "text": f"end-window N-GRPO (release) − GRPO: rollout accuracy {_pts(accuracy)} "
            f"points, zero-advantage groups {_pts(zero_adv)} points (predicted: below, above"
            f"{'; both seen' if seen else '; not both outside noise'})",
        }
    key = "rollout/mixed_frac"
    mixed = [(_window(e, key, False), _window(e, key, True)) for e in entries]
    if mixed and all(None not in pair for pair in mixed):
        start = statistics.fmean(p[0] for p in mixed)
        end = statistics.fmean(p[1] for p in mixed)
        out["D4"] = {
            "status": "reported",
            "evidence": {"mixed fraction start": start, "mixed fraction end": end},
            "text": f"mixed fraction of N-GRPO (release), start → end of training: {start:.3f} → "
            f"{end:.3f}",
        }
    return out


def _row(rows: list[dict], a: str, b: str, split: str) -> dict | None:
    return next((r for r in rows if (r["a"], r["b"], r["split"]) == (a, b, split)), None)


def diagnose(comparisons: list[dict], split: str = "arith-id") -> dict:
    """The gap (N-GRPO (release) − GRPO) and, per switch, its verdict by the decision rule of
    `docs/results/long_diagnosis.md`: `closes the gap`, `closes part of the gap`, `does not close
    the gap`, or `undecided` (fewer than `MIN_DIAGNOSIS_SEEDS` seeds, or an MDE above the gap)."""
    gap = _row(comparisons, "n-grpo", "grpo", split)
    out: dict = {"split": split, "gap": gap, "switches": {}}
    for method in sorted({r["a"] for r in comparisons if r["b"] == "n-grpo"}):
        vs_release = _row(comparisons, method, "n-grpo", split)
        vs_grpo = _row(comparisons, method, "grpo", split)
        if vs_release is None or vs_grpo is None or gap is None:
            continue
        seeds = min(vs_release["seeds"], vs_grpo["seeds"])
        up = vs_release["ci"][0] > 0
        if seeds < MIN_DIAGNOSIS_SEEDS:
            found = "undecided"
        elif up and vs_grpo["ci"][1] >= 0:
            found = "closes the gap"
        elif up:
            found = "closes part of the gap"
        elif vs_release["mde"] is not None and vs_release["mde"] < abs(gap["difference"]):
            found = "does not close the gap"
        else:
            found = "undecided"
        out["switches"][method] = {"verdict": found, "seeds": seeds}
    return out


# ------------------------------------------------------------------------------------- report


def _pts(row: dict, scale: float = 100.0, digits: int = 1) -> str:
    d, (low, high) = row["difference"] * scale, row["ci"]
    if row["seeds"] < 2:
        return f"{d:+.{digits}f} (1 seed)"
    return f"{d:+.{digits}f} [{low * scale:+.{digits}f}, {high * scale:+.{digits}f}]"


def _mde(row: dict, scale: float = 100.0, digits: int = 1) -> str:
    return "–" if row["mde"] is None else f"{row['mde'] * scale:.{digits}f}"


def _triple(value: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, low, high = (v * scale for v in value)
    if low == high:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def long_lines(summary: dict | None, labels: dict[str, str], settings: dict) -> list[str]:
    """The report section "Long training and diagnosis"."""
    lines = ["## Long training and diagnosis", ""]
    if not summary:
        return [*lines, "No long run finished (`ngrpo demo --full` runs them).", ""]
    methods, window = summary["methods"], summary["window"]
    splits = list(next(iter(methods.values()))["final"])
    lines += [
        f"{settings['long_steps']} training steps per run (the 20-step setting's budget per step), "
        "final evaluation as in the main table; seeds per method in the table (each method's "
        "first finished seeds; comparisons pair the seeds both methods finished). Hypotheses and "
        "the decision rule were written before these runs: "
        "[long_diagnosis.md](../long_diagnosis.md).",
        "",
        *_switch_lines(methods, labels),
        "Final mean@n (percent, mean [95% CI] over seeds):",
        "",
        *_table(
            ["method", "seeds", *(f"{s} mean@n" for s in splits)],
            [
                [labels[m], str(len(info["seeds"])), *(_triple(info["final"][s]) for s in splits)]
                for m, info in methods.items()
            ],
        ),
        "",
        "Paired differences after the long training (points of mean@n, mean [95% CI]; MDE = the "
        "smallest true difference these seeds detect with 80% power):",
        "",
    ]
    rows = []
    for a, b in dict.fromkeys((r["a"], r["b"]) for r in summary["comparisons"]):
        cells = {r["split"]: r for r in summary["comparisons"] if (r["a"], r["b"]) == (a, b)}
        rows.append(
            [f"{labels[a]} − {labels[b]}", str(cells[splits[0]]["seeds"]),
             *(f"{_pts(cells[s])} (MDE {_mde(cells[s])})" for s in splits)]
        )  # fmt: skip
    lines += [*_table(["comparison", "seeds", *splits], rows), ""]
    diagnosis = summary["diagnosis"]
    gap = diagnosis["gap"]
    if gap is not None:
        lines.append(
            f"- **The gap** (N-GRPO (release) − GRPO, {diagnosis['split']} mean@n, "
            f"{gap['seeds']} seeds): {_pts(gap)} points ({gap['verdict']}; MDE {_mde(gap)})."
        )
        if gap["ci"][0] <= 0 <= gap["ci"][1]:
            lines.append(
                "- **D0** (no real gap) is not rejected: the interval contains 0, so no switch "
                "can be said to close a gap (decision rule)."
            )
        else:
            lines.append("- **D0** (no real gap) is rejected: the interval excludes 0.")
    for name, check in sorted(summary.get("premises", {}).items()):
        lines.append(f"- **{name}'s premise** ({check['status']}): {check['text']}.")
    for method, found in diagnosis["switches"].items():
        lines.append(
            f"- **{labels[method]}**: {found['verdict']} ({found['seeds']} seeds; decision rule "
            "in long_diagnosis.md)."
        )
    lines += [
        "",
        f"Per-step diagnostics (training rollouts, mixing on): mean over the first → last {window} "
        "steps, averaged over seeds:",
        "",
    ]
    keys = [k for k in SERIES_NAMES if any(k in info["end"] for info in methods.values())]
    rows = []
    for method, info in methods.items():
        rows.append([labels[method], *(
            f"{info['start'][k][0]:.3f} → {info['end'][k][0]:.3f}" if k in info["end"] else "–"
            for k in keys)])  # fmt: skip
    lines += [*_table(["method", *(SERIES_NAMES[k] for k in keys)], rows), ""]
    lines += [
        f"Paired differences of the last-{window}-step means (mean [95% CI]; the mechanism checks "
        "of the hypotheses):",
        "",
    ]
    rows = []
    for a, b in dict.fromkeys((r["a"], r["b"]) for r in summary["mechanism"]):
        cells = {r["key"]: r for r in summary["mechanism"] if (r["a"], r["b"]) == (a, b)}
        rows.append([f"{labels[a]} − {labels[b]}", *(
            _pts(cells[k], 1.0, 3) if k in cells else "–" for k in keys)])  # fmt: skip
    lines += [*_table(["comparison", *(SERIES_NAMES[k] for k in keys)], rows), ""]
    return lines


def _switch_lines(methods: dict, labels: dict[str, str]) -> list[str]:
    """The diagnosis switches that have finished runs, each with its hypothesis."""
    switches = [m for m in methods if m in DIAGNOSIS_HYPOTHESES]
    every = {**FULL_METHODS, **DIAGNOSIS_METHODS}
    if not switches:
        return ["No diagnosis switch has a finished run yet (see Pending).", ""]
    return [
        "**Hypotheses** (stated before the runs; D0, the null: the 3-seed gap may not hold at 10 "
        "seeds). Each switch changes one setting of N-GRPO (release) (the full release: three):",
        "",
        *(
            f"- {labels[m]} (`{' '.join(every[m].overrides[1:])}`): {DIAGNOSIS_HYPOTHESES[m]}"
            for m in switches
        ),  # fmt: skip
        "",
    ]


def long_plots(summary: dict | None, labels: dict[str, str], out: Path) -> dict[str, Path]:
    """The ID curve and the per-step diagnostics of the long runs, with 95% bands over seeds."""
    from ngrpo.study.plots import plot_accuracy_over_steps, plot_panels

    if not summary:
        return {}
    methods = summary["methods"]
    paths = {
        "long_accuracy": plot_accuracy_over_steps(
            {labels[m]: info["curve"] for m, info in methods.items()},
            out / "long_accuracy.png",
            title="Long training: ID accuracy (mean@4, mixing off; 95% band over seeds)",
            ylabel="arith-id mean@4",
        )
    }
    for name, keys in PLOT_PANELS:
        panels = {}
        for key in keys:
            curves = {
                labels[m]: [(i + 1, *v) for i, v in enumerate(info["series"][key]) if v is not None]
                for m, info in methods.items()
                if key in info["series"]
            }
            curves = {m: c for m, c in curves.items() if c}
            if curves:
                panels[SERIES_NAMES[key]] = curves
        if panels:
            paths[name] = plot_panels(
                panels, out / f"{name}.png",
                title=f"Long training: {WINDOW}-step moving averages, mean over seeds with 95% "
                "bands (training rollouts, mixing on)",
            )  # fmt: skip
    return paths
