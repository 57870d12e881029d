"""The demo's statistics and report: pure functions from per-seed results to tables and markdown.

Inputs are the plain dicts `ngrpo.study.demo.run_demo` collects: `base` (one evaluation, shared by
every seed) and `per_seed[method]` (one entry per seed, in seed order). Each evaluation is
`{"final": {split: summary}}` where a summary has `mean@n`, `mean@n_se` (sampling standard error)
and `pass@k` (`{"1": ..., "2": ..., str(n): ...}`).

- `summarize`: per method, mean and 95% Student-t interval over seeds of every metric; the base
  row's mean@n interval is its sampling interval `± 1.96 · mean@n_se` (one evaluation, no seeds).
- `compare`: effect sizes, paired by seed: every method vs the base (mean@n; the base's sampling
  error added in quadrature), every other method vs each of `BASELINES` (GRPO, STHT-style) and the
  two N-GRPO weightings against each other (mean@n and pass@n), with a verdict each
  (`ngrpo.study.stats.verdict`).
- `analyse`: everything above plus the hypotheses H1-H3 and the power of each comparison
  (`ngrpo.study.hypotheses`; their report sections in `ngrpo.study.hypotheses_report`), as
  `results.json` stores them;
- `render_report`: `report.md` (each hypothesis stated before its result, with a plain verdict);
  `write_plots`: the PNGs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ngrpo.study import hypotheses, hypotheses_report
from ngrpo.study.long_study import long_lines, long_plots, summarize_long
from ngrpo.study.recommendation import recommendation_lines
from ngrpo.study.settings import BASELINES, DIVERSITY_KEYS, EVAL_SPLITS, SPLIT_NAMES, DemoSettings
from ngrpo.study.stats import Z_975, mean_ci, paired_difference, verdict
from ngrpo.utils.environment import LIBRARIES

EXTRA_PAIRS = (("n-grpo-paper", "n-grpo"), ("n-grpo-sampled", "n-grpo"))  # compared when both ran


def _metric(evaluation: dict, split: str, metric: str) -> float:
    """`mean@n`, or `pass@K` for any K evaluated."""
    summary = evaluation["final"][split]
    if metric == "mean@n":
        return summary["mean@n"]
    return summary["pass@k"][metric.removeprefix("pass@")]


def summarize(base: dict, per_seed: dict[str, list[dict]]) -> dict:
    """Per method (and `base`): mean and 95% interval of mean@n, pass@k (each k), diversity and
    the training curve. Values are `(mean, low, high)` triples."""
    out: dict = {"base": {}}
    splits = [s for s in EVAL_SPLITS if s in base["final"]]
    for split in splits:
        summary = base["final"][split]
        mean, half = summary["mean@n"], Z_975 * summary["mean@n_se"]
        out["base"][split] = {
            "mean@n": (mean, mean - half, mean + half),
            "pass@k": {k: (v, v, v) for k, v in summary["pass@k"].items()},
        }
    for method, entries in per_seed.items():
        row: dict = {}
        for split in splits:
            ks = list(entries[0]["final"][split]["pass@k"])
            row[split] = {
                "mean@n": mean_ci([_metric(e, split, "mean@n") for e in entries]),
                "pass@k": {k: mean_ci([_metric(e, split, f"pass@{k}") for e in entries])
                           for k in ks},
            }  # fmt: skip
        row["diversity"] = {
            key: mean_ci([e["diversity"][key] for e in entries]) for key in entries[0]["diversity"]
        }
        steps = [s for s, _ in entries[0]["curve"]]
        row["curve"] = [
            (step, *mean_ci([e["curve"][i][1] for e in entries])) for i, step in enumerate(steps)
        ]
        out[method] = row
    return out


def comparison_pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """(a, b) pairs reported as `a − b`: each method vs base, others vs each baseline, extras."""
    pairs = [(m, "base") for m in methods]
    for b in BASELINES:
        if b in methods:
            pairs += [(m, b) for m in methods if m != b and (b, m) not in pairs]
    pairs += [(a, b) for a, b in EXTRA_PAIRS if a in methods and b in methods]
    return pairs


def compare(base: dict, per_seed: dict[str, list[dict]], n: int) -> list[dict]:
    """Paired per-seed differences (see the module docstring), one row per (pair, split, metric).

    Against the base only mean@n is compared: its sampling error is known (`mean@n_se`), pass@n's
    is not, and a single base evaluation has no seeds to estimate it from.
    """
    rows = []
    seeds = len(next(iter(per_seed.values())))
    for a, b in comparison_pairs(list(per_seed)):
        metrics = ["mean@n"] if b == "base" else ["mean@n", f"pass@{n}"]
        for metric in metrics:
            for split in [s for s in EVAL_SPLITS if s in base["final"]]:
                values_a = [_metric(e, split, metric) for e in per_seed[a]]
                if b == "base":
                    values_b = [_metric(base, split, metric)] * seeds
                    extra_se = base["final"][split]["mean@n_se"]
                else:
                    values_b, extra_se = [_metric(e, split, metric) for e in per_seed[b]], 0.0
                mean, low, high = paired_difference(values_a, values_b, extra_se)
                rows.append({
                    "a": a, "b": b, "split": split, "metric": metric, "difference": mean,
                    "ci": [low, high], "seeds": seeds, "verdict": verdict(low, high, seeds),
                    "within_noise": seeds < 2 or low <= 0.0 <= high,
                })  # fmt: skip
    return rows


def analyse(results: dict) -> dict:
    """The derived parts of `results.json`: summary, comparisons, H1-H3, power and the long
    setting (`ngrpo.study.long_study`). Without a finished 20-step seed (`per_seed` empty) only
    the long setting's."""
    base, per_seed, n = results["base"], results["per_seed"], results["settings"]["final_n"]
    long = results.get("long", {})
    long_summary = summarize_long(long)
    if long_summary and any("passk" in e for es in long.values() for e in es):
        long_summary["passk"] = hypotheses.passk(base, long)
    if not per_seed:
        return {"long_summary": long_summary}
    comparisons = compare(base, per_seed, n)
    return {
        "summary": summarize(base, per_seed),
        "comparisons": comparisons,
        "semantic": hypotheses.semantic(per_seed),
        "passk": hypotheses.passk(base, per_seed),
        "long_summary": long_summary,
        "ood": hypotheses.ood(comparisons),
        "power": hypotheses.power(base, per_seed, comparisons),
    }


def _labels(results: dict) -> dict[str, str]:
    methods = {**results.get("long_methods", {}), **results["methods"]}
    return {"base": "base", **{k: m["label"] for k, m in methods.items()}}


def write_plots(results: dict, out: Path) -> dict[str, str]:
    from ngrpo.study.plots import (
        plot_accuracy_over_steps,
        plot_diversity,
        plot_pass_at_k,
        plot_probe,
    )

    labels = _labels(results)
    paths = {
        name: Path(p) for name, p in long_plots(results.get("long_summary"), labels, out).items()
    }
    if "summary" not in results:  # no finished 20-step seed: the long setting's plots only
        return {name: str(p.name) for name, p in paths.items()}
    summary, methods = results["summary"], list(results["methods"])
    semantic = results.get("semantic") or {"means": {}}
    paths |= {
        "accuracy": plot_accuracy_over_steps(
            {labels[m]: summary[m]["curve"] for m in methods}, out / "accuracy_over_steps.png",
            title="ID accuracy during training (mean@4, mixing off)", ylabel="arith-id mean@4",
        ),
        "diversity": plot_diversity(
            {labels[m]: summary[m]["diversity"] for m in methods}, out / "diversity.png",
            title="Rollout diversity during training (mean over steps)",
        ),
    }  # fmt: skip
    if results.get("probe"):
        paths["probe"] = plot_probe(results["probe"], out / "probe.png")
    if semantic["means"]:
        paths["semantic"] = plot_diversity(
            {labels[m]: v for m, v in semantic["means"].items()}, out / "semantic_diversity.png",
            title="Semantic diversity of the training groups (H1; mean over steps, 95% CI)",
        )  # fmt: skip
    passk = results.get("passk")
    for split in EVAL_SPLITS:
        large = passk.get(split) if passk else None
        if large:  # pass@k up to k = passk_n on the large-k subset
            curves = {"base": large["base"]} | {
                labels[m]: v["curve"] for m, v in large["methods"].items()
            }
            title = (f"pass@k on {split} (first {results['settings']['passk_limit']} problems, "
                     f"{large['k_max']} samples each)")  # fmt: skip
        else:
            curves = {labels[m]: summary[m][split]["pass@k"] for m in ["base", *methods]}
            title = f"pass@k on {split} (after training)"
        paths[f"pass_at_k_{split}"] = plot_pass_at_k(
            {name: {int(k): v for k, v in curve.items()} for name, curve in curves.items()},
            out / f"pass_at_k_{split}.png", title=title,
        )  # fmt: skip
    return {name: str(Path(p).name) for name, p in paths.items()}


def _fmt(value: Sequence[float]) -> str:
    """A (mean, low, high) fraction as percent, with its interval when it has width."""
    mean, low, high = value
    if low == high:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def _splits(results: dict) -> list[str]:
    """The evaluated splits, in `EVAL_SPLITS` order."""
    return [s for s in EVAL_SPLITS if s in results["summary"]["base"]]


def main_table(results: dict) -> list[list[str]]:
    """Header + one row per method: mean@n and pass@n of every split (percent, 95% interval)."""
    summary, labels = results["summary"], _labels(results)
    n = str(results["settings"]["final_n"])
    splits = _splits(results)
    header = ["method"] + [f"{SPLIT_NAMES[s]} {m}@{n}" for s in splits for m in ("mean", "pass")]
    rows = [header]
    for method in ["base", *results["methods"]]:
        s = summary[method]
        rows.append([labels[method]] + [
            cell for split in splits
            for cell in (_fmt(s[split]["mean@n"]), _fmt(s[split]["pass@k"][n]))
        ])  # fmt: skip
    return rows


def _points(row: dict) -> str:
    low, high = row["ci"]
    if row["seeds"] < 2:
        return f"{100 * row['difference']:+.1f}"
    return f"{100 * row['difference']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def effect_table(results: dict) -> list[list[str]]:
    """Header + one row per compared pair: the paired difference (points, 95% CI) per column."""
    labels, n = _labels(results), results["settings"]["final_n"]
    columns = [(s, m) for m in ("mean@n", f"pass@{n}") for s in _splits(results)]
    cells: dict[tuple[str, str], dict] = {}
    for row in results["comparisons"]:
        cells.setdefault((row["a"], row["b"]), {})[(row["split"], row["metric"])] = row
    header = ["comparison"] + [f"{SPLIT_NAMES[s]} {m.replace('@n', f'@{n}')}" for s, m in columns]
    table = [header]
    for (a, b), by_column in cells.items():
        table.append([f"{labels[a]} − {labels[b]}"] + [
            _points(by_column[c]) if c in by_column else "–" for c in columns
        ])  # fmt: skip
    return table


def verdict_lines(results: dict) -> list[str]:
    """One plain-language line per compared pair (every metric it was compared on)."""
    labels, n = _labels(results), results["settings"]["final_n"]
    by_pair: dict[tuple[str, str], list[str]] = {}
    for row in results["comparisons"]:
        name = f"{SPLIT_NAMES[row['split']]} {row['metric'].replace('@n', f'@{n}')}"
        low, high = row["ci"]
        interval = "" if row["seeds"] < 2 else f" (95% CI {100 * low:+.1f} to {100 * high:+.1f})"
        by_pair.setdefault((row["a"], row["b"]), []).append(
            f"{name} {100 * row['difference']:+.1f} points{interval}: {row['verdict']}"
        )
    return [f"- **{labels[a]} vs {labels[b]}**: " + "; ".join(parts) + "."
            for (a, b), parts in by_pair.items()]  # fmt: skip


def reproduce_command(settings: dict) -> str:
    """The `ngrpo demo` command line that reruns these settings."""
    seeds = list(settings["seeds"])
    if seeds == list(range(len(seeds))):
        seeds_arg = str(len(seeds))
    else:
        seeds_arg = ",".join(map(str, seeds)) + ("," if len(seeds) == 1 else "")
    parts = ["ngrpo demo"]
    parts += ["--quick"] if settings.get("preset") == "quick" else []
    parts += ["--full"] if settings.get("full") else []
    parts += ["--seeds", seeds_arg]
    if settings["out"] != str(DemoSettings().out):
        parts += ["--out", settings["out"]]
    return " ".join(parts)


def _markdown(table: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(table[0]) + " |",
        "|" + "---|" * len(table[0]),
        *("| " + " | ".join(row) + " |" for row in table[1:]),
    ]


def _probe_cell(row: dict, key: str, digits: int) -> str:
    value = f"{row[key]:.{digits}f}"
    if f"{key}_ci" in row and row.get("seeds", 1) > 1:
        low, high = row[f"{key}_ci"]
        value += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return value


def _probe_lines(probe: dict) -> list[str]:
    seeds = probe["config"].get("seeds", [probe["config"]["seed"]])
    lines = [
        "## Semantic-consistency probe (base model)",
        "",
        "Every reasoning position's input is perturbed at a matched relative shift: `gaussian` "
        "adds isotropic noise of norm s‖e(y)‖, `neighbor` moves e(y) towards its nearest "
        "neighbour by the same distance. The `n-grpo` rows are N-GRPO's own mixing (greedy "
        "anchor, top-2) with the released weights (`release`: softmax over the candidates' "
        "probabilities) and the paper text's (`policy`: the probabilities renormalised); their "
        "shift is measured, not set, and each is followed by a `gaussian` run at its measured "
        "shift (`matched_to`). Answer agreement: the share of samples whose answer equals the "
        "unperturbed run's. "
        + (f"Mean [95% CI] over the {len(seeds)} probe seeds {seeds} (the seed changes the "
           "sampling; the problems are fixed)." if len(seeds) > 1 else f"One seed ({seeds[0]}).")
        ,
        "",
        "| perturbation | target shift | achieved shift | accuracy | answer agreement | "
        "distinct answers |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row in probe["rows"]:
        name = row["perturbation"]
        if row.get("matched_to"):
            name += f" (matched to {row['matched_to']})"
        target = "–" if row.get("target_shift") is None else f"{row['target_shift']:.3f}"
        lines.append(
            f"| {name} | {target} | {_probe_cell(row, 'achieved_shift', 3)} | "
            f"{_probe_cell(row, 'accuracy', 3)} | {_probe_cell(row, 'answer_agreement', 3)} | "
            f"{_probe_cell(row, 'distinct_answers', 2)} |"
        )
    return lines


def _base_lines(results: dict) -> list[str]:
    """The shipped base model these results start from, and the libraries to pin."""
    base, env = results.get("base_model"), results["environment"]
    pins = " ".join(f"{name}=={env[name]}" for name in LIBRARIES if env.get(name, "missing")
                    not in ("missing", None))  # fmt: skip
    lines = []
    if isinstance(base, dict):
        built = base.get("libraries") or {}
        lines += [
            f"Base model: the one shipped with ngrpo (`model.path: base`; model.safetensors "
            f"SHA-256 `{base['sha256']}`), built by `ngrpo build-base --seed {base['seed']}` "
            f"({base['sft_steps']} supervised steps) on {base.get('built') or 'an unrecorded date'}"
            f" with " + (", ".join(f"{k} {v}" for k, v in built.items()) or "unrecorded libraries")
            + f" on {base.get('cpu') or 'an unrecorded CPU'}.",
            "",
        ]  # fmt: skip
    return [*lines, f"Libraries these results were made with (pin them to reproduce): `pip install "
            f"{pins}` (Python {env['python']}; CPU {env.get('processor', 'unknown')}, "
            f"{env['cpus']} cores).", ""]  # fmt: skip


def pending_lines(results: dict) -> list[str]:
    """What is not finished yet, by stage, and the command that continues it."""
    pending = results.get("pending") or {}
    if not any(pending.values()):
        return []
    lines = [
        "## Pending (not finished yet)",
        "",
        "Only finished units are reported above; the 20-step comparison uses the leading seeds "
        "every method finished, the long setting each method's leading finished seeds. "
        f"Continue with `{reproduce_command(results['settings'])}` (finished units are re-used; "
        "`--stages` picks and orders the stages), or rewrite this report from the finished units "
        "with the same command plus `--report-only`.",
        "",
    ]
    for stage, names in pending.items():
        shown = ", ".join(names[:12]) + (f", … ({len(names) - 12} more)" if len(names) > 12 else "")
        lines.append(f"- **{stage}**: {len(names)} units missing ({shown}).")
    return [*lines, ""]


def _header(results: dict, labels: dict[str, str]) -> list[str]:
    settings, env, seeds = results["settings"], results["environment"], results["seeds"]
    timings = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in results["timings"].items())
    methods = {**results["methods"], **results.get("long_methods", {})}
    return [
        "# ngrpo demo: "
        + " vs ".join(labels[m] for m in (results["methods"] or results.get("long_methods", {})))
        + " on the embedded task",
        "",
        (f"Seeds {seeds}" if seeds else "Seeds: none of the 20-step comparison finished yet")
        + f" · {settings['steps']} training steps per run · final evaluation: "
        f"{settings['final_limit']} problems per split, n = {settings['final_n']}, τ = 0.6, "
        f"top-p = 0.95, mixing off; the base model is evaluated once (sampling seed "
        f"{results['base']['eval_seed']}), each trained policy with its training seed.",
        "",
        f"Wall time of the last invocation {results['wall_seconds']:.0f} s; compute per stage "
        f"(seconds of the finished units, each on one CPU thread, summed; wall time of each unit, "
        f"so contention on a shared machine inflates them: {timings}).",
        "",
        f"Reproduce: `{reproduce_command(settings)}`; every number below follows from the seeds.",
        "",
        f"Machine: {env['platform']} ({env['cpus']} CPUs, CUDA {env['cuda']}); Python "
        f"{env['python']}, torch {env['torch']}, transformers {env['transformers']}, accelerate "
        f"{env['accelerate']}.",
        "",
        *_base_lines(results),
        "Methods: "
        + "; ".join(
            f"{m['label']} = `{m['config']}`" + "".join(f" `{o}`" for o in m["overrides"])
            for m in methods.values()
        )
        + ".",
        "",
    ]


def render_report(results: dict) -> str:
    settings, labels = results["settings"], _labels(results)
    lines = _header(results, labels)
    long = long_lines(results.get("long_summary"), labels, settings) if settings.get(
        "long_steps") else []  # fmt: skip
    if "summary" not in results:  # no finished seed of the 20-step comparison
        return "\n".join([
            *lines, "No seed of the 20-step comparison has finished yet (see Pending).", "",
            *long, *recommendation_lines(results, labels), *pending_lines(results), "## Plots", "",
            *(f"![{name}]({path})" for name, path in results["plots"].items()), "",
        ])  # fmt: skip
    lines += [
        "## The hypotheses in one line each (details below)",
        "",
        *hypotheses_report.summary_lines(results, labels),
        "",
        "## Main table (percent; mean [95% CI] over seeds, the base's interval is its sampling "
        "error)",
        "",
        "Splits: ID = `arith-id` (2-4 events, as training), OOD = `arith-ood` (larger start "
        "values), long = `arith-long` (5-6 events, longer chains than training ever saw).",
        "",
        *_markdown(main_table(results)),
        "",
        "## Effect sizes (points; paired per-seed difference, mean [95% CI])",
        "",
        *_markdown(effect_table(results)),
        "",
        *verdict_lines(results),
        "",
        *hypotheses_report.h1_lines(results, labels),
        *hypotheses_report.h2_lines(results, labels),
        *hypotheses_report.h3_lines(results, labels),
        *hypotheses_report.power_lines(results, labels),
        *long,
        *recommendation_lines(results, labels),
        "## Rollout diversity during training (mean over steps)",
        "",
        "| method | " + " | ".join(k.split("/")[-1] for k in DIVERSITY_KEYS) + " |",
        "|---|" + "---|" * len(DIVERSITY_KEYS),
    ]
    for method in results["methods"]:
        div = results["summary"][method]["diversity"]
        lines.append(f"| {labels[method]} | " + " | ".join(
            f"{div[k][0]:.3f}" if k in div else "–" for k in DIVERSITY_KEYS) + " |")  # fmt: skip
    lines += [
        "",
        *pending_lines(results),
        "## Plots",
        "",
        *(f"![{name}]({path})" for name, path in results["plots"].items()),
        "",
        *(_probe_lines(results["probe"]) if results.get("probe") else []),
        "",
    ]
    return "\n".join(lines)
