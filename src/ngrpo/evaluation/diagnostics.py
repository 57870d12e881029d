"""Rollout diversity diagnostics: how different are the responses of one GRPO group?

Pure functions over one training step's rollouts, given as texts and rewards grouped per prompt
(`groups[i][j]` is response j to prompt i). `rollout_diagnostics` returns a flat dict of
namespaced scalars for `metrics.jsonl`:

- `diversity/distinct_answers`: number of distinct final answers per group, mean over groups.
  Answers are `ngrpo.rewards.extract_answer` normalised like maj@n (`normalize_text`); a response
  with no answer does not count, so a group with no parsed answer scores 0.
- `diversity/distinct_2`, `diversity/distinct_3`: distinct n-grams / total n-grams of the
  reasoning text (between `<think>` and `</think>`), computed **within each group** and averaged
  over groups (groups without any n-gram are skipped). Within-group rather than over the whole step
  because GRPO's learning signal comes from differences inside a group; a step-level ratio would
  mostly measure that different prompts have different solutions.
- `diversity/pairwise_edit`: token-level Levenshtein distance divided by the longer length, over
  all pairs of whole responses in a group, mean per group, then mean over groups (groups of one
  response are skipped).
- `diversity/zero_adv_frac`: fraction of groups whose rewards are all equal (GRPO advantage 0 for
  every response: the group teaches nothing).
- `rollout/mixed_frac`, `rollout/embed_shift`: passed through unchanged from `RolloutBatch.stats`
  when given (the fraction of eligible positions that were mixed, and the mean relative shift
  ‖ẽ − e(y)‖ / ‖e(y)‖ over mixed positions).

Semantic diversity, when a task gives its canonical form (`canonicalize`: a text with every word
replaced by one representative of its surface forms, e.g. `ngrpo.tasks.arith.canonicalize`:
`seven` -> `7`, `wins` -> `finds`, `then` -> `so`; the trainer passes it on the embedded task).
Distinct-n and edit distance count a rephrasing (`7` -> `seven`) as diversity; these do not:
- `diversity/canonical_paths`: distinct canonical reasoning texts per group, mean over groups (a
  group of pure rephrasings of one solution scores 1);
- `diversity/rephrase_pairs`: share of a group's response pairs whose reasoning differs in words
  but not in canonical form (rephrase-only duplicates; verbatim copies are not counted), mean over
  groups of at least two responses;
- `diversity/correct_paths`: distinct canonical reasoning texts among the group's correct
  responses (reward > 0), mean over groups (0 for a group with none).

`neighbor_synonym_frac` (logged as `rollout/neighbor_synonym_frac` when training on the embedded
task) reads the rollout's soft-input records instead of texts: the fraction of mixed positions whose
second candidate (N-GRPO: the nearest neighbour; top-k strategies: the runner-up token) is a
different token of the same surface-variant class as the first (the anchor), e.g. `seven` mixed
into `7` (`ngrpo.tasks.arith.surface_variants`).

"Tokens" are whitespace-separated words by default (`str.split`). The embedded tokenizer is
word-level, so on the embedded task these are exactly its tokens; pass `tokenize=` (e.g. a
tokenizer's `tokenize`) to measure sub-word tokens of a real model. Distinct-n and edit distance
are standard text-diversity measures (Li et al. 2016, "A Diversity-Promoting Objective Function for
Neural Conversation Models"); the N-GRPO paper motivates its method with semantic consistency and
diversity of rollouts but does not define these statistics, so the definitions here are ours.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from itertools import combinations
from typing import TYPE_CHECKING

from ngrpo.rewards.equivalence import normalize_text
from ngrpo.rewards.extract import extract_answer

if TYPE_CHECKING:
    import torch

THINK_START, THINK_END = "<think>", "</think>"
PASS_THROUGH = ("rollout/mixed_frac", "rollout/embed_shift")

Tokenize = Callable[[str], Sequence[Hashable]]
Canonicalize = Callable[[str], str]


def reasoning_text(response: str) -> str:
    """The text between the first `<think>` (or the start) and the first `</think>` after it (or
    the end): the part of a response where mixing may happen."""
    start = response.find(THINK_START)
    start = 0 if start < 0 else start + len(THINK_START)
    end = response.find(THINK_END, start)
    return response[start:] if end < 0 else response[start:end]


def ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple]:
    """All contiguous n-grams of a token sequence (none when it is shorter than n)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(sequences: Sequence[Sequence[Hashable]], n: int) -> float | None:
    """Distinct n-grams / total n-grams over all `sequences` together; None when there are none."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [gram for tokens in sequences for gram in ngrams(tokens, n)]
    return len(set(grams)) / len(grams) if grams else None


def levenshtein(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1) between two sequences.

    Bit-parallel (Myers 1999, in Hyyrö's 2001 formulation for the global distance): the column of
    the dynamic-programming table is kept as vertical +1/-1 deltas in two Python ints, one bit per
    element of the shorter sequence, so the cost is O(len(a)) big-int operations instead of
    O(len(a) * len(b)) Python steps. Tested against the textbook recursion.
    """
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    match: dict[Hashable, int] = {}  # element -> bit mask of its positions in b
    for i, item in enumerate(b):
        match[item] = match.get(item, 0) | (1 << i)
    mask, last = (1 << m) - 1, 1 << (m - 1)
    plus, minus, score = mask, 0, m  # vertical deltas of the current column; D[len(b)][j]
    for item in a:
        eq = match.get(item, 0)
        xv = eq | minus
        xh = (((eq & plus) + plus) ^ plus) | eq
        h_plus = minus | (~(xh | plus) & mask)
        h_minus = plus & xh
        score += bool(h_plus & last) - bool(h_minus & last)
        h_plus = ((h_plus << 1) | 1) & mask  # row 0 grows by one per column: shift in a +1
        h_minus = (h_minus << 1) & mask
        plus = h_minus | (~(xv | h_plus) & mask)
        minus = h_plus & xv
    return score


def normalized_edit_distance(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Levenshtein distance / the longer length, in [0, 1]; 0 for two empty sequences."""
    longest = max(len(a), len(b))
    return levenshtein(a, b) / longest if longest else 0.0


def mean_pairwise_edit(group: Sequence[Sequence[Hashable]]) -> float | None:
    """Mean normalised edit distance over all pairs of a group; None for fewer than 2 members."""
    pairs = list(combinations(group, 2))
    if not pairs:
        return None
    return sum(normalized_edit_distance(a, b) for a, b in pairs) / len(pairs)


def distinct_answers(responses: Sequence[str]) -> int:
    """Number of distinct (normalised) extracted final answers; unparsed responses do not count."""
    answers = (extract_answer(response) for response in responses)
    return len({normalize_text(answer) for answer in answers if answer is not None})


def _reasoning(response: str) -> str:
    """The reasoning text with white space folded (a difference in spacing is no rephrasing)."""
    return " ".join(reasoning_text(response).split())


def canonical_paths(group: Sequence[str], canonicalize: Canonicalize) -> int:
    """Number of distinct reasoning paths in a group once surface forms are canonicalised."""
    return len({canonicalize(_reasoning(response)) for response in group})


def rephrase_pairs(group: Sequence[str], canonicalize: Canonicalize) -> float | None:
    """Share of response pairs whose reasoning differs only in rephrasing (different words, same
    canonical form); None for fewer than 2 responses."""
    texts = [_reasoning(response) for response in group]
    pairs = list(combinations([(text, canonicalize(text)) for text in texts], 2))
    if not pairs:
        return None
    return sum(a != b and ca == cb for (a, ca), (b, cb) in pairs) / len(pairs)


def correct_paths(
    group: Sequence[str], rewards: Sequence[float], canonicalize: Canonicalize
) -> int:
    """Number of distinct canonical reasoning paths among the correct responses (reward > 0)."""
    if len(group) != len(rewards):
        raise ValueError(f"{len(group)} responses but {len(rewards)} rewards")
    kept = [response for response, reward in zip(group, rewards, strict=True) if reward > 0]
    return canonical_paths(kept, canonicalize)


def all_equal(rewards: Sequence[float], tol: float = 1e-9) -> bool:
    """True when every reward of a group is the same (the group's GRPO advantages are all 0)."""
    return max(rewards) - min(rewards) <= tol


def _mean(values: Sequence[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else 0.0


def group_diversity(
    groups: Sequence[Sequence[str]],
    tokenize: Tokenize = str.split,
    canonicalize: Canonicalize | None = None,
) -> dict[str, float]:
    """The text-only statistics (no rewards): `diversity/distinct_answers`, `distinct_2`,
    `distinct_3` and `pairwise_edit`, and with `canonicalize` also `canonical_paths` and
    `rephrase_pairs`, each a mean over groups (see the module docstring)."""
    if not groups or any(len(group) == 0 for group in groups):
        raise ValueError("diversity needs at least one group and no empty group")
    tokens = [[list(tokenize(text)) for text in group] for group in groups]
    reasoning = [[list(tokenize(reasoning_text(text))) for text in group] for group in groups]
    metrics = {
        "diversity/distinct_answers": _mean([distinct_answers(group) for group in groups]),
        "diversity/distinct_2": _mean([distinct_n(group, 2) for group in reasoning]),
        "diversity/distinct_3": _mean([distinct_n(group, 3) for group in reasoning]),
        "diversity/pairwise_edit": _mean([mean_pairwise_edit(group) for group in tokens]),
    }
    if canonicalize is not None:
        metrics["diversity/canonical_paths"] = _mean(
            [canonical_paths(group, canonicalize) for group in groups]
        )
        metrics["diversity/rephrase_pairs"] = _mean(
            [rephrase_pairs(group, canonicalize) for group in groups]
        )
    return metrics


def rollout_diagnostics(
    groups: Sequence[Sequence[str]],
    rewards: Sequence[Sequence[float]],
    stats: Mapping[str, float] | None = None,
    tokenize: Tokenize = str.split,
    canonicalize: Canonicalize | None = None,
) -> dict[str, float]:
    """All diagnostics of one training step as a flat dict (keys in the module docstring).

    `groups[i]` are the decoded responses to prompt i, `rewards[i]` their rewards (same shapes);
    `stats` is the step's `RolloutBatch.stats` (only the mixing keys are copied); `canonicalize`
    (the task's canonical form) adds the semantic-diversity keys.
    """
    if len(groups) != len(rewards) or any(
        len(g) != len(r) for g, r in zip(groups, rewards, strict=False)
    ):
        raise ValueError("groups and rewards must have the same shape (one reward per response)")
    metrics = group_diversity(groups, tokenize, canonicalize)
    metrics["diversity/zero_adv_frac"] = sum(all_equal(r) for r in rewards) / len(rewards)
    if canonicalize is not None:
        metrics["diversity/correct_paths"] = _mean(
            [correct_paths(g, r, canonicalize) for g, r in zip(groups, rewards, strict=True)]
        )
    for key in PASS_THROUGH:
        if stats is not None and key in stats:
            metrics[key] = float(stats[key])
    return metrics


def split_groups(items: Sequence, group_size: int) -> list[list]:
    """Prompt-major rows (row i*n + j = sample j of prompt i, as `RolloutBatch`) -> groups."""
    if group_size < 1 or len(items) % group_size:
        raise ValueError(f"{len(items)} rows do not split into groups of {group_size}")
    return [list(items[i : i + group_size]) for i in range(0, len(items), group_size)]


def neighbor_synonym_frac(ids: torch.Tensor, mixed: torch.Tensor, classes: torch.Tensor) -> float:
    """Fraction of mixed positions whose candidate 1 is a surface variant of candidate 0.

    ids (N, T, K) candidate ids of the recorded inputs, mixed (N, T) bool, classes (V,) a class id
    per token (`ngrpo.tasks.arith.variant_classes`). 0.0 when nothing was mixed or K = 1.
    """
    if ids.shape[-1] < 2 or not bool(mixed.any()):
        return 0.0
    anchor, neighbour = ids[..., 0][mixed], ids[..., 1][mixed]  # (M,), (M,)
    classes = classes.to(ids.device)
    same = (classes[anchor] == classes[neighbour]) & (anchor != neighbour)  # (M,)
    return float(same.float().mean())
