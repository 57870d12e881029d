"""The report's recommendation: which N-GRPO settings to use on the embedded task and for how long,
read off the comparisons by fixed rules, so it is regenerated with the numbers (pure functions).

Rules (20-step table, mean@n paired with GRPO by seed, 95% CIs):
- a method is **worse** on a split when its CI against GRPO lies below 0, **better** when above;
- the methods a user can take are those worse on no split, listed best ID difference first; the
  methods to **avoid** are worse on some split;
- at large k (pass@k_max against GRPO) and after the long training (the gap and the diagnosis
  verdicts of `ngrpo.study.long_study`) the verdicts are quoted, not turned into advice beyond
  "a switch that closes the gap is what to use when training longer".

The closing paragraph about real models is a fixed expectation, marked as such: nothing in this
study measures it.
"""

from __future__ import annotations

from ngrpo.study.settings import N_GRPO, SPLIT_NAMES

EXPECTATION = (
    "*Expectation, not measured here:* on a real model a token's nearest neighbours are much less "
    "often pure surface variants than on this task (where ~0.9 of the mixed neighbours are "
    "synonyms by construction), so each mixed input moves the model further; we would expect a "
    "cost of constant mixing in long training to carry over or grow, and the short-budget parity "
    "not necessarily to carry over. The choice between the release and the paper-text weights "
    "(how much weight the neighbour gets) should carry over in direction, not in size."
)


def _pts(row: dict) -> str:
    low, high = (100 * v for v in row["ci"])
    return f"{100 * row['difference']:+.1f} [{low:+.1f}, {high:+.1f}]"


def short_budget(comparisons: list[dict]) -> dict[str, dict]:
    """Per N-GRPO method: its mean@n rows against GRPO by split, and `use` (worse on no split)."""
    out: dict[str, dict] = {}
    for row in comparisons:
        if row["b"] != "grpo" or row["metric"] != "mean@n" or row["a"] not in N_GRPO:
            continue
        out.setdefault(row["a"], {"rows": {}})["rows"][row["split"]] = row
    for info in out.values():
        info["worse"] = [s for s, r in info["rows"].items() if r["seeds"] >= 2 and r["ci"][1] < 0]
        info["better"] = [s for s, r in info["rows"].items() if r["seeds"] >= 2 and r["ci"][0] > 0]
        info["use"] = not info["worse"]
    return out


def _short_budget_line(methods: dict[str, dict], labels: dict[str, str], steps: int, n: int) -> str:
    seeds = next(iter(next(iter(methods.values()))["rows"].values()))["seeds"]
    use = sorted((m for m, i in methods.items() if i["use"]),
                 key=lambda m: -methods[m]["rows"]["arith-id"]["difference"])  # fmt: skip
    parts = [f"- **Short budget ({steps} steps, {seeds} seeds).**"]
    if use:
        listed = ", ".join(
            f"{labels[m]} (ID mean@{n} − GRPO {_pts(methods[m]['rows']['arith-id'])})" for m in use
        )
        parts.append(f"Worse than GRPO on no split, best ID difference first: {listed}.")
    else:
        parts.append("Every N-GRPO setting is worse than GRPO on some split.")
    avoid = [
        f"{labels[m]} (worse on "
        + ", ".join(f"{SPLIT_NAMES[s]} {_pts(info['rows'][s])}" for s in info["worse"])
        + ")"
        for m, info in methods.items()
        if not info["use"]
    ]
    if avoid:
        parts.append(f"Avoid {', '.join(avoid)}.")
    better = [
        f"{labels[m]} on {', '.join(SPLIT_NAMES[s] for s in info['better'])}"
        for m, info in methods.items()
        if info["better"]
    ]
    if better:
        parts.append(f"Better than GRPO beyond noise: {'; '.join(better)}.")
    else:
        parts.append(
            "None is better than GRPO beyond noise on any split: on this task N-GRPO buys no "
            "accuracy at this budget."
        )
    return " ".join(parts)


def recommendation_lines(results: dict, labels: dict[str, str]) -> list[str]:
    """The report section "Recommendation" (module docstring)."""
    lines = ["## Recommendation (read off the numbers above by fixed rules)", ""]
    n = results["settings"]["final_n"]
    methods = short_budget(results.get("comparisons") or [])
    if methods:
        lines.append(_short_budget_line(methods, labels, results["settings"]["steps"], n))
    else:
        lines.append("- **Short budget**: the 20-step comparison has not finished (see Pending).")
    passk = results.get("passk") or {}
    found = [
        f"{labels[m]} {SPLIT_NAMES[split]} {_pts(row)} ({row['verdict']}, {row['seeds']} seeds"
        + ("" if row.get("mde") is None else f", MDE {100 * row['mde']:.1f}")
        + ")"
        for split, info in passk.items()
        for m, row in info["vs_grpo"].items()
        if m in N_GRPO and row["seeds"] >= 2
    ]
    if found:
        k = next(iter(passk.values()))["k_max"]
        lines.append(f"- **Many samples (pass@{k} − GRPO, points).** " + "; ".join(found) + ".")
    long = (results.get("long_summary") or {}).get("diagnosis") or {}
    gap = long.get("gap")
    if gap is not None:
        steps = results["settings"].get("long_steps")
        closing = [m for m, v in long["switches"].items() if v["verdict"] == "closes the gap"]
        line = (
            f"- **Long training ({steps} steps, {gap['seeds']} seeds).** N-GRPO (release) − GRPO "
            f"on ID mean@{n}: {_pts(gap)} ({gap['verdict']}"
            + ("" if gap.get("mde") is None else f"; MDE {100 * gap['mde']:.1f}")
            + ")."
        )
        if closing:
            line += " When training this long, use " + ", ".join(labels[m] for m in closing) + "."
        elif gap["ci"][1] < 0:
            line += (
                " Constant mixing costs accuracy when trained this long and no switch tested so "
                "far closes the gap: prefer GRPO, or N-GRPO only for the short budget."
            )
        else:
            line += (
                " No difference beyond noise: expect N-GRPO with constant mixing to be no better "
                "than GRPO when trained this long (a cost smaller than the MDE is not ruled out)."
            )
        lines.append(line)
    return [*lines, "", EXPECTATION, ""]
