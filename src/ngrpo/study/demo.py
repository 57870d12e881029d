"""The main job: GRPO vs N-GRPO vs STHT-style noise on the embedded task, in miniature.

`run_demo(settings)` builds (or re-uses) the base model, then for every seed trains each method of
`settings.methods` with identical budgets and seeds (the shipped `tiny_*` configs plus the
overrides in `METHODS`, which differ only in their `exploration` section), evaluates every trained
policy on `arith-id` and `arith-ood` with mixing off (mean@n and pass@k up to n), runs the
semantic-consistency probe on the base model once per seed (the seed changes its sampling), and
writes `report.md`, `results.json` and PNG plots (`ngrpo.study.report`).

Methods: the default run compares GRPO, N-GRPO with the authors' released weighting
(`exploration.neighbor_weights=release`) and the STHT-style Gaussian baseline; `full` adds N-GRPO
with the paper text's weighting (`policy`). Adding a method is one line of `METHODS` /
`FULL_METHODS` (`ngrpo.study.settings`, with the evaluation protocol and the budgets).

Shared work (it does not change what is compared): the base model does not depend on the training
seed and its evaluation is deterministic given the sampling seed, so it is evaluated once (final
evaluation and the step-0 point of the training curves, sampling seed `base_seed`) instead of once
per seed and method. The base's own sampling error is then a constant across seeds, so the
"vs base" intervals add it in quadrature (`ngrpo.study.stats.paired_difference`). Each trained
policy is evaluated with its training seed as sampling seed.

Statistics (`ngrpo.study.stats`): every number over seeds is a mean with a 95% Student-t interval,
seeds as the unit; a difference between two methods is paired by seed and called "within noise" when
its 95% interval contains 0 (one seed: nothing can be told from noise).
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ngrpo.study.settings import (
    CURVE_N,
    DIVERSITY_KEYS,
    EVAL_MAX_NEW_TOKENS,
    EVAL_SPLITS,
    EVAL_TEMPERATURE,
    EVAL_TOP_P,
    DemoSettings,
)
from ngrpo.study.stats import sampling_se
from ngrpo.utils.errors import NgrpoError

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int, str], None]


def _train_one(key: str, seed: int, settings: DemoSettings, progress: Progress | None) -> Path:
    from ngrpo.config import load_config
    from ngrpo.trainer import train

    method = settings.methods[key]
    run_dir = settings.out / "runs" / f"{key}-seed{seed}"
    overrides = [
        *method.overrides,
        f"seed={seed}", f"output_dir={run_dir}", f"train.steps={settings.steps}",
        f"eval.every={settings.eval_every}", "eval.at_start=false",  # step 0: the shared base eval
        f"eval.limit={settings.curve_limit}", "data.eval_sets=arith-id", f"eval.n={CURVE_N}",
        f"eval.temperature={EVAL_TEMPERATURE}", f"eval.top_p={EVAL_TOP_P}",
        f"eval.max_new_tokens={EVAL_MAX_NEW_TOKENS}",
        "eval.best_metric=null", f"logging.save_every={settings.steps}", "logging.keep_last=1",
    ]  # fmt: skip
    cfg = load_config(method.config, overrides)

    def on_step(kind: str, step: int, total: int, metrics: dict) -> None:
        if progress is not None and kind == "train":
            progress(f"train {key} (seed {seed})", step, total,
                     f"reward {metrics.get('reward/mean', 0):.2f}")  # fmt: skip

    if (run_dir / "metrics.jsonl").exists():
        import shutil

        shutil.rmtree(run_dir)  # a demo run is cheap to redo; never mix two runs' metrics
    return train(cfg, progress=on_step)


def _evaluate(model, tokenizer, split: str, limit: int, n: int, seed: int, pool) -> dict:
    """One split's summary (see `ngrpo.evaluation.metrics.summarize_problem_set`) plus `mean@n_se`,
    the sampling standard error of mean@n on these problems (`ngrpo.study.stats.sampling_se`)."""
    from ngrpo.data import load_benchmark
    from ngrpo.evaluation import evaluate

    examples = load_benchmark(split, limit=limit).examples
    result = evaluate(
        model, tokenizer, examples, n=n, temperature=EVAL_TEMPERATURE, top_p=EVAL_TOP_P,
        max_new_tokens=EVAL_MAX_NEW_TOKENS, seed=seed, pool=pool,
    )  # fmt: skip
    by_problem: dict[str, list[bool]] = {}
    for sample in result.samples:
        by_problem.setdefault(sample.problem_id, []).append(sample.correct)
    return {**result.summary, "mean@n_se": sampling_se(list(by_problem.values()))}


def _final_eval(model, tokenizer, settings: DemoSettings, seed: int, pool) -> dict:
    limit, n = settings.final_limit, settings.final_n
    return {s: _evaluate(model, tokenizer, s, limit, n, seed, pool) for s in EVAL_SPLITS}


def _curve(run_dir: Path, start: float) -> list[tuple[int, float]]:
    """ID accuracy during training; step 0 is the shared base evaluation `start`."""
    from ngrpo.trainer import read_metrics

    return [(0, start)] + [
        (row["step"], row["eval/arith-id/mean@n"])
        for row in read_metrics(run_dir)
        if row.get("type") == "eval" and row["step"] > 0
    ]


def _diversity(run_dir: Path) -> dict[str, float]:
    """Mean over training steps of each rollout diagnostic the run logged."""
    from ngrpo.trainer import read_metrics

    rows = [r for r in read_metrics(run_dir) if r.get("type") == "train"]
    return {k: statistics.fmean(r[k] for r in rows) for k in DIVERSITY_KEYS if k in rows[0]}


class _Timer:
    """Wall seconds per stage, summed over seeds (`results["timings"]`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, since: float) -> float:
        now = time.time()
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + now - since, 1)
        return now


def run_demo(settings: DemoSettings, progress: Progress | None = None) -> dict:
    """Run the whole comparison; returns the results written to `results.json`."""
    import torch

    from ngrpo.models.base_model import ensure_base_model
    from ngrpo.models.load import load_model_and_tokenizer
    from ngrpo.rewards import GradingPool
    from ngrpo.study.probe import aggregate_probe, run_probe
    from ngrpo.study.report import compare, render_report, summarize, write_plots
    from ngrpo.tasks import generate
    from ngrpo.trainer import checkpoint_dirs

    settings.validate()
    try:
        settings.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NgrpoError(f"cannot create {str(settings.out)!r}: {err.strerror}") from err
    started = timer = time.time()
    timings = _Timer()

    def note(stage: str, info: str) -> None:
        if progress is not None:
            progress(stage, 0, 1, info)

    def build_progress(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(stage, done, total, "")

    base_dir = ensure_base_model(seed=settings.base_seed, progress=build_progress)
    timer = timings.add("base model", timer)
    methods = settings.methods
    per_seed: dict[str, list[dict]] = {key: [] for key in methods}
    probes = []
    with GradingPool() as pool:
        note("final evaluation", f"base (sampling seed {settings.base_seed})")
        model, tokenizer = load_model_and_tokenizer(base_dir)
        base = {
            "final": _final_eval(model, tokenizer, settings, settings.base_seed, pool),
            "curve_start": _evaluate(
                model, tokenizer, "arith-id", settings.curve_limit, CURVE_N, settings.base_seed,
                pool,
            )["mean@n"],
            "eval_seed": settings.base_seed,
        }  # fmt: skip
        timer = timings.add("evaluation", timer)
        problems = generate("arith-id", settings.probe_problems, seed=1)
        for seed in settings.seeds:
            for key in methods:
                run_dir = _train_one(key, seed, settings, progress)
                timer = timings.add("training", timer)
                note("final evaluation", f"{key} (seed {seed})")
                trained = load_model_and_tokenizer(checkpoint_dirs(run_dir)[-1])
                final = _final_eval(*trained, settings, seed, pool)
                timer = timings.add("evaluation", timer)
                per_seed[key].append({
                    "final": final, "curve": _curve(run_dir, base["curve_start"]),
                    "diversity": _diversity(run_dir), "run_dir": str(run_dir),
                })  # fmt: skip
            probes.append(run_probe(
                model, tokenizer, problems, shifts=settings.probe_shifts, n=settings.probe_n,
                seed=seed, pool=pool,
                progress=None if progress is None
                else (lambda s, d, t, seed=seed: progress(f"probe (seed {seed})", d, t, s)),
            ))  # fmt: skip
            timer = timings.add("probe", timer)
    results = {
        "settings": {**asdict(settings), "out": str(settings.out)},
        "seeds": list(settings.seeds),
        "methods": {key: asdict(method) for key, method in methods.items()},
        "base": base,
        "per_seed": per_seed,
        "probe": aggregate_probe(probes),
        "environment": environment(),
        "timings": timings.seconds,
        "wall_seconds": round(time.time() - started, 1),
        "base_model": str(base_dir),
    }
    results["summary"] = summarize(base, per_seed)
    results["comparisons"] = compare(base, per_seed, settings.final_n)
    (settings.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    results["plots"] = write_plots(results, settings.out)
    (settings.out / "report.md").write_text(render_report(results))
    log.info("demo finished in %.0f s (torch %s)", results["wall_seconds"], torch.__version__)
    return results


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
