"""Reward functions of your own, in TRL's signature: `completions` (conversational here, as the
prompts are chat messages), every dataset column as a keyword list; one float (or None) each.

Used next to the built-in `math` grader (`config.yaml`): `reward/accuracy` stays the grader's
share of correct answers; these add small shaping terms, logged as `reward/answer_line` and
`reward/brevity`.
"""

from __future__ import annotations


def _text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def answer_line(completions, **kwargs) -> list[float]:
    """1.0 when the response has a `####` answer line, else 0.0."""
    return [float("####" in _text(c)) for c in completions]


def brevity(completions, **kwargs) -> list[float]:
    """1.0 up to 20 words, less beyond."""
    return [min(1.0, 20 / max(1, len(_text(c).split()))) for c in completions]
