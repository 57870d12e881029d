"""Reward functions of the keyword task, in TRL's signature (dataset columns as keyword lists).

`completions` are conversational here (the dataset's prompt is a list of chat messages):
`[{"role": "assistant", "content": text}]` per rollout, as TRL passes them.
"""

from __future__ import annotations


def _text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def uses_keyword(completions, keyword, **kwargs) -> list[float]:
    """1.0 when the answer contains the row's keyword as a word, else 0.0."""
    return [float(word in _text(c).split()) for c, word in zip(completions, keyword, strict=True)]


def within_budget(completions, max_words, **kwargs) -> list[float]:
    """1.0 within the row's word budget, decaying as budget / length beyond it."""
    lengths = [len(_text(c).split()) for c in completions]
    return [1.0 if n <= int(k) else int(k) / n for n, k in zip(lengths, max_words, strict=True)]
