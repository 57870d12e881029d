"""The main job: GRPO vs N-GRPO vs STHT-style noise on the embedded task, in miniature.

`run_demo(settings)` uses the base model shipped with ngrpo (`ngrpo.models.base_model`), then for
every seed trains each method of `settings.methods` with identical budgets and seeds (the shipped
`tiny_*` configs plus the overrides in `METHODS`, which differ only in their `exploration`
section), evaluates every trained policy on `arith-id`, `arith-ood` and `arith-long` with mixing
off (mean@n and pass@k up to n), runs the semantic-consistency probe on the base model once per
seed (the seed changes its sampling; the first `probe_seeds` seeds), and writes `report.md`,
`results.json` and PNG plots (`ngrpo.study.report`).

Methods: the default run compares GRPO, N-GRPO with the authors' released weighting
(`exploration.neighbor_weights=release`) and the STHT-style Gaussian baseline; `full` adds N-GRPO
with the paper text's weighting (`policy`) and with the sampled token as anchor (the control for
mixing around the argmax) and the authors' full released reading, pass@k up to k = `passk_n` (256)
on a fixed problem subset for the base and every method, and a long-training setting
(`long_steps`, 100) for `long_methods`: GRPO, N-GRPO (release), the full release and the diagnosis
switches (`DIAGNOSIS_METHODS`; `ngrpo.study.long_study`). Adding a
method is one line of `METHODS` / `FULL_METHODS` (`ngrpo.study.settings`, with the evaluation
protocol and the budgets).

Shared work (it does not change what is compared): the base model does not depend on the training
seed and its evaluation is deterministic given the sampling seed, so it is evaluated once (final
evaluation, large-k evaluation and the step-0 point of the training curves, sampling seed
`base_seed`) instead of once per seed and method. The base's own sampling error is then a constant
across seeds, so the "vs base" intervals add it in quadrature
(`ngrpo.study.stats.paired_difference`). Each trained policy is evaluated with its training seed
as sampling seed.

Finished work is kept (`ngrpo.study.units`): every unit (the base evaluation, one method and seed,
one probe seed, one long run) writes its results next to the settings they depend on
(`<unit>.json` under `DIR/runs/`), and a later run into the same directory re-uses a unit whose
settings match instead of computing it again, so an interrupted demo continues where it stopped
and adding seeds costs only the new ones. (Code changes are not part of those settings: delete
`DIR` to start over.) `settings.stages` says which stages compute their missing units, in order
(long, diagnosis, main by default: the most informative first); the report always covers every
finished unit and lists the others as pending, so `stages=()` (`--report-only`) only writes the
report. The stage times in the report are the compute times of the units, whichever invocation
ran them.

Statistics (`ngrpo.study.stats`): every number over seeds is a mean with a 95% Student-t interval,
seeds as the unit; a difference between two methods is paired by seed and called "within noise" when
its 95% interval contains 0 (one seed: nothing can be told from noise).
"""

from __future__ import annotations

import json
import logging
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
    LONG_SERIES_KEYS,
    PASSK_SPLITS,
    SEMANTIC_KEYS,
    DemoSettings,
)
from ngrpo.study.stats import sampling_se
from ngrpo.study.units import (
    FINAL_BATCH,
    PASSK_BATCH,
    Unit,
    base_spec,
    cached,
    complete_prefix,
    finished,
    finished_base,
    probe_spec,
    run_spec,
    timings,
    to_compute,
)
from ngrpo.utils.environment import environment
from ngrpo.utils.errors import NgrpoError

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int, str], None]


def _train_one(
    key: str, seed: int, steps: int, run_dir: Path, settings: DemoSettings,
    progress: Progress | None,
) -> Path:  # fmt: skip
    from ngrpo.config import load_config
    from ngrpo.trainer import train

    method = settings.all_methods[key]
    eval_every = settings.eval_every if steps == settings.steps else max(1, steps // 4)
    overrides = [
        *method.overrides,
        f"seed={seed}", f"output_dir={run_dir}", f"train.steps={steps}",
        f"eval.every={eval_every}", "eval.at_start=false",  # step 0: the shared base eval
        f"eval.limit={settings.curve_limit}", "data.eval_sets=arith-id", f"eval.n={CURVE_N}",
        f"eval.temperature={EVAL_TEMPERATURE}", f"eval.top_p={EVAL_TOP_P}",
        f"eval.max_new_tokens={EVAL_MAX_NEW_TOKENS}",
        "eval.best_metric=null", f"logging.save_every={steps}", "logging.keep_last=1",
    ]  # fmt: skip
    cfg = load_config(method.config, overrides)

    def on_step(kind: str, step: int, total: int, metrics: dict) -> None:
        if progress is not None and kind == "train":
            progress(f"train {run_dir.name}", step, total,
                     f"reward {metrics.get('reward/mean', 0):.2f}")  # fmt: skip

    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)  # an unfinished run of an earlier invocation: never mix metrics
    return train(cfg, progress=on_step)


def _evaluate(
    model, tokenizer, split: str, limit: int, n: int, seed: int, pool, batch_size: int | None = None
) -> dict:
    """One split's summary (see `ngrpo.evaluation.metrics.summarize_problem_set`) plus `mean@n_se`,
    the sampling standard error of mean@n on these problems (`ngrpo.study.stats.sampling_se`)."""
    from ngrpo.data import load_benchmark
    from ngrpo.evaluation import evaluate

    examples = load_benchmark(split, limit=limit).examples
    result = evaluate(
        model, tokenizer, examples, n=n, temperature=EVAL_TEMPERATURE, top_p=EVAL_TOP_P,
        max_new_tokens=EVAL_MAX_NEW_TOKENS, seed=seed, pool=pool, batch_size=batch_size,
    )  # fmt: skip
    by_problem: dict[str, list[bool]] = {}
    for sample in result.samples:
        by_problem.setdefault(sample.problem_id, []).append(sample.correct)
    return {**result.summary, "mean@n_se": sampling_se(list(by_problem.values()))}


def _evaluations(model, tokenizer, settings: DemoSettings, seed: int, pool, passk: bool) -> dict:
    """`final`: every split at n = final_n; with `passk`, `passk`: PASSK_SPLITS at n = passk_n."""
    limit, n = settings.final_limit, settings.final_n
    out = {
        "final": {
            s: _evaluate(model, tokenizer, s, limit, n, seed, pool, batch_size=FINAL_BATCH)
            for s in EVAL_SPLITS
        }
    }
    if passk:
        out["passk"] = {
            s: _evaluate(model, tokenizer, s, settings.passk_limit, settings.passk_n, seed, pool,
                         batch_size=PASSK_BATCH)
            for s in PASSK_SPLITS
        }  # fmt: skip
    return out


def _curve(run_dir: Path, start: float) -> list[tuple[int, float]]:
    """ID accuracy during training; step 0 is the shared base evaluation `start`."""
    from ngrpo.trainer import read_metrics

    return [(0, start)] + [
        (row["step"], row["eval/arith-id/mean@n"])
        for row in read_metrics(run_dir)
        if row.get("type") == "eval" and row["step"] > 0
    ]


def _train_rows(run_dir: Path) -> list[dict]:
    from ngrpo.trainer import read_metrics

    return [r for r in read_metrics(run_dir) if r.get("type") == "train"]


def _diversity(rows: list[dict]) -> dict[str, float]:
    """Mean over training steps of each rollout diagnostic the run logged."""
    keys = dict.fromkeys((*DIVERSITY_KEYS, *SEMANTIC_KEYS))
    return {k: statistics.fmean(r[k] for r in rows) for k in keys if k in rows[0]}


def _run_unit(
    key: str, seed: int, steps: int, settings: DemoSettings, base: dict, pool,
    progress: Progress | None,
) -> dict:  # fmt: skip
    """Train one method on one seed, evaluate it; the unit's results (JSON-ready)."""
    from ngrpo.models.load import load_model_and_tokenizer
    from ngrpo.trainer import checkpoint_dirs

    name, path, inputs = run_spec(key, seed, steps, settings, base)
    run_dir = settings.out / "runs" / name
    passk = inputs["passk"] is not None

    def compute() -> dict:
        started = time.time()
        _train_one(key, seed, steps, run_dir, settings, progress)
        trained = time.time()
        if progress is not None:
            progress("evaluation", 0, 1, name)
        model, tokenizer = load_model_and_tokenizer(checkpoint_dirs(run_dir)[-1])
        entry = _evaluations(model, tokenizer, settings, seed, pool, passk)
        rows = _train_rows(run_dir)
        entry.update(
            curve=_curve(run_dir, base["curve_start"]), diversity=_diversity(rows),
            run_dir=str(run_dir),
            seconds={"training": round(trained - started, 1),
                     "evaluation": round(time.time() - trained, 1)},
        )  # fmt: skip
        if steps != settings.steps:  # the long setting keeps its per-step series
            entry["series"] = {k: [r.get(k) for r in rows] for k in LONG_SERIES_KEYS}
        return entry

    return cached(path, inputs, compute)


def _base_unit(model, tokenizer, settings: DemoSettings, sha256: str, pool) -> dict:
    path, inputs = base_spec(settings, sha256)
    passk = inputs["passk"] is not None

    def compute() -> dict:
        started = time.time()
        base = _evaluations(model, tokenizer, settings, settings.base_seed, pool, passk)
        base["curve_start"] = _evaluate(
            model, tokenizer, "arith-id", settings.curve_limit, CURVE_N, settings.base_seed, pool
        )["mean@n"]
        base.update(eval_seed=settings.base_seed, seconds={"evaluation": time.time() - started})
        return base

    return {**cached(path, inputs, compute), "sha256": sha256}


def _probe_unit(model, tokenizer, settings: DemoSettings, seed: int, sha256: str, pool, progress):
    from ngrpo.study.probe import run_probe
    from ngrpo.tasks import generate

    path, inputs = probe_spec(settings, seed, sha256)

    def compute() -> dict:
        problems = generate("arith-id", settings.probe_problems, seed=1)
        return run_probe(
            model, tokenizer, problems, shifts=settings.probe_shifts, n=settings.probe_n,
            seed=seed, pool=pool,
            progress=None if progress is None
            else (lambda s, d, t: progress(f"probe (seed {seed})", d, t, s)),
        )  # fmt: skip

    return cached(path, inputs, compute)


def _do_unit(unit: Unit, settings: DemoSettings, base: dict, pool, progress=None) -> dict:
    """One unit's results (computed, or re-used from an earlier invocation)."""
    from ngrpo.models.base_model import shipped_base_dir
    from ngrpo.models.load import load_model_and_tokenizer

    kind, key, seed, steps = unit
    if kind == "probe":
        model, tokenizer = load_model_and_tokenizer(shipped_base_dir())
        return _probe_unit(model, tokenizer, settings, seed, base["sha256"], pool, progress)
    return _run_unit(key, seed, steps, settings, base, pool, progress)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # as in the main process: results do not depend on --jobs


def _worker(unit: Unit, settings: DemoSettings, base: dict) -> dict:
    """`_do_unit` in a worker process, with its own grading workers."""
    from ngrpo.rewards import GradingPool

    with GradingPool() as pool:
        return _do_unit(unit, settings, base, pool)


def _run_units(
    units: list[Unit], settings: DemoSettings, base: dict, pool, jobs: int,
    progress: Progress | None,
) -> dict[Unit, dict]:  # fmt: skip
    """Every unit's results: in this process (`jobs` 1, with per-step progress), or in `jobs`
    worker processes (progress per finished unit)."""
    if jobs <= 1:
        return {unit: _do_unit(unit, settings, base, pool, progress) for unit in units}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    done: dict[Unit, dict] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init) as executor:
        futures = {executor.submit(_worker, unit, settings, base): unit for unit in units}
        for future in as_completed(futures):
            unit = futures[future]
            done[unit] = future.result()
            if progress is not None:
                name = f"{unit[0]} {unit[1]} seed {unit[2]}".replace("  ", " ")
                progress(f"units ({jobs} in parallel)", len(done), len(units), name)
    return done


def run_demo(settings: DemoSettings, progress: Progress | None = None, jobs: int = 1) -> dict:
    """Run the whole comparison; returns the results written to `results.json`.

    Every unit runs on one torch thread, so the results are the same for any `jobs` (the number
    of units run at once in worker processes)."""
    import torch

    from ngrpo.models.base_model import BUILD_INFO, SHIPPED_SHA256, shipped_base_dir
    from ngrpo.models.load import load_model_and_tokenizer
    from ngrpo.rewards import GradingPool
    from ngrpo.study.probe import aggregate_probe
    from ngrpo.study.report import analyse, render_report, write_plots

    settings.validate()
    if jobs < 1:
        raise NgrpoError(f"--jobs must be >= 1, got {jobs}")
    try:
        settings.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NgrpoError(f"cannot create {str(settings.out)!r}: {err.strerror}") from err
    started, threads = time.time(), torch.get_num_threads()
    base_dir = shipped_base_dir()
    sha256 = SHIPPED_SHA256["model.safetensors"]
    torch.set_num_threads(1)
    try:
        with GradingPool() as pool:
            if progress is not None:
                progress("final evaluation", 0, 1, f"base (sampling seed {settings.base_seed})")
            if settings.stages:
                model, tokenizer = load_model_and_tokenizer(base_dir)
                base = _base_unit(model, tokenizer, settings, sha256, pool)
                _run_units(to_compute(settings), settings, base, pool, jobs, progress)
            else:  # the report from the finished units only
                base = finished_base(settings, sha256)
    finally:
        torch.set_num_threads(threads)
    done, pending = finished(settings, base)
    steps, long_steps = settings.steps, settings.long_steps
    seeds = complete_prefix(
        settings.seeds, lambda s: all(("run", k, s, steps) in done for k in settings.methods)
    )
    per_seed = {k: [done[("run", k, s, steps)] for s in seeds] for k in settings.methods}
    long = {}
    for key in settings.long_methods:
        found = complete_prefix(
            settings.long_seed_list, lambda s, k=key: ("run", k, s, long_steps) in done
        )
        if found:
            long[key] = [{**done[("run", key, s, long_steps)], "seed": s} for s in found]
    probes = [
        done[("probe", "", s, 0)] for s in settings.probe_seed_list if ("probe", "", s, 0) in done
    ]
    build = json.loads((base_dir / BUILD_INFO).read_text())
    passk_seeds = len([s for s in seeds if s in settings.passk_seed_list])
    results = {
        "settings": {**asdict(settings), "out": str(settings.out), "passk_seeds": passk_seeds},
        "seeds": seeds,
        "methods": {key: asdict(method) for key, method in settings.methods.items()}
        if seeds else {},
        "long_methods": {key: asdict(settings.all_methods[key]) for key in settings.long_methods},
        "base": base,
        "per_seed": per_seed if seeds else {},
        "long": long,
        "pending": pending,
        "probe": aggregate_probe(probes) if probes else None,
        "environment": environment(),
        "timings": timings(base, per_seed if seeds else {}, long, probes),
        "wall_seconds": round(time.time() - started, 1),
        "jobs": jobs,
        "base_model": {
            "sha256": sha256, "seed": build["seed"], "sft_steps": build["recipe"]["sft_steps"],
            "libraries": build.get("libraries"), "cpu": build.get("cpu"),
            "built": build.get("built"),
        },
    }  # fmt: skip
    results.update(analyse(results))
    (settings.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    results["plots"] = write_plots(results, settings.out)
    (settings.out / "report.md").write_text(render_report(results))
    _write_view(settings, per_seed)
    log.info("demo finished in %.0f s (torch %s)", results["wall_seconds"], torch.__version__)
    return results


def _write_view(settings: DemoSettings, per_seed: dict) -> None:
    """`view.html` beside report.md (`ngrpo view`): the first seed's run of each method."""
    from ngrpo.study.view import write_page

    dirs = [Path(units[0]["run_dir"]) for units in per_seed.values() if units]
    dirs = [d for d in dirs if (d / "metrics.jsonl").is_file()]
    if dirs:
        write_page(dirs, settings.out / "view.html",
                   title=f"ngrpo demo, seed {settings.seeds[0]} of each method")  # fmt: skip
