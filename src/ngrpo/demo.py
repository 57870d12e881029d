"""The main job: GRPO vs N-GRPO vs STHT-style noise on the embedded task, in miniature.

`run_demo(settings)` builds (or re-uses) the base model, then for every seed trains the three
methods with identical budgets and seeds (the shipped `tiny_grpo`, `tiny_ngrpo`, `tiny_stht`
configs, which differ only in their `exploration` section), evaluates the base model and every
trained policy on `arith-id` and `arith-ood` with mixing off (mean@n and pass@k up to n), runs the
semantic-consistency probe on the base model, and writes `report.md`, `results.json` and PNG plots.

Statistics: with several seeds every number is a mean over seeds with a 95% confidence interval
(Student t, seeds as the unit). A difference between two methods is called "within noise" when
the 95% interval of the per-seed paired difference contains 0 (one seed: always, there is no
spread to judge it by).
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ngrpo.errors import NgrpoError

log = logging.getLogger(__name__)

# name shown -> (shipped config, exploration strategy)
METHODS: dict[str, tuple[str, str]] = {
    "grpo": ("tiny_grpo", "none"),
    "n-grpo": ("tiny_ngrpo", "neighbor"),
    "stht": ("tiny_stht", "gaussian"),
}
EVAL_SPLITS = ("arith-id", "arith-ood")
# Two-sided 95% Student t critical values by degrees of freedom (1..30; normal beyond).
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
Progress = Callable[[str, int, int, str], None]


@dataclass(frozen=True)
class DemoSettings:
    """Budget of a demo run (`quick` shrinks everything to a smoke run of a few minutes)."""

    out: Path = Path("ngrpo-demo")
    seeds: int = 1
    steps: int = 20  # the tiny configs' own length
    eval_every: int = 10
    curve_limit: int = 100  # ID problems evaluated during training (n = 4)
    final_limit: int = 100  # problems per split in the final evaluation
    final_n: int = 16
    probe_problems: int = 32
    probe_n: int = 8
    base_seed: int = 0

    @classmethod
    def quick(cls, out: Path, seeds: int = 1) -> DemoSettings:
        return cls(
            out=out, seeds=seeds, steps=4, eval_every=2, curve_limit=20, final_limit=20,
            final_n=4, probe_problems=8, probe_n=2,
        )  # fmt: skip


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval over seeds (zero width for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    df = len(values) - 1
    t = T_975[df - 1] if df <= len(T_975) else 1.96
    half = t * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def _train_one(method: str, seed: int, settings: DemoSettings, progress: Progress | None) -> Path:
    from ngrpo.config import load_config
    from ngrpo.trainer import train

    config_name, _ = METHODS[method]
    run_dir = settings.out / "runs" / f"{method}-seed{seed}"
    overrides = [
        f"seed={seed}", f"output_dir={run_dir}", f"train.steps={settings.steps}",
        f"eval.every={settings.eval_every}", "eval.at_start=true",
        f"eval.limit={settings.curve_limit}", "data.eval_sets=arith-id", "eval.n=4",
        "eval.best_metric=null", f"logging.save_every={settings.steps}", "logging.keep_last=1",
    ]  # fmt: skip
    cfg = load_config(config_name, overrides)

    def on_step(kind: str, step: int, total: int, metrics: dict) -> None:
        if progress is not None and kind == "train":
            progress(f"train {method} (seed {seed})", step, total,
                     f"reward {metrics.get('reward/mean', 0):.2f}")  # fmt: skip

    if (run_dir / "metrics.jsonl").exists():
        import shutil

        shutil.rmtree(run_dir)  # a demo run is cheap to redo; never mix two runs' metrics
    return train(cfg, progress=on_step)


def _final_eval(model_dir: Path, settings: DemoSettings, seed: int, pool) -> dict:
    from ngrpo.data import load_benchmark
    from ngrpo.evaluation import evaluate
    from ngrpo.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_dir)
    out = {}
    for split in EVAL_SPLITS:
        examples = load_benchmark(split, limit=settings.final_limit).examples
        result = evaluate(
            model, tokenizer, examples, n=settings.final_n, temperature=0.6, top_p=0.95,
            max_new_tokens=64, seed=seed, pool=pool,
        )  # fmt: skip
        out[split] = result.summary
    return out


def _curve(run_dir: Path) -> list[tuple[int, float]]:
    from ngrpo.trainer import read_metrics

    return [
        (row["step"], row["eval/arith-id/mean@n"])
        for row in read_metrics(run_dir)
        if row.get("type") == "eval"
    ]


DIVERSITY_KEYS = (
    "diversity/distinct_answers", "diversity/distinct_2", "diversity/pairwise_edit",
    "diversity/zero_adv_frac", "rollout/mixed_frac", "rollout/embed_shift",
)  # fmt: skip


def _diversity(run_dir: Path) -> dict[str, float]:
    """Mean over training steps of each rollout diagnostic."""
    from ngrpo.trainer import read_metrics

    rows = [r for r in read_metrics(run_dir) if r.get("type") == "train"]
    return {k: statistics.fmean(r[k] for r in rows) for k in DIVERSITY_KEYS if k in rows[0]}


def run_demo(settings: DemoSettings, progress: Progress | None = None) -> dict:
    """Run the whole comparison; returns the results written to `results.json`."""
    import torch

    from ngrpo.base_model import ensure_base_model
    from ngrpo.models import load_model_and_tokenizer
    from ngrpo.probe import run_probe
    from ngrpo.rewards import GradingPool
    from ngrpo.tasks import generate
    from ngrpo.trainer import checkpoint_dirs

    if settings.seeds < 1:
        raise NgrpoError(f"--seeds must be >= 1, got {settings.seeds}")
    try:
        settings.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NgrpoError(f"cannot create {str(settings.out)!r}: {err.strerror}") from err
    started = time.time()

    def build_progress(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(stage, done, total, "")

    base_dir = ensure_base_model(seed=settings.base_seed, progress=build_progress)
    seeds = list(range(settings.seeds))
    per_seed: dict[str, list[dict]] = {name: [] for name in ["base", *METHODS]}
    with GradingPool() as pool:
        for seed in seeds:
            if progress is not None:
                progress("final evaluation", 0, 1, f"base (seed {seed})")
            per_seed["base"].append({"final": _final_eval(base_dir, settings, seed, pool)})
            for method in METHODS:
                run_dir = _train_one(method, seed, settings, progress)
                if progress is not None:
                    progress("final evaluation", 0, 1, f"{method} (seed {seed})")
                final = _final_eval(checkpoint_dirs(run_dir)[-1], settings, seed, pool)
                per_seed[method].append({
                    "final": final, "curve": _curve(run_dir), "diversity": _diversity(run_dir),
                    "run_dir": str(run_dir),
                })  # fmt: skip
        model, tokenizer = load_model_and_tokenizer(base_dir)
        probe = run_probe(
            model, tokenizer, generate("arith-id", settings.probe_problems, seed=1),
            n=settings.probe_n, seed=0, pool=pool,
            progress=None if progress is None else (lambda s, d, t: progress("probe", d, t, s)),
        )  # fmt: skip
    results = {
        "settings": {**asdict(settings), "out": str(settings.out)},
        "seeds": seeds,
        "methods": {name: cfg for name, (cfg, _) in METHODS.items()},
        "per_seed": per_seed,
        "summary": summarize(per_seed),
        "probe": probe,
        "environment": environment(),
        "wall_seconds": round(time.time() - started, 1),
        "base_model": str(base_dir),
    }
    results["comparisons"] = compare(per_seed)
    (settings.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    results["plots"] = write_plots(results, settings.out)
    (settings.out / "report.md").write_text(render_report(results))
    log.info("demo finished in %.0f s (torch %s)", results["wall_seconds"], torch.__version__)
    return results


def _metric(entry: dict, split: str, key: str, k: str | None = None) -> float:
    summary = entry["final"][split]
    return summary["pass@k"][k] if key == "pass@k" else summary[key]


def summarize(per_seed: dict[str, list[dict]]) -> dict:
    """Per method: mean and 95% CI over seeds of mean@n, pass@k (each k) and diversity."""
    out = {}
    for method, entries in per_seed.items():
        row: dict = {}
        for split in EVAL_SPLITS:
            ks = list(entries[0]["final"][split]["pass@k"])
            row[split] = {
                "mean@n": mean_ci([_metric(e, split, "mean@n") for e in entries]),
                "pass@k": {k: mean_ci([_metric(e, split, "pass@k", k) for e in entries])
                           for k in ks},
            }  # fmt: skip
        if "diversity" in entries[0]:
            row["diversity"] = {
                key: mean_ci([e["diversity"][key] for e in entries])
                for key in entries[0]["diversity"]
            }
            steps = [s for s, _ in entries[0]["curve"]]
            row["curve"] = [
                (step, *mean_ci([e["curve"][i][1] for e in entries]))
                for i, step in enumerate(steps)
            ]
        out[method] = row
    return out


def compare(per_seed: dict[str, list[dict]]) -> list[dict]:
    """Paired (per-seed) differences of ID / OOD mean@n: each method vs base, N-GRPO vs others."""
    pairs = [(m, "base") for m in METHODS] + [("n-grpo", "grpo"), ("n-grpo", "stht")]
    rows = []
    for a, b in pairs:
        for split in EVAL_SPLITS:
            diffs = [
                _metric(x, split, "mean@n") - _metric(y, split, "mean@n")
                for x, y in zip(per_seed[a], per_seed[b], strict=True)
            ]
            mean, low, high = mean_ci(diffs)
            rows.append({
                "a": a, "b": b, "split": split, "metric": "mean@n", "difference": mean,
                "ci": [low, high], "seeds": len(diffs),
                "within_noise": len(diffs) < 2 or low <= 0.0 <= high,
            })  # fmt: skip
    return rows


def environment() -> dict:
    import accelerate
    import torch
    import transformers

    return {
        "machine": platform.machine(), "processor": platform.processor() or "unknown",
        "cpus": __import__("os").cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "accelerate": accelerate.__version__, "cuda": torch.cuda.is_available(),
        "platform": platform.platform(),
    }  # fmt: skip


def write_plots(results: dict, out: Path) -> dict[str, str]:
    from ngrpo.plots import plot_accuracy_over_steps, plot_diversity, plot_pass_at_k, plot_probe

    summary = results["summary"]
    methods = list(METHODS)
    paths = {
        "accuracy": plot_accuracy_over_steps(
            {m: summary[m]["curve"] for m in methods}, out / "accuracy_over_steps.png",
            title="ID accuracy during training (mean@4, mixing off)", ylabel="arith-id mean@4",
        ),
        "diversity": plot_diversity(
            {m: summary[m]["diversity"] for m in methods}, out / "diversity.png",
            title="Rollout diversity during training (mean over steps)",
        ),
        "probe": plot_probe(results["probe"], out / "probe.png"),
    }  # fmt: skip
    for split in EVAL_SPLITS:
        paths[f"pass_at_k_{split}"] = plot_pass_at_k(
            {m: {int(k): v for k, v in summary[m][split]["pass@k"].items()}
             for m in ["base", *methods]},
            out / f"pass_at_k_{split}.png", title=f"pass@k on {split} (after training)",
        )  # fmt: skip
    return {name: str(Path(p).name) for name, p in paths.items()}


def _fmt(value: tuple[float, float, float], seeds: int) -> str:
    mean, low, high = value
    if seeds < 2:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def main_table(results: dict) -> list[list[str]]:
    """Header + one row per method: ID / OOD mean@n and pass@n (percent, CI with seeds > 1)."""
    summary, seeds = results["summary"], len(results["seeds"])
    n = str(results["settings"]["final_n"])
    header = ["method", "ID mean@n", f"ID pass@{n}", "OOD mean@n", f"OOD pass@{n}"]
    rows = [header]
    for method in ["base", *METHODS]:
        s = summary[method]
        rows.append([
            method,
            _fmt(s["arith-id"]["mean@n"], seeds), _fmt(s["arith-id"]["pass@k"][n], seeds),
            _fmt(s["arith-ood"]["mean@n"], seeds), _fmt(s["arith-ood"]["pass@k"][n], seeds),
        ])  # fmt: skip
    return rows


def render_report(results: dict) -> str:
    settings, env, seeds = results["settings"], results["environment"], results["seeds"]
    table = main_table(results)
    lines = [
        "# ngrpo demo: GRPO vs N-GRPO vs STHT-style noise on the embedded task",
        "",
        f"Seeds {seeds} · {settings['steps']} training steps per run (8 prompts × 8 responses) · "
        f"final evaluation: {settings['final_limit']} problems per split, n = "
        f"{settings['final_n']}, τ = 0.6, top-p = 0.95, mixing off · wall time "
        f"{results['wall_seconds']:.0f} s.",
        "",
        f"Machine: {env['platform']} ({env['cpus']} CPUs, CUDA {env['cuda']}); Python "
        f"{env['python']}, torch {env['torch']}, transformers {env['transformers']}, accelerate "
        f"{env['accelerate']}.",
        "",
        "## Main table (percent" + ("; mean [95% CI] over seeds)" if len(seeds) > 1 else ")"),
        "",
        "| " + " | ".join(table[0]) + " |",
        "|" + "---|" * len(table[0]),
        *("| " + " | ".join(row) + " |" for row in table[1:]),
        "",
        "## Differences (mean@n, paired by seed)",
        "",
        "| comparison | split | difference (points) | 95% CI | reading |",
        "|---|---|---|---|---|",
    ]
    for c in results["comparisons"]:
        verdict = "within noise" if c["within_noise"] else ("better" if c["difference"] > 0
                                                              else "worse")  # fmt: skip
        interval = f"[{100 * c['ci'][0]:+.1f}, {100 * c['ci'][1]:+.1f}]"
        if len(seeds) < 2:
            verdict, interval = "one seed: cannot tell from noise (use --seeds 3)", "–"
        lines.append(
            f"| {c['a']} − {c['b']} | {c['split']} | {100 * c['difference']:+.1f} | "
            f"{interval} | {verdict} |"
        )
    lines += [
        "",
        "## Rollout diversity during training (mean over steps)",
        "",
        "| method | " + " | ".join(k.split("/")[-1] for k in DIVERSITY_KEYS) + " |",
        "|---|" + "---|" * len(DIVERSITY_KEYS),
    ]
    for method in METHODS:
        div = results["summary"][method]["diversity"]
        lines.append(f"| {method} | " + " | ".join(
            f"{div[k][0]:.3f}" if k in div else "–" for k in DIVERSITY_KEYS) + " |")  # fmt: skip
    lines += [
        "",
        "## Plots",
        "",
        *(f"![{name}]({path})" for name, path in results["plots"].items()),
        "",
        "## Semantic-consistency probe (base model)",
        "",
        "Every reasoning position's input is perturbed at a matched relative shift: `gaussian` "
        "adds isotropic noise of norm s‖e(y)‖, `neighbor` moves e(y) towards its nearest "
        "neighbour by the same distance. `n-grpo` is N-GRPO's own mixing (greedy anchor, "
        "policy-weighted neighbour) at the probe's mix rate; its shift is measured, not set, and "
        "feeding the argmax anchor at every position raises accuracy and lowers diversity. "
        "Answer agreement: the share of samples whose answer equals the unperturbed run's.",
        "",
        "| perturbation | target shift | achieved shift | accuracy | answer agreement | "
        "distinct answers |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["probe"]["rows"]:
        target = "–" if row.get("target_shift") is None else f"{row['target_shift']:.2f}"
        lines.append(
            f"| {row['perturbation']} | {target} | {row['achieved_shift']:.3f} | "
            f"{row['accuracy']:.3f} | {row['answer_agreement']:.3f} | "
            f"{row['distinct_answers']:.2f} |"
        )
    lines += [
        "",
        "Reproduce: `ngrpo demo"
        + (" --quick" if settings["steps"] < DemoSettings().steps else "")
        + f" --seeds {len(seeds)}`; every number above follows from the seeds.",
        "",
    ]
    return "\n".join(lines)
