"""Evaluation: sample n responses per problem with mixing off, grade them, summarise with pass@k.

`evaluate(model, tokenizer, examples, n=..., ...)` is the Python API used by `ngrpo eval` and by
the trainer's periodic evaluation. Generation goes through the project's rollout engine
(`ngrpo.rollout.generate` with `exploration=None, training=False`: plain sampling, never mixing);
prompts are the tokenizer's chat template around the problem text
(`ngrpo.models.tokenizer.encode_prompt`, the raw problem text when the tokenizer has no chat
template); grading is `ngrpo.rewards` (`grade_batch`, math-verify in the worker pool); metrics are
`ngrpo.evaluation.metrics`.

Problems are processed in chunks of `max(1, batch_size // n)` prompts. Chunk c is sampled with seed
`seed + index of its first problem`, so a resumed run reproduces the samples a full run would have
drawn for the same chunking. `completed` (problem id -> its n finished samples) skips problems
already done; `on_chunk` receives each chunk's samples as soon as they are graded (the CLI appends
them to its per-sample JSONL, which is what makes resuming possible).

Deviation from the paper's protocol: none in the metrics (unbiased pass@k, mean over 32 samples at
τ = 0.6, top-p = 0.95 are the defaults of `ngrpo eval`). maj@n votes on equivalence classes
(`ngrpo.rewards.classes`): `0.5`, `1/2` and `\\frac{1}{2}` are one vote, decided by the grader under
its time bounds.

The package's modules: this one (the sampling and grading loop), `metrics` (pass@k, mean@n, maj@n:
pure functions) and `diagnostics` (diversity of a training step's rollout groups, logged by the
trainer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ngrpo.data import Example
from ngrpo.evaluation.metrics import summarize_problem_set
from ngrpo.models.limits import check_positions, position_limit
from ngrpo.rewards import GradingPool, grade_batch
from ngrpo.rewards.classes import equivalence_classes
from ngrpo.utils.errors import NgrpoError

if TYPE_CHECKING:
    from ngrpo.rollout import DecoderPool, EngineOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleResult:
    """One graded sample: row `sample` (0..n-1) of problem `problem_id`."""

    problem_id: str
    sample: int
    response: str
    extracted: str | None
    correct: bool

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class EvalResult:
    """All samples of one benchmark (problem order, then sample order) and their summary."""

    samples: list[SampleResult]
    summary: dict  # see `ngrpo.evaluation.metrics.summarize_problem_set`


def build_prompts(
    tokenizer, problems: Sequence[str | Sequence[Mapping[str, str]]]
) -> list[list[int]]:
    """Token ids of each problem wrapped in the tokenizer's chat template (generation prompt on).

    A problem is a text (one user turn) or a whole chat conversation (a list of messages)."""
    from ngrpo.models.tokenizer import encode_messages, encode_prompt

    if getattr(tokenizer, "chat_template", None):
        return [
            encode_prompt(tokenizer, p) if isinstance(p, str) else encode_messages(tokenizer, p)
            for p in problems
        ]
    if not all(isinstance(p, str) for p in problems):
        raise NgrpoError("chat-message prompts need a tokenizer with a chat template")
    log.warning("tokenizer has no chat template: prompting with the raw problem text")
    return [tokenizer(problem, add_special_tokens=True)["input_ids"] for problem in problems]


def eos_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS id plus any in the model's generation config (e.g. chat end markers)."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for token in [config_eos] if isinstance(config_eos, int) else list(config_eos or []):
        if token not in ids:
            ids.append(token)
    if not ids:
        raise NgrpoError("the tokenizer has no eos_token and the model config names none")
    return ids


def summarize(
    examples: Sequence[Example],
    samples: Sequence[SampleResult],
    n: int,
    grader: str = "math",
    pool: GradingPool | None = None,
) -> dict:
    """pass@k / mean@n / maj@n / unparsed over `examples`, from their samples (any order).

    maj@n votes on the grader's equivalence classes of the extracted answers (`pool` decides the
    pairs the quick check cannot)."""
    by_problem: dict[str, list[SampleResult]] = {}
    for sample in samples:
        by_problem.setdefault(sample.problem_id, []).append(sample)
    answers, correct = [], []
    for example in examples:
        rows = sorted(by_problem.get(example.id, []), key=lambda s: s.sample)
        if len(rows) != n:
            raise ValueError(f"problem {example.id!r} has {len(rows)} samples, expected {n}")
        answers.append([s.extracted for s in rows])
        correct.append([s.correct for s in rows])
    return summarize_problem_set(equivalence_classes(answers, grader, pool), correct)


def evaluate(
    model,
    tokenizer,
    examples: Sequence[Example],
    *,
    n: int = 1,
    temperature: float = 0.6,
    top_p: float = 0.95,
    top_k: int = 0,
    max_new_tokens: int = 512,
    batch_size: int | None = None,
    seed: int = 0,
    grader: str = "math",
    pool: GradingPool | None = None,
    completed: Mapping[str, Sequence[SampleResult]] | None = None,
    on_chunk: Callable[[list[SampleResult]], None] | None = None,
    engine: EngineOptions | None = None,
    decoders: DecoderPool | None = None,
) -> EvalResult:
    """Sample `n` responses per example (no mixing), grade them, and summarise.

    `batch_size` is the number of sequences decoded together (default: 64, at least n).
    `engine` / `decoders` as in `ngrpo.rollout.generate`: a training run passes its own, so that
    evaluation decodes on the decoder kept between steps instead of building a second one.
    The longest prompt plus `max_new_tokens` must fit in the model's positions
    (`ngrpo.models.limits`), else `NgrpoError` naming both numbers.
    """
    samples = sample_examples(
        model, tokenizer, examples, n=n, temperature=temperature, top_p=top_p, top_k=top_k,
        max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, grader=grader,
        pool=pool, completed=completed, on_chunk=on_chunk, engine=engine, decoders=decoders,
    )  # fmt: skip
    return EvalResult(samples=samples, summary=summarize(examples, samples, n, grader, pool))


def sample_examples(
    model,
    tokenizer,
    examples: Sequence[Example],
    *,
    n: int = 1,
    temperature: float = 0.6,
    top_p: float = 0.95,
    top_k: int = 0,
    max_new_tokens: int = 512,
    batch_size: int | None = None,
    seed: int = 0,
    grader: str = "math",
    pool: GradingPool | None = None,
    completed: Mapping[str, Sequence[SampleResult]] | None = None,
    on_chunk: Callable[[list[SampleResult]], None] | None = None,
    engine: EngineOptions | None = None,
    decoders: DecoderPool | None = None,
    shard: tuple[int, int] = (0, 1),
) -> list[SampleResult]:
    """`evaluate`'s graded samples without the summary. The examples are decoded in chunks of
    `batch_size // n` problems, chunk i seeded with `seed` + its first problem's position, so a
    problem's samples do not depend on which process decodes it: `shard=(rank, world)` decodes
    only the chunks i with i % world == rank, and the shards of all ranks together are exactly the
    samples of one process (`summarize` takes them in any order)."""
    from ngrpo.rollout import SamplingParams, generate

    if not examples:
        raise NgrpoError("nothing to evaluate: the example list is empty")
    ids = [example.id for example in examples]
    if len(set(ids)) != len(ids):
        raise NgrpoError("example ids must be unique (they key the per-sample results)")
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard {shard}: expected (rank, world) with 0 <= rank < world")
    sampling = SamplingParams(
        n=n, temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens
    )
    sampling.validate()
    completed = completed or {}
    rows = max(n, batch_size or 64)
    per_chunk = max(1, rows // n)
    eos = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]

    prompts = dict(zip(ids, build_prompts(tokenizer, [e.problem for e in examples]), strict=True))
    check_positions(
        position_limit(getattr(model, "config", {})),
        ("the longest prompt", max(map(len, prompts.values()))),
        ("max_new_tokens", max_new_tokens),
    )  # fmt: skip

    samples: list[SampleResult] = []
    for number, start in enumerate(range(0, len(examples), per_chunk)):
        if number % world != rank:
            continue
        chunk = examples[start : start + per_chunk]
        done = [e for e in chunk if len(completed.get(e.id, ())) == n]
        for example in done:
            samples += completed[example.id]
        todo = [e for e in chunk if len(completed.get(e.id, ())) != n]
        if not todo:
            continue
        batch = generate(
            model,
            [prompts[e.id] for e in todo],
            sampling,
            eos_token_id=eos,
            pad_token_id=pad,
            exploration=None,
            training=False,
            seed=seed + start,
            batch_size=rows,
            engine=engine,
            decoders=decoders,
        )
        texts = [
            tokenizer.decode(ids, skip_special_tokens=True) for ids in batch.responses()
        ]  # row i*n + j: sample j of problem i
        golds = [example.answer for example in todo for _ in range(n)]
        grades = grade_batch(texts, golds, grader, pool)
        new = [
            SampleResult(todo[row // n].id, row % n, text, g.extracted, g.correct)
            for row, (text, g) in enumerate(zip(texts, grades, strict=True))
        ]
        samples += new
        if on_chunk is not None:
            on_chunk(new)
    return samples


def eval_metrics(name: str, summary: dict) -> dict[str, float]:
    """A benchmark summary as flat, namespaced scalars: `eval/<name>/mean@n`, `.../pass@4`, ..."""
    metrics = {
        f"eval/{name}/mean@n": summary["mean@n"],
        f"eval/{name}/maj@n": summary["maj@n"],
        f"eval/{name}/unparsed": summary["unparsed"],
    }
    metrics.update({f"eval/{name}/pass@{k}": v for k, v in summary["pass@k"].items()})
    return metrics
