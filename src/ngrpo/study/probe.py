"""Semantic-consistency probe: Gaussian noise vs neighbour mixing at matched embedding shifts.

The N-GRPO paper motivates its method with a pilot experiment: perturbing input embeddings with
isotropic noise (as STHT does) pushes them off the manifold of token embeddings and hurts semantic
consistency more than staying inside a token's neighbourhood does. This module reproduces that
experiment in miniature on a fixed set of problems.

**Matched shift.** Write `y` for the token sampled at a reasoning position (before `</think>`) and
`s` for the target relative shift. Both perturbations replace the input `e(y)` by `ẽ` with
`‖ẽ − e(y)‖ = s·‖e(y)‖`:
- `gaussian` (off-manifold): `ẽ = e(y) + s‖e(y)‖·u`, `u` uniform on the unit sphere (an isotropic
  Gaussian direction, its norm fixed exactly rather than in expectation);
- `neighbor` (on-manifold): `ẽ = (1 − w)·e(y) + w·e(n)`, `n` the cosine-nearest other token to
  `y`, `w = s‖e(y)‖ / ‖e(n) − e(y)‖`, capped at 1/2 so that the input stays closer to `y` than to
  `n`. Where the cap binds the shift is smaller than `s`, so every row reports the shift actually
  achieved (`achieved_shift`: the rollout engine's mean of ‖ẽ − e(y)‖ / ‖e(y)‖ over perturbed
  positions) and the plot uses it as its x axis.
These are the registered exploration strategies `shift_gaussian` / `shift_neighbor` with
`anchor="sampled"` and `noise_scale = s`, run through the rollout engine's shared soft-input path.
Each reasoning position is perturbed with probability `mix_rate` (default 1: all of them).

**N-GRPO's own mixing** (reference rows): strategy `neighbor`, top-2, greedy anchor, once per
weighting of `weightings` — `release` (the authors' code: softmax over the candidates of the
warped probabilities; row `n-grpo (release)`) and `policy` (the paper's text: the probabilities
renormalised; row `n-grpo (paper text)`). Their shift is not controlled but measured: it shows
where on the shift axis the trained method actually operates. With `matched_gaussian` each
reference row is followed by a `gaussian` run at exactly the shift that reference achieved
(`matched_to` names it), so each weighting has an off-manifold twin at a matched mean shift.

**Over seeds.** `aggregate_probe` combines runs of the same probe with different sampling seeds
(same problems): every numeric column becomes the mean over seeds with `<column>_ci`, its 95%
Student-t interval (`ngrpo.study.stats.mean_ci`), which the probe plot draws.

**Protocol.** One unperturbed run and one run per (perturbation, shift), all with the same seed:
token sampling has its own random stream, separate from the perturbation's, so the runs differ
only by the perturbation (common random numbers). Per run: accuracy (mean@n, with a normal 95%
interval over problems), answer agreement (fraction of samples whose normalised extracted answer
equals the unperturbed run's answer for the same problem and sample index; two missing answers
agree), and within-group diversity from `ngrpo.evaluation.diagnostics` (distinct answers, pairwise
edit distance, distinct-2/3 of the reasoning).

Deviations from the paper: its pilot used a 1.5B model on math benchmarks and its exact
perturbation recipe is not published; here the magnitudes are matched exactly per position, the
neighbour is the single cosine-nearest token (N-GRPO's default metric) and its weight is set by
the target shift, not by the policy's probabilities (that is what the `n-grpo` reference run
shows).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

from ngrpo.evaluation.diagnostics import group_diversity, split_groups
from ngrpo.method.exploration import ExplorationConfig, answer_start_ids
from ngrpo.rewards import GradingPool, get_grader, grade_batch
from ngrpo.rewards.equivalence import normalize_text
from ngrpo.study.stats import mean_ci as seed_ci
from ngrpo.utils.errors import NgrpoError

log = logging.getLogger(__name__)

# Probe perturbation -> the exploration strategy that implements it.
PERTURBATIONS: dict[str, str] = {"gaussian": "shift_gaussian", "neighbor": "shift_neighbor"}
DEFAULT_SHIFTS = (0.05, 0.1, 0.2, 0.3, 0.5)
# N-GRPO reference weighting (`exploration.neighbor_weights`) -> its row's name suffix.
WEIGHTINGS: dict[str, str] = {"release": "release", "policy": "paper text"}
ANSWER_START = "</think>"

Progress = Callable[[str, int, int], None]


def perturbation_config(kind: str, shift: float, mix_rate: float = 1.0) -> ExplorationConfig:
    """The exploration config of one probe perturbation at relative shift `shift`."""
    if kind not in PERTURBATIONS:
        raise NgrpoError(
            f"unknown probe perturbation {kind!r}; choose one of {', '.join(PERTURBATIONS)}"
        )
    return ExplorationConfig(
        strategy=PERTURBATIONS[kind], mix_top_k=2, mix_rate=mix_rate, anchor="sampled",
        noise_scale=shift, answer_start=ANSWER_START,
    )  # fmt: skip


def ngrpo_config(
    mix_rate: float = 1.0, mix_top_k: int = 2, weights: str = "release"
) -> ExplorationConfig:
    """N-GRPO's own mixing (strategy `neighbor`, the authors' 1.5B settings but `mix_rate`), a
    probe reference row: weights as `exploration.neighbor_weights`, the shift is not controlled."""
    return ExplorationConfig(
        strategy="neighbor", mix_top_k=mix_top_k, mix_rate=mix_rate, answer_start=ANSWER_START,
        neighbor_weights=weights,
    )  # fmt: skip


def mean_ci(values: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """Mean and normal-approximation interval `mean ± z·sd/√len` (sample sd; 0 width for one)."""
    if not values:
        raise ValueError("mean of no values")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, mean, mean
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    half = z * math.sqrt(var / len(values))
    return mean, mean - half, mean + half


def summarize_run(
    texts: Sequence[str],
    answers: Sequence[str | None],
    correct: Sequence[bool],
    n: int,
    reference_answers: Sequence[str | None] | None = None,
) -> dict[str, float | list[float]]:
    """Probe statistics of one run from its prompt-major rows (row i*n + j: sample j of problem i).

    `answers` are normalised extracted answers (None: unparsed), `reference_answers` those of the
    unperturbed run for the same rows (None: this is the unperturbed run, agreement 1).
    """
    if not (len(texts) == len(answers) == len(correct)) or len(texts) % n:
        raise ValueError("texts, answers and grades need the same length, a multiple of n")
    per_problem = [sum(group) / n for group in split_groups(list(correct), n)]
    accuracy, low, high = mean_ci(per_problem)
    if reference_answers is None:
        agreement = 1.0
    else:
        if len(reference_answers) != len(answers):
            raise ValueError("reference answers must match the rows one to one")
        same = [a == b for a, b in zip(answers, reference_answers, strict=True)]
        agreement = sum(same) / len(same)
    diversity = group_diversity(split_groups(list(texts), n))
    return {
        "accuracy": accuracy,
        "accuracy_ci": [low, high],
        "answer_agreement": agreement,
        "unparsed": sum(a is None for a in answers) / len(answers),
        **{key.removeprefix("diversity/"): value for key, value in diversity.items()},
    }


def check_settings(
    problems: Sequence,
    shifts: Sequence[float],
    kinds: Sequence[str],
    n: int,
    mix_rate: float,
    weightings: Sequence[str] = tuple(WEIGHTINGS),
) -> None:
    """Raise `NgrpoError` naming the bad setting of a probe run (called by `run_probe`)."""
    unknown = [w for w in weightings if w not in WEIGHTINGS]
    if unknown:
        raise NgrpoError(
            f"unknown N-GRPO weighting {unknown[0]!r}; choose from {', '.join(WEIGHTINGS)}"
        )
    if not problems:
        raise NgrpoError("the probe needs at least one problem")
    if n < 1:
        raise NgrpoError(f"n (samples per problem) must be >= 1, got {n}")
    if not shifts or any(not (0.0 < s <= 10.0) for s in shifts):
        raise NgrpoError(f"shifts must be a non-empty list of numbers in (0, 10], got {shifts}")
    for kind in kinds:
        perturbation_config(kind, 0.1)
    if not 0.0 < mix_rate <= 1.0:
        raise NgrpoError(f"mix_rate must be in (0, 1], got {mix_rate}")


def run_probe(
    model,
    tokenizer,
    problems: Sequence,
    *,
    shifts: Sequence[float] = DEFAULT_SHIFTS,
    kinds: Sequence[str] = tuple(PERTURBATIONS),
    n: int = 8,
    mix_rate: float = 1.0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int | None = None,
    ngrpo_reference: bool = True,
    weightings: Sequence[str] = tuple(WEIGHTINGS),
    matched_gaussian: bool = True,
    grader: str = "math",
    pool: GradingPool | None = None,
    progress: Progress | None = None,
) -> dict:
    """Run the probe; returns `{"config": {...}, "rows": [...], "seconds": float}` (JSON-ready).

    `problems` are objects with `.problem` and `.answer` (task `Problem`s or data `Example`s).
    One row per run: first the unperturbed run (`perturbation = "none"`, shift 0), then every
    (kind, shift), then (with `ngrpo_reference`) for each of `weightings` N-GRPO's own neighbour
    mixing (`perturbation = "n-grpo (release)"` / `"n-grpo (paper text)"`, `target_shift = None`:
    its shift is whatever the weights make it), each followed (with `matched_gaussian`) by a
    `gaussian` run at the shift it achieved (`matched_to` = the reference's name; None on every
    other row). Responses are graded with `grader` (a key of `ngrpo.rewards.GRADERS`); answers
    that need math-verify go to `pool` (default: the process-wide pool, started on first need).
    Row keys: perturbation, target_shift, matched_to, achieved_shift, mixed_frac,
    neighbor_weight (N-GRPO rows: mean non-anchor weight on mixed steps; else None), accuracy,
    accuracy_ci, answer_agreement, unparsed, distinct_answers, distinct_2, distinct_3,
    pairwise_edit, response_len. `progress(stage, done, total)` is called after each run.
    """
    from ngrpo.evaluation import build_prompts, eos_token_ids
    from ngrpo.rollout import SamplingParams, generate

    weightings = list(weightings) if ngrpo_reference else []
    check_settings(problems, shifts, kinds, n, mix_rate, weightings)
    get_grader(grader)
    started = time.perf_counter()
    prompts = build_prompts(tokenizer, [p.problem for p in problems])
    golds = [p.answer for p in problems for _ in range(n)]
    eos = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    marker = answer_start_ids(tokenizer, ANSWER_START)
    sampling = SamplingParams(
        n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens
    )
    total = 1 + len(kinds) * len(shifts) + len(weightings) * (2 if matched_gaussian else 1)
    rows: list[dict] = []
    reference: list[str | None] | None = None

    def run(kind: str, shift: float | None, explore, matched_to: str | None = None) -> dict:
        nonlocal reference
        batch = generate(
            model, prompts, sampling, eos_token_id=eos, pad_token_id=pad, exploration=explore,
            answer_start_ids=marker, training=True, seed=seed, batch_size=batch_size,
        )  # fmt: skip
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in batch.responses()]
        grades = grade_batch(texts, golds, grader, pool)
        answers = [None if g.extracted is None else normalize_text(g.extracted) for g in grades]
        summary = summarize_run(texts, answers, [g.correct for g in grades], n, reference)
        reference = answers if reference is None else reference
        row = {
            "perturbation": kind, "target_shift": shift, "matched_to": matched_to,
            "achieved_shift": batch.stats["rollout/embed_shift"],
            "mixed_frac": batch.stats["rollout/mixed_frac"],
            "neighbor_weight": batch.stats.get("rollout/neighbor_weight"), **summary,
            "response_len": batch.stats["rollout/response_len"],
        }  # fmt: skip
        rows.append(row)
        log.info("probe %s shift %s: %s", kind, shift, summary)
        if progress is not None:
            progress("probe runs", len(rows), total)
        return row

    run("none", 0.0, None)
    for kind in kinds:
        for s in shifts:
            run(kind, float(s), perturbation_config(kind, s, mix_rate))
    for weights in weightings:
        name = f"n-grpo ({WEIGHTINGS[weights]})"
        achieved = run(name, None, ngrpo_config(mix_rate, weights=weights))["achieved_shift"]
        if matched_gaussian:
            run("gaussian", achieved, perturbation_config("gaussian", achieved, mix_rate), name)
    config = {
        "num_problems": len(problems), "n": n, "shifts": [float(s) for s in shifts],
        "perturbations": list(kinds), "mix_rate": mix_rate, "temperature": temperature,
        "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed,
        "answer_start": ANSWER_START, "ngrpo_reference": ngrpo_reference,
        "weightings": weightings, "matched_gaussian": matched_gaussian, "grader": grader,
    }  # fmt: skip
    return {"config": config, "rows": rows, "seconds": time.perf_counter() - started}


def _row_key(row: dict) -> tuple:
    """What identifies a probe row across seeds (a matched shift differs from seed to seed)."""
    shift = None if row.get("matched_to") else row["target_shift"]
    return row["perturbation"], row.get("matched_to"), shift


def aggregate_probe(results: Sequence[dict]) -> dict:
    """Combine `run_probe` results of several sampling seeds (same problems and settings).

    Rows keep their order; every numeric column becomes its mean over seeds and gains
    `<column>_ci` (95% Student-t interval over seeds; this replaces the single run's interval
    over problems in `accuracy_ci`); `target_shift` of a matched row is the mean matched shift;
    `seeds` counts the runs. One result is returned as it is (plus `seeds`), its `accuracy_ci`
    still over problems. `config.seeds` lists the seeds, `per_seed` keeps the inputs.
    """
    if not results:
        raise ValueError("no probe results to aggregate")
    keys = [_row_key(r) for r in results[0]["rows"]]
    for other in results[1:]:
        if [_row_key(r) for r in other["rows"]] != keys:
            raise ValueError("probe results to aggregate must have the same rows")
    seeds = [r["config"]["seed"] for r in results]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"probe results to aggregate need distinct seeds, got {seeds}")
    config = {**results[0]["config"], "seeds": seeds}
    if len(results) == 1:
        rows = [{**row, "seeds": 1} for row in results[0]["rows"]]
        return {"config": config, "rows": rows, "seconds": results[0]["seconds"]}
    rows = []
    for i, first in enumerate(results[0]["rows"]):
        group = [r["rows"][i] for r in results]
        row: dict = {"perturbation": first["perturbation"], "matched_to": first.get("matched_to")}
        row["target_shift"] = (
            seed_ci([g["target_shift"] for g in group])[0] if row["matched_to"]
            else first["target_shift"]
        )  # fmt: skip
        for key, value in first.items():
            if value is None:
                row.setdefault(key, None)
            if key in row or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            mean, low, high = seed_ci([float(g[key]) for g in group])
            row[key], row[f"{key}_ci"] = mean, [low, high]
        row["seeds"] = len(group)
        rows.append(row)
    seconds = sum(r["seconds"] for r in results)
    return {"config": config, "rows": rows, "seconds": seconds, "per_seed": list(results)}
