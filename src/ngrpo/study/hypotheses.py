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
  intervals. The long-training setting repeats the comparison where it ran with `long_passk`
  (`ngrpo.study.long_study` holds the rest of that setting).
  Every difference row carries its `mde` (80% power, two-sided 5%).
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
    seeds = len(a)
    mde = minimal_detectable_difference(paired_sd(a, b, extra_se), seeds) if seeds >= 2 else None
    return {
        "difference": mean,
        "ci": [low, high],
        "seeds": seeds,
        "verdict": verdict(low, high, seeds),
        "mde": mde,  # the smallest true difference these seeds detect with 80% power
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
