"""Grading a response against a gold answer: extraction, screening, quick check, math-verify.

`grade_batch` is the entry point for throughput (the trainer's rewards, `ngrpo eval`,
`ngrpo grade --file`): everything cheap runs in the caller's process, and only the answers the
quick check cannot decide go to the worker pool, all at once. `grade` is the same for one answer.
Grading never executes model output and every call is bounded in time: the in-process steps are
linear scans of capped strings, and the symbolic step has the pool's hard deadline.

Kinds (`GRADERS`):
- `math`: boxed / `####` answer, equivalence through math-verify; no last-number fallback.
- `math_lenient`: as `math`, with the last number in the text as a fallback answer.
- `multiple_choice`: `Answer: X` (or a boxed letter) against a gold letter.
- `exact`: the extracted answer equals the gold after whitespace and `$` normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ngrpo.rewards.equivalence import normalize_gold, normalize_text, quick_equal, screen_answer
from ngrpo.rewards.extract import extract_answer, extract_choice
from ngrpo.rewards.pool import GradingPool, default_pool
from ngrpo.utils.errors import NgrpoError


@dataclass(frozen=True)
class Grade:
    """The outcome of grading one response. `reason` says how the verdict was reached."""

    extracted: str | None
    correct: bool
    reason: str  # "no answer", "match", "mismatch", "math-verify", "timeout", or a screen reason


def _verdict(extracted: str, same: bool) -> Grade:
    return Grade(extracted, same, "match" if same else "mismatch")


def _decide_math(extracted: str, gold: str) -> Grade | None:
    """Screen, then the quick check; None leaves the decision to math-verify."""
    gold_answer = normalize_gold(gold)
    unsafe = screen_answer(extracted, gold_answer)
    if unsafe is not None:
        return Grade(extracted, False, unsafe)
    decided = quick_equal(extracted, gold_answer)
    return None if decided is None else _verdict(extracted, decided)


def _decide_choice(extracted: str, gold: str) -> Grade:
    return _verdict(extracted, extracted == gold.strip().strip("().[] ").upper())  # "(b)" -> B


def _decide_exact(extracted: str, gold: str) -> Grade:
    return _verdict(extracted, normalize_text(extracted) == normalize_gold(gold).key)


def _extract_lenient(response: str) -> str | None:
    return extract_answer(response, fallback_last_number=True)


@dataclass(frozen=True)
class Grader:
    """How one kind of answer is extracted, and decided without math-verify where possible."""

    extract: Callable[[str], str | None]
    decide: Callable[[str, str], Grade | None]  # (extracted, gold); None: ask math-verify


GRADERS: dict[str, Grader] = {
    "math": Grader(extract=extract_answer, decide=_decide_math),
    "math_lenient": Grader(extract=_extract_lenient, decide=_decide_math),
    "multiple_choice": Grader(extract=extract_choice, decide=_decide_choice),
    "exact": Grader(extract=extract_answer, decide=_decide_exact),
}


def get_grader(kind: str) -> Grader:
    if kind not in GRADERS:
        raise NgrpoError(f"unknown grader {kind!r}; choose one of: {', '.join(GRADERS)}")
    return GRADERS[kind]


def grade_batch(
    responses: Sequence[str],
    golds: Sequence[str],
    kind: str = "math",
    pool: GradingPool | None = None,
) -> list[Grade]:
    """Grade responses against their gold answers (same length); math-verify work in `pool`."""
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
    grader = get_grader(kind)
    extracted = [grader.extract(response) for response in responses]
    grades = [
        Grade(None, False, "no answer") if answer is None else grader.decide(answer, gold)
        for answer, gold in zip(extracted, golds, strict=True)
    ]
    undecided = [i for i, grade in enumerate(grades) if grade is None]
    if undecided:
        pairs = [(extracted[i], normalize_gold(golds[i]).text) for i in undecided]
        verdicts = (pool or default_pool()).check(pairs)
        for i, verdict in zip(undecided, verdicts, strict=True):
            reason = "timeout" if verdict is None else "math-verify"
            grades[i] = Grade(extracted[i], bool(verdict), reason)
    return grades  # type: ignore[return-value]


def grade(response: str, gold: str, kind: str = "math", pool: GradingPool | None = None) -> Grade:
    """Grade one response (see `grade_batch`)."""
    return grade_batch([response], [gold], kind, pool)[0]


def reward_for(kind: str) -> Callable[[str, str], float]:
    """A reward function `reward(response, gold) -> 1.0 | 0.0` for the trainer."""
    get_grader(kind)

    def reward(response: str, gold: str) -> float:
        return float(grade(response, gold, kind).correct)

    reward.__name__ = f"{kind}_reward"
    return reward


def batch_rewards(
    responses: Sequence[str],
    golds: Sequence[str],
    kind: str = "math",
    pool: GradingPool | None = None,
) -> list[float]:
    """1.0 / 0.0 per response: `grade_batch` for the trainer's rollout batches."""
    return [float(g.correct) for g in grade_batch(responses, golds, kind, pool)]


REWARD_FUNCTIONS: dict[str, Callable[[str, str], float]] = {
    kind: reward_for(kind) for kind in GRADERS
}
