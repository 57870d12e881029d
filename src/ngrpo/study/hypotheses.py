"""The demo's three hypotheses and its power, as pure functions of the per-seed results.

Each hypothesis is stated before it is tested (`HYPOTHESES`); each test is a set of paired per-seed
differences (`ngrpo.study.stats.paired_difference`) with a verdict, and the hypothesis holds only
when every part of it does.

- **H1, semantic diversity** (the abstract's first claim, `semantic`): during training N-GRPO's
  groups hold more distinct canonical reasoning paths and fewer rephrase-only duplicate pairs
  than GRPO's (`ngrpo.evaluation.diagnostics`, means over training steps), while their rollouts
  stay as valid as GRPO's (rollout accuracy not worse) and more valid than STHT-style's.
- **H2, exploration at large k** (`passk`): on a fixed problem subset sampled `passk_n` times,
  N-GRPO's pass@k at the largest k exceeds GRPO's; the crossover k, where the base model's pass@k
  reaches a method's (`crossover`), is reported for every method, from the means and from the
  intervals. The long-training setting (`long`) repeats the comparison where GRPO's entropy and
  group variance have fallen.
- **H3, out-of-distribution generalisation** (`ood`): N-GRPO − GRPO mean@n > 0 on `arith-ood`
  (larger start values) and on `arith-long` (longer chains than training saw).

`power`: for every comparison of the main table, the minimal detectable difference
(`ngrpo.study.stats.minimal_detectable_difference`), and for N-GRPO − GRPO on ID mean@n the split of
the seed-to-seed variance into the evaluation's sampling part (known from each evaluation's
`mean@n_se`) and the rest (training), with the seeds needed for an MDE of `TARGET_MDE` at the
current and at larger evaluation sets, and what each costs in measured compute time.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from ngrpo.study.settings import BASELINES, N_GRPO, PASSK_SPLITS
from ngrpo.study.stats import (
    mean_ci,
    minimal_detectable_difference,
    paired_difference,
    paired_sd,
    seeds_for_mde,
    verdict,
)

TARGET_MDE = 0.03  # the power target of `--full` on ID mean@n (3 points)
OOD_SPLITS = ("arith-ood", "arith-long")
H1_KEYS = (
    "diversity/canonical_paths",
    "diversity/rephrase_pairs",
    "diversity/correct_paths",
    "diversity/distinct_answers",
    "reward/accuracy",
)

HYPOTHESES = {
    "H1": "During training, N-GRPO's groups hold more distinct canonical reasoning paths and "
    "fewer rephrase-only duplicate pairs than GRPO's, while their rollouts stay as valid as "
    "GRPO's (rollout accuracy not lower) and more valid than STHT-style's.",
    "H2": "At large k, N-GRPO explores more: its pass@k at the largest k exceeds GRPO's, on ID and "
    "OOD problems (also after the long training, where GRPO's entropy and group variance fall); "
    "the base model's pass@k overtakes RL-trained models only at large k (crossover k reported "
    "for every method).",
    "H3": "N-GRPO generalises better out of distribution: N-GRPO − GRPO mean@n > 0 on arith-ood "
    "(larger start values) and on arith-long (longer chains than training saw).",
}


def _difference(a: Sequence[float], b: Sequence[float], extra_se: float = 0.0) -> dict:
    """A paired difference as a row: mean, 95% CI, seeds and verdict."""
    mean, low, high = paired_difference(a, b, extra_se)
    return {
        "difference": mean,
        "ci": [low, high],
        "seeds": len(a),
        "verdict": verdict(low, high, len(a)),
    }


def _present(per_seed: dict) -> list[str]:
    return [m for m in N_GRPO if m in per_seed]


# ------------------------------------------------------------------------------------------ H1


def semantic(per_seed: dict[str, list[dict]]) -> dict:
    """H1: per method the mean [CI] of each `H1_KEYS` diagnostic, the paired differences of every
    N-GRPO method against each baseline and of the other N-GRPO variants against N-GRPO (release)
    (the sampled anchor is the control for mixing around the argmax), and a verdict per N-GRPO
    method."""
    keys = [k for k in H1_KEYS if all(k in e["diversity"] for es in per_seed.values() for e in es)]
    means = {
        m: {k: mean_ci([e["diversity"][k] for e in es]) for k in keys} for m, es in per_seed.items()
    }
    rows = []
    pairs = [(m, b) for m in _present(per_seed) for b in BASELINES if b in per_seed]
    pairs += [(m, "n-grpo") for m in _present(per_seed) if m != "n-grpo" and "n-grpo" in per_seed]
    for method, baseline in pairs:
        for key in keys:
            a = [e["diversity"][key] for e in per_seed[method]]
            b = [e["diversity"][key] for e in per_seed[baseline]]
            rows.append({"a": method, "b": baseline, "key": key, **_difference(a, b)})
    verdicts = {method: _h1_verdict(rows, method) for method in _present(per_seed)}
    return {"keys": keys, "means": means, "comparisons": rows, "verdicts": verdicts}


def _h1_verdict(rows: list[dict], method: str) -> dict:
    """Each part of H1 for one N-GRPO method: True / False (None when not measured)."""

    def row(baseline: str, key: str) -> dict | None:
        return next(
            (r for r in rows if (r["a"], r["b"], r["key"]) == (method, baseline, key)), None
        )

    def test(baseline: str, key: str, wanted: str) -> bool | None:
        found = row(baseline, key)
        if found is None or found["seeds"] < 2:
            return None
        low, high = found["ci"]
        return {"above": low > 0, "below": high < 0, "not below": high >= 0}[wanted]

    parts = {
        "more canonical paths than GRPO": test("grpo", "diversity/canonical_paths", "above"),
        "fewer rephrase-only pairs than GRPO": test("grpo", "diversity/rephrase_pairs", "below"),
        "rollouts as valid as GRPO's": test("grpo", "reward/accuracy", "not below"),
        "rollouts more valid than STHT-style's": test("stht", "reward/accuracy", "above"),
    }
    measured = [v for v in parts.values() if v is not None]
    holds = None if len(measured) < len(parts) else all(measured)
    return {"parts": parts, "holds": holds}


# ------------------------------------------------------------------------------------------ H2


def crossover(base: dict[str, float], runs: Sequence[dict[str, float]]) -> dict:
    """Where the base model's pass@k curve meets a method's (curves map str(k) -> pass@k; `runs`
    has one curve per seed): `reaches`, the smallest k with base pass@k >= the method's mean over
    seeds (a tie at 100% counts); `overtakes`, the smallest k with base > the method's mean;
    `ci`, the smallest k at which the method's paired advantage over the base is no longer
    significant (its 95% CI reaches 0; None with one seed). None: not within the evaluated k."""
    result: dict = {"reaches": None, "overtakes": None, "ci": None}
    for k in sorted(base, key=int):
        values = [run[k] for run in runs]
        mean = statistics.fmean(values)
        if result["reaches"] is None and base[k] >= mean:
            result["reaches"] = int(k)
        if result["overtakes"] is None and base[k] > mean:
            result["overtakes"] = int(k)
        low = paired_difference(values, [base[k]] * len(values))[1]
        if result["ci"] is None and len(values) > 1 and low <= 0:
            result["ci"] = int(k)
    return result


def passk(base: dict, per_seed: dict[str, list[dict]]) -> dict | None:
    """H2 on the runs that were evaluated at large k (their `passk`): per split, the base curve,
    every method's mean [CI] curve, its crossover with the base, and N-GRPO − GRPO at the largest
    k. None when nothing was evaluated at large k."""
    if "passk" not in base:
        return None
    out: dict = {}
    for split in PASSK_SPLITS:
        base_curve = base["passk"][split]["pass@k"]
        k_max = str(max(int(k) for k in base_curve))
        methods = {}
        for method, entries in per_seed.items():
            runs = [e["passk"][split]["pass@k"] for e in entries if "passk" in e]
            if not runs:
                continue
            methods[method] = {
                "curve": {k: mean_ci([r[k] for r in runs]) for k in base_curve},
                "crossover": crossover(base_curve, runs),
                "seeds": len(runs),
                "vs_base": _difference([r[k_max] for r in runs], [base_curve[k_max]] * len(runs)),
            }
        versus = {}
        for method in _present(methods):
            if "grpo" in methods:
                a = [e["passk"][split]["pass@k"][k_max] for e in per_seed[method] if "passk" in e]
                b = [e["passk"][split]["pass@k"][k_max] for e in per_seed["grpo"] if "passk" in e]
                versus[method] = _difference(a, b)
        out[split] = {
            "k_max": int(k_max),
            "base": base_curve,
            "methods": methods,
            "vs_grpo": versus,
        }
    return out


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else statistics.fmean(values)


def long_summary(base: dict, long: dict[str, list[dict]]) -> dict | None:
    """The long-training setting: per method the mean per-step series (entropy, group variance,
    ...), the final mean@n per split and, when evaluated, H2's large-k comparison."""
    if not any(long.values()):
        return None
    methods = {}
    for method, entries in long.items():
        series = {
            key: [
                _mean_or_none(step)
                for step in zip(*(e["series"][key] for e in entries), strict=True)
            ]
            for key in entries[0]["series"]
        }
        methods[method] = {
            "seeds": len(entries),
            "series": series,
            "final": {
                split: mean_ci([e["final"][split]["mean@n"] for e in entries])
                for split in entries[0]["final"]
            },
        }
    versus = {}
    for method in _present(long):
        if "grpo" in long:
            versus[method] = {
                split: _difference(
                    [e["final"][split]["mean@n"] for e in long[method]],
                    [e["final"][split]["mean@n"] for e in long["grpo"]],
                )
                for split in long["grpo"][0]["final"]
            }
    return {"methods": methods, "mean_vs_grpo": versus, "passk": passk(base, long)}


# ------------------------------------------------------------------------------------------ H3


def ood(comparisons: list[dict]) -> dict:
    """H3 per N-GRPO method: its mean@n difference from GRPO on each OOD split, and whether it
    is better with the CI excluding 0 on both."""
    out = {}
    for method in N_GRPO:
        rows = {
            r["split"]: r
            for r in comparisons
            if (r["a"], r["b"], r["metric"]) == (method, "grpo", "mean@n")
            and r["split"] in OOD_SPLITS
        }
        if len(rows) == len(OOD_SPLITS):
            holds = (
                None
                if any(r["seeds"] < 2 for r in rows.values())
                else all(r["ci"][0] > 0 for r in rows.values())
            )
            out[method] = {"rows": rows, "holds": holds}
    return out


# --------------------------------------------------------------------------------------- power


def power(base: dict, per_seed: dict[str, list[dict]], comparisons: list[dict]) -> dict | None:
    """MDE of every mean@n comparison, and the variance components of N-GRPO − GRPO on ID
    mean@n (module docstring). None with fewer than 2 seeds."""
    seeds = len(next(iter(per_seed.values())))
    if seeds < 2:
        return None
    rows = []
    for r in comparisons:
        if r["metric"] != "mean@n":
            continue
        a = [e["final"][r["split"]]["mean@n"] for e in per_seed[r["a"]]]
        if r["b"] == "base":
            b, extra = (
                [base["final"][r["split"]]["mean@n"]] * seeds,
                base["final"][r["split"]]["mean@n_se"],
            )
        else:
            b, extra = [e["final"][r["split"]]["mean@n"] for e in per_seed[r["b"]]], 0.0
        sd = paired_sd(a, b, extra)
        rows.append(
            {
                "a": r["a"],
                "b": r["b"],
                "split": r["split"],
                "sd": sd,
                "mde": minimal_detectable_difference(sd, seeds),
            }
        )
    return {
        "seeds": seeds,
        "target": TARGET_MDE,
        "rows": rows,
        "components": _components(per_seed),
    }


def _components(per_seed: dict[str, list[dict]]) -> dict | None:
    """Seed-to-seed variance of N-GRPO − GRPO on ID mean@n: sampling part (the two evaluations'
    squared standard errors) and the rest; seeds needed for TARGET_MDE with 1, 2 and 4 times the
    evaluation problems, and the compute each would take (measured seconds per run)."""
    if "grpo" not in per_seed or "n-grpo" not in per_seed:
        return None
    a, b = per_seed["n-grpo"], per_seed["grpo"]
    diffs = [
        x["final"]["arith-id"]["mean@n"] - y["final"]["arith-id"]["mean@n"]
        for x, y in zip(a, b, strict=True)
    ]
    total = statistics.variance(diffs)
    sampling = statistics.fmean(
        x["final"]["arith-id"]["mean@n_se"] ** 2 + y["final"]["arith-id"]["mean@n_se"] ** 2
        for x, y in zip(a, b, strict=True)
    )
    training = max(0.0, total - sampling)
    # measured seconds per run; the evaluation's from runs without the large-k evaluation
    entries = [e for es in per_seed.values() for e in es if "seconds" in e]
    plain = [e for e in entries if "passk" not in e] or entries
    train_s = statistics.fmean(e["seconds"]["training"] for e in entries) if entries else None
    eval_s = statistics.fmean(e["seconds"]["evaluation"] for e in plain) if entries else None
    options = []
    for scale in (1, 2, 4):
        needed = seeds_for_mde(math.sqrt(training + sampling / scale), TARGET_MDE)
        cost = None
        if needed is not None and train_s is not None:
            cost = needed * len(per_seed) * (train_s + eval_s * scale)
        options.append({"problems_scale": scale, "seeds": needed, "compute_s": cost})
    return {
        "sd_total": math.sqrt(total),
        "sd_sampling": math.sqrt(sampling),
        "sd_training": math.sqrt(training),
        "options": options,
    }


# ------------------------------------------------------------------------------- report sections


def _pts(row: dict, scale: float = 100.0, digits: int = 1) -> str:
    """A difference row as `+d [lo, hi]` (points by default)."""
    d, (low, high) = row["difference"] * scale, row["ci"]
    if row["seeds"] < 2:
        return f"{d:+.{digits}f}"
    return f"{d:+.{digits}f} [{low * scale:+.{digits}f}, {high * scale:+.{digits}f}]"


def _triple(value: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    mean, low, high = (v * scale for v in value)
    if low == high:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _holds(value: bool | None) -> str:
    return {True: "**supported**", False: "**not supported**", None: "**undecided** (one seed)"}[
        value
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


H1_NAMES = {
    "diversity/canonical_paths": "canonical paths / group",
    "diversity/rephrase_pairs": "rephrase-only pairs",
    "diversity/correct_paths": "correct canonical paths / group",
    "diversity/distinct_answers": "distinct answers / group",
    "reward/accuracy": "rollout accuracy",
}


def h1_lines(results: dict, labels: dict[str, str]) -> list[str]:
    sem = results.get("semantic")
    lines = [
        "## H1: semantic diversity of the training groups",
        "",
        f"**Hypothesis.** {HYPOTHESES['H1']}",
        "",
    ]
    if not sem or not sem["keys"]:
        return [*lines, "Not measured (no canonical form for this task).", ""]
    keys = sem["keys"]
    lines += [
        "Measured on every training step's groups (8 responses per prompt, mixing on as in "
        "training), averaged over the steps of a run; mean [95% CI] over seeds. A reasoning path "
        "is the text between `<think>` and `</think>` in canonical form (number words as digits, "
        "one verb per kind, one connective: `ngrpo.tasks.arith.canonicalize`); a rephrase-only "
        "pair differs in words but not in canonical form. On this task the intended solution of a "
        "problem is one line of arithmetic per event, so most distinct paths are distinct "
        "mistakes; a second correct path in a group is a valid reordering of events that commute "
        "(`4 + 9 = 13 . so 13 + 3 = 16` for +3 then +9) or a right answer from a flawed chain "
        "(`2 + 7 = 9 .` for +7, +8, −8, stopping early).",
        "",
        *_table(
            ["method", *(H1_NAMES[k] for k in keys)],
            [
                [labels[m], *(_triple(v[k], digits=3) for k in keys)]
                for m, v in sem["means"].items()
            ],
        ),
        "",
        "Paired differences (mean [95% CI] over seeds):",
        "",
    ]
    pairs = list(dict.fromkeys((r["a"], r["b"]) for r in sem["comparisons"]))
    cells = {(r["a"], r["b"], r["key"]): r for r in sem["comparisons"]}
    lines += _table(
        ["comparison", *(H1_NAMES[k] for k in keys)],
        [
            [f"{labels[a]} − {labels[b]}", *(_pts(cells[(a, b, k)], 1.0, 3) for k in keys)]
            for a, b in pairs
        ],
    )
    lines.append("")
    for method, result in sem["verdicts"].items():
        parts = "; ".join(
            f"{name}: {'yes' if ok else 'no' if ok is not None else 'not measured'}"
            for name, ok in result["parts"].items()
        )
        lines.append(f"- **{labels[method]}**: {parts} → H1 {_holds(result['holds'])}.")
    return [*lines, ""]


def h2_lines(results: dict, labels: dict[str, str]) -> list[str]:
    lines = ["## H2: exploration at large k", "", f"**Hypothesis.** {HYPOTHESES['H2']}", ""]
    passk_results = results.get("passk")
    if not passk_results:
        return [
            *lines,
            "Not measured in this run (`ngrpo demo --full` evaluates pass@k up to k = 256).",
            "",
        ]
    settings = results["settings"]
    lines += [
        f"The first {settings['passk_limit']} problems of each split, {settings['passk_n']} "
        "samples each (τ = 0.6, top-p = 0.95, mixing off), unbiased pass@k (Chen et al. 2021); "
        f"methods on their first {settings['passk_seeds']} seeds (mean [95% CI]), the base once. "
        "Crossover: the smallest k where the base's pass@k reaches the method's mean (a tie at "
        "100% counts) and where it overtakes it (strictly above), and the smallest k from which "
        "the method's paired advantage over the base stops excluding 0 (95% CI over seeds); "
        "`none` = not within the evaluated k.",
        "",
    ]
    lines += _passk_tables(passk_results, labels)
    long = results.get("long_summary")
    if long:
        lines += _long_lines(long, labels, settings)
    return lines


def _passk_tables(passk_results: dict, labels: dict[str, str]) -> list[str]:
    lines = []
    for split, info in passk_results.items():
        ks = [
            k
            for k in sorted(info["base"], key=int)
            if int(k) in (1, 4, 16, 64, 256) or int(k) == info["k_max"]
        ]
        rows = [["base", *(f"{100 * info['base'][k]:.1f}" for k in ks), "–", "–", "–", "–"]]
        for method, m in info["methods"].items():
            cross = m["crossover"]
            rows.append(
                [
                    labels[method],
                    *(_triple(m["curve"][k], 100, 1) for k in ks),
                    str(cross["reaches"] or "none"),
                    str(cross["overtakes"] or "none"),
                    "–" if m["seeds"] < 2 else str(cross["ci"] or "none"),
                    _pts(m["vs_base"]),
                ]
            )
        lines += [
            f"**{split}** (pass@k in percent):",
            "",
            *_table(
                [
                    "method",
                    *(f"pass@{k}" for k in ks),
                    "base reaches at k",
                    "base overtakes at k",
                    "advantage not significant from k",
                    f"− base at k = {info['k_max']} (points)",
                ],
                rows,
            ),
            "",
        ]
        for method, row in info["vs_grpo"].items():
            lines.append(
                f"- {labels[method]} − GRPO, pass@{info['k_max']} on {split}: "
                f"{_pts(row)} points ({row['verdict']})."
            )
        lines.append("")
    return lines


def _long_lines(long: dict, labels: dict[str, str], settings: dict) -> list[str]:
    lines = [
        f"**Long training** ({settings['long_steps']} steps, the first {settings['long_seeds']} "
        "seeds): per-step means over seeds at the start (first 10 steps) and the end (last 10 "
        "steps) of training, and the final mean@n (percent).",
        "",
    ]
    names = {
        "actor/entropy": "entropy",
        "reward/std_in_group": "reward std in group",
        "diversity/zero_adv_frac": "zero-advantage groups",
        "diversity/canonical_paths": "canonical paths",
        "reward/accuracy": "rollout acc.",
    }
    series_keys = [k for k in names if k in next(iter(long["methods"].values()))["series"]]
    splits = list(next(iter(long["methods"].values()))["final"])
    rows = []
    for method, info in long["methods"].items():
        cells = []
        for key in series_keys:
            values = [v for v in info["series"][key] if v is not None]
            cells.append(
                f"{statistics.fmean(values[:10]):.3f} → {statistics.fmean(values[-10:]):.3f}"
                if values
                else "–"
            )
        rows.append([labels[method], *cells, *(_triple(info["final"][s], 100, 1) for s in splits)])
    lines += _table(
        ["method", *(names[k] for k in series_keys), *(f"{s} mean@n" for s in splits)], rows
    )
    lines.append("")
    for method, by_split in long["mean_vs_grpo"].items():
        parts = "; ".join(f"{s} {_pts(r)} ({r['verdict']})" for s, r in by_split.items())
        lines.append(
            f"- {labels[method]} − GRPO after {settings['long_steps']} steps, mean@n "
            f"points: {parts}."
        )
    lines.append("")
    if long.get("passk"):
        lines += [
            "Large-k pass@k after the long training:",
            "",
            *_passk_tables(long["passk"], labels),
        ]
    return lines


def h2_verdict(results: dict) -> dict[str, bool | None]:
    """Per N-GRPO method: H2 holds when its pass@k_max beats GRPO's with the CI excluding 0 on
    every large-k split (and after the long training, where it ran)."""
    out: dict[str, bool | None] = {}
    sources = [results.get("passk"), (results.get("long_summary") or {}).get("passk")]
    for method in N_GRPO:
        rows = [
            info["vs_grpo"][method]
            for source in sources
            if source
            for info in source.values()
            if method in info["vs_grpo"]
        ]
        if rows:
            out[method] = (
                None if any(r["seeds"] < 2 for r in rows) else all(r["ci"][0] > 0 for r in rows)
            )
    return out


def h3_lines(results: dict, labels: dict[str, str]) -> list[str]:
    lines = [
        "## H3: out-of-distribution generalisation",
        "",
        f"**Hypothesis.** {HYPOTHESES['H3']}",
        "",
    ]
    found = results.get("ood") or {}
    if not found:
        return [*lines, "Not measured (needs GRPO and an N-GRPO method on both OOD splits).", ""]
    n = results["settings"]["final_n"]
    for method, info in found.items():
        parts = "; ".join(
            f"{s} mean@{n} {_pts(r)} points ({r['verdict']})" for s, r in info["rows"].items()
        )
        lines.append(f"- **{labels[method]} − GRPO**: {parts} → H3 {_holds(info['holds'])}.")
    return [*lines, ""]


def power_lines(results: dict, labels: dict[str, str]) -> list[str]:
    found = results.get("power")
    lines = ["## Power", ""]
    if not found:
        return [*lines, "One seed: no seed-to-seed spread to size anything from.", ""]
    seeds, n = found["seeds"], results["settings"]["final_n"]
    lines += [
        f"The smallest true difference each comparison detects with 80% power at two-sided "
        f"α = 0.05 from these {seeds} seeds: MDE = (t(0.975, S−1) + t(0.80, S−1)) · sd / √S, sd "
        "the seed-to-seed standard deviation of the paired differences (points of mean@"
        f"{n}; against the base its sampling error added). Target of `--full`: "
        f"{100 * found['target']:.0f} points on ID mean@{n} for N-GRPO − GRPO.",
        "",
    ]
    splits = list(dict.fromkeys(r["split"] for r in found["rows"]))
    cells = {(r["a"], r["b"], r["split"]): r for r in found["rows"]}
    pairs = list(dict.fromkeys((r["a"], r["b"]) for r in found["rows"]))
    lines += _table(
        ["comparison", *(f"MDE {s}" for s in splits), "sd ID"],
        [
            [
                f"{labels[a]} − {labels[b]}",
                *(f"{100 * cells[(a, b, s)]['mde']:.1f}" for s in splits),
                f"{100 * cells[(a, b, 'arith-id')]['sd']:.1f}",
            ]
            for a, b in pairs
        ],
    )
    comp = found.get("components")
    if comp:
        lines += [
            "",
            f"Where the spread of N-GRPO (release) − GRPO on ID mean@{n} comes from: sd "
            f"{100 * comp['sd_total']:.2f} points in all, of which the two evaluations' sampling "
            f"(known from their standard errors) {100 * comp['sd_sampling']:.2f} and training "
            f"(the rest) {100 * comp['sd_training']:.2f}. Seeds needed for an MDE of "
            f"{100 * found['target']:.0f} points, and the compute that would take (measured "
            "seconds per run × runs):",
            "",
            *_table(
                ["evaluation problems", "seeds needed", "compute"],
                [
                    [
                        f"{o['problems_scale']} × {results['settings']['final_limit']}",
                        str(o["seeds"] or "> 1000"),
                        "–" if o["compute_s"] is None else f"{o['compute_s'] / 3600:.1f} h",
                    ]
                    for o in comp["options"]
                ],
            ),
        ]
        reached = cells.get(("n-grpo", "grpo", "arith-id"))
        if reached:
            met = reached["mde"] <= found["target"]
            lines += [
                "",
                f"Reached: MDE {100 * reached['mde']:.1f} points on ID mean@{n} for "
                f"N-GRPO (release) − GRPO with {seeds} seeds: the target is "
                f"{'met' if met else '**not met**'}.",
            ]
    return [*lines, ""]


def summary_lines(results: dict, labels: dict[str, str]) -> list[str]:
    """One line per hypothesis with its verdict per N-GRPO method (the report's opening)."""
    sem = (results.get("semantic") or {}).get("verdicts", {})
    h2 = h2_verdict(results)
    h3 = {m: v["holds"] for m, v in (results.get("ood") or {}).items()}
    lines = []
    for name, verdicts in (("H1", sem), ("H2", h2), ("H3", h3)):
        found = {m: (v["holds"] if isinstance(v, dict) else v) for m, v in verdicts.items()}
        if not found:
            lines.append(f"- **{name}**: not measured in this run.")
            continue
        parts = ", ".join(f"{labels[m]} {_holds(v)}" for m, v in found.items())
        lines.append(f"- **{name}**: {parts}.")
    return lines
