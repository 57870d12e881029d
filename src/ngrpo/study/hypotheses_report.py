"""The report's sections for the hypotheses and the power analysis: markdown from the results that
`ngrpo.study.hypotheses` computed (each hypothesis stated before its result, then its verdict).

`ngrpo.study.report` places these sections; nothing here computes a statistic.
"""

from __future__ import annotations

from collections.abc import Sequence

from ngrpo.study.hypotheses import HYPOTHESES, h2_verdict


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
    long = results.get("long_summary") or {}
    if long.get("passk"):
        lines += [
            f"Large-k pass@k after the long training ({settings['long_steps']} steps; section "
            '"Long training and diagnosis"):',
            "",
            *_passk_tables(long["passk"], labels),
        ]
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
                f"{_pts(row)} points ({row['verdict']}; {row['seeds']} seeds"
                + ("" if row.get("mde") is None else f", MDE {100 * row['mde']:.1f} points")
                + ")."
            )
        lines.append("")
    return lines


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
