"""The demo's units of work: which exist, what each depends on, and which are finished.

A unit is the base evaluation, one method trained and evaluated on one seed (the 20-step
comparison or the long setting), or one probe seed. Each writes its result to `DIR/runs/<unit>.json`
together with the settings it depends on (`inputs`); a later invocation re-uses a result whose
inputs match (`cached`) and `finished` reads every matching result without computing anything
(the report from finished units: `ngrpo demo ... --report-only`). The unit files hold no model
weights (a few KB to ~40 KB each), so a study directory's `runs/*.json` can be committed and a run
continued on another machine.

Stages (`ngrpo.study.settings.STAGES`) order the units by what they answer: `long` (the long
setting's GRPO and N-GRPO (release), seed by seed), `diagnosis` (its switches, method by method),
`main` (the 20-step comparison with the large-k evaluation and the probe, seed by seed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ngrpo.study.settings import (
    CURVE_N,
    EVAL_MAX_NEW_TOKENS,
    EVAL_SPLITS,
    EVAL_TEMPERATURE,
    EVAL_TOP_P,
    LONG_COMPARED,
    PASSK_SPLITS,
    DemoSettings,
)
from ngrpo.utils.errors import NgrpoError
from ngrpo.utils.io import write_text_atomically

log = logging.getLogger(__name__)

# Sequences decoded together in the final evaluation (16 problems x 16) and the large-k one (4 x
# 256): larger batches decode faster on a CPU. (The samples depend on the batch: each chunk of
# problems is seeded from its first problem's index.)
FINAL_BATCH, PASSK_BATCH = 256, 1024


def lookup(path: Path, inputs: dict) -> dict | None:
    """The result saved at `path` by an earlier computation with equal `inputs`, else None."""
    inputs = json.loads(json.dumps(inputs))  # as it reads back (tuples become lists)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return saved["result"] if saved.get("inputs") == inputs else None


def cached(path: Path, inputs: dict, compute: Callable[[], dict]) -> dict:
    """`compute()`, or the result saved at `path` by an earlier call with equal `inputs`; either
    way as it reads back from JSON (tuples become lists), so a re-used unit equals a fresh one."""
    saved = lookup(path, inputs)
    if saved is not None:
        log.info("re-using %s", path)
        return saved
    inputs = json.loads(json.dumps(inputs))
    result = json.loads(json.dumps(compute()))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps({"inputs": inputs, "result": result}) + "\n")
    return result


def eval_inputs(settings: DemoSettings, passk: bool) -> dict:
    """The evaluation settings a unit's results depend on."""
    return {
        "splits": EVAL_SPLITS, "final_limit": settings.final_limit, "final_n": settings.final_n,
        "batches": [FINAL_BATCH, PASSK_BATCH],
        "curve_limit": settings.curve_limit, "curve_n": CURVE_N,
        "sampling": [EVAL_TEMPERATURE, EVAL_TOP_P, EVAL_MAX_NEW_TOKENS],
        "passk": [PASSK_SPLITS, settings.passk_n, settings.passk_limit] if passk else None,
    }  # fmt: skip


def run_spec(
    key: str, seed: int, steps: int, settings: DemoSettings, base: dict
) -> tuple[str, Path, dict]:
    """One run unit's name, result file and the settings its results depend on. The large-k
    evaluation runs on the first `passk_seeds` seeds (after the long training only with
    `long_passk`)."""
    name = f"{key}-seed{seed}" if steps == settings.steps else f"{key}-{steps}steps-seed{seed}"
    passk = seed in settings.passk_seed_list and (steps == settings.steps or settings.long_passk)
    inputs = {
        "method": asdict(settings.all_methods[key]), "seed": seed, "steps": steps,
        "eval_every": settings.eval_every, "base": base["sha256"],
        **eval_inputs(settings, passk),
    }  # fmt: skip
    return name, settings.out / "runs" / f"{name}.json", inputs


def probe_spec(settings: DemoSettings, seed: int, sha256: str) -> tuple[Path, dict]:
    inputs = {
        "base": sha256, "seed": seed, "problems": settings.probe_problems, "n": settings.probe_n,
        "shifts": settings.probe_shifts,
    }  # fmt: skip
    return settings.out / "runs" / f"probe-seed{seed}.json", inputs


def base_spec(settings: DemoSettings, sha256: str) -> tuple[Path, dict]:
    passk = bool(settings.passk_seed_list)
    inputs = {"base": sha256, "eval_seed": settings.base_seed, **eval_inputs(settings, passk)}
    return settings.out / "runs" / "base.json", inputs


def timings(base: dict, per_seed: dict, long: dict, probes: list[dict]) -> dict[str, float]:
    """Compute seconds per stage, summed over the units (whichever invocation ran them): the
    base's evaluation, the 20-step runs' training and evaluation, the long setting's (`long`: GRPO
    and N-GRPO (release); `diagnosis`: the other methods) and the probe."""
    totals: dict[str, float] = {}
    for stage, seconds in base["seconds"].items():
        totals[f"base {stage}"] = totals.get(f"base {stage}", 0.0) + seconds
    groups = [("", entries) for entries in per_seed.values()]
    groups += [("long " if key in LONG_COMPARED else "diagnosis ", es) for key, es in long.items()]
    for prefix, entries in groups:
        for entry in entries:
            for stage, seconds in entry["seconds"].items():
                totals[prefix + stage] = totals.get(prefix + stage, 0.0) + seconds
    totals["probe"] = sum(p["seconds"] for p in probes)
    return {stage: round(seconds, 1) for stage, seconds in totals.items()}


Unit = tuple[str, str, int, int]  # ("run", method, seed, steps) | ("probe", "", seed, 0)


def units_by_stage(settings: DemoSettings) -> dict[str, list[Unit]]:
    """Every unit after the base evaluation, by stage (`STAGES`): `long` the long setting's GRPO
    and N-GRPO (release), `diagnosis` its other methods, `main` the 20-step comparison and the
    probe; `long` and `main` seed by seed, `diagnosis` method by method, so a stage stopped early
    has complete results for its first seeds (methods)."""
    long = [m for m in settings.long_methods if m in LONG_COMPARED]
    diagnosis = [m for m in settings.long_methods if m not in LONG_COMPARED]
    main: list[Unit] = []
    for seed in settings.seeds:
        main += [("run", key, seed, settings.steps) for key in settings.methods]
        if seed in settings.probe_seed_list:
            main.append(("probe", "", seed, 0))
    return {
        "long": [("run", k, s, settings.long_steps) for s in settings.long_seed_list for k in long],
        "diagnosis": [  # method by method: each finished method is a complete answer
            ("run", k, s, settings.long_steps) for k in diagnosis for s in settings.long_seed_list
        ],
        "main": main,
    }


def to_compute(settings: DemoSettings) -> list[Unit]:
    """The units of `settings.stages`, in that order."""
    by_stage = units_by_stage(settings)
    return [unit for stage in settings.stages for unit in by_stage[stage]]


def unit_name(unit: Unit, settings: DemoSettings) -> str:
    kind, key, seed, steps = unit
    if kind == "probe":
        return f"probe-seed{seed}"
    return f"{key}-seed{seed}" if steps == settings.steps else f"{key}-{steps}steps-seed{seed}"


def finished(settings: DemoSettings, base: dict) -> tuple[dict[Unit, dict], dict[str, list]]:
    """Every unit of every stage whose results are saved with matching settings, and the names
    of the missing ones by stage (nothing is computed)."""
    done: dict[Unit, dict] = {}
    pending: dict[str, list[str]] = {}
    for stage, units in units_by_stage(settings).items():
        for unit in units:
            kind, key, seed, steps = unit
            if kind == "probe":
                path, inputs = probe_spec(settings, seed, base["sha256"])
            else:
                _, path, inputs = run_spec(key, seed, steps, settings, base)
            result = lookup(path, inputs)
            if result is None:
                pending.setdefault(stage, []).append(unit_name(unit, settings))
            else:
                done[unit] = result
    return done, pending


def complete_prefix(seeds: tuple[int, ...], has: Callable[[int], bool]) -> list[int]:
    """The leading seeds for which `has(seed)` holds (paired comparisons need the same seeds)."""
    out = []
    for seed in seeds:
        if not has(seed):
            break
        out.append(seed)
    return out


def finished_base(settings: DemoSettings, sha256: str) -> dict:
    """The saved base evaluation (`--report-only`), or an error saying nothing is finished."""
    path, inputs = base_spec(settings, sha256)
    saved = lookup(path, inputs)
    if saved is None:
        raise NgrpoError(
            f"{settings.out}: no finished base evaluation with these settings; run the same "
            "command without --report-only first"
        )
    return {**saved, "sha256": sha256}
