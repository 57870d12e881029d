"""Evaluation metrics over n sampled answers per problem: pass@k, mean@n, maj@n (pure functions).

- `pass_at_k(n, c, k)`: the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language
  Models Trained on Code", eq. 1), `1 - C(n-c, k) / C(n, k)`: the probability that at least one of
  k samples drawn without replacement from the n is correct. Computed as the product
  `1 - prod_{i=n-c+1}^{n} (1 - k / i)` (their numerically stable form) rather than with binomials.
- `mean_at_n`: the fraction of the n samples that are correct (what the N-GRPO paper calls
  pass@1 with 32 samples; equal to `pass_at_k(n, c, 1)`).
- `maj_at_n`: majority vote over the extracted answers. Unparsed samples (None) do not vote; a
  problem with no parsed answer scores 0. Ties between equally frequent answers go to the answer
  that appears first in sample order, which is fixed before grading and never looks at
  correctness (so a tie is not resolved in the model's favour).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (requires 0 <= c <= n, 1 <= k <= n)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def powers_of_two_up_to(n: int) -> list[int]:
    """The k values reported for pass@k: 1, 2, 4, ... <= n."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks


def mean_at_n(correct: Sequence[bool]) -> float:
    """Fraction of samples that are correct."""
    if not correct:
        raise ValueError("mean@n of zero samples")
    return sum(bool(x) for x in correct) / len(correct)


def maj_at_n(answers: Sequence[str | None], correct: Sequence[bool]) -> float:
    """1.0 when the most frequent parsed answer is correct (ties: first seen), else 0.0.

    `answers` are comparison keys (e.g. normalised extracted answers), `correct` the grade of each.
    """
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} grades")
    votes = Counter(answer for answer in answers if answer is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winner = next(answer for answer in answers if answer is not None and votes[answer] == top)
    return float(correct[answers.index(winner)])


def summarize_problem_set(
    answers: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]]
) -> dict:
    """Benchmark-level metrics averaged over problems, each with the same number n of samples.

    Returns `{"num_problems", "n", "mean@n", "pass@k": {"1": ..., "2": ..., ...}, "maj@n",
    "unparsed"}` where `unparsed` is the fraction of samples with no extracted answer.
    """
    if not correct:
        raise ValueError("no problems to summarize")
    n = len(correct[0])
    if any(len(row) != n for row in correct):
        raise ValueError("every problem needs the same number of samples")
    num = len(correct)
    counts = [sum(bool(x) for x in row) for row in correct]
    return {
        "num_problems": num,
        "n": n,
        "mean@n": sum(mean_at_n(row) for row in correct) / num,
        "pass@k": {
            str(k): sum(pass_at_k(n, c, k) for c in counts) / num for k in powers_of_two_up_to(n)
        },
        "maj@n": sum(maj_at_n(a, row) for a, row in zip(answers, correct, strict=True)) / num,
        "unparsed": sum(a is None for row in answers for a in row) / (num * n),
    }
