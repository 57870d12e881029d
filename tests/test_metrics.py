"""pass@k against exact enumeration over subsets; mean@n; maj@n ties; benchmark summaries."""

from __future__ import annotations

from itertools import combinations

import pytest

from ngrpo.evaluation.metrics import (
    maj_at_n,
    mean_at_n,
    pass_at_k,
    powers_of_two_up_to,
    summarize_problem_set,
)


def pass_at_k_by_enumeration(correct: list[bool], k: int) -> float:
    """Fraction of the k-subsets of the samples that contain a correct one."""
    subsets = list(combinations(range(len(correct)), k))
    return sum(any(correct[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        correct = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(pass_at_k_by_enumeration(correct, k))


def test_pass_at_k_edges_and_errors():
    assert pass_at_k(32, 0, 32) == 0.0
    assert pass_at_k(32, 1, 32) == 1.0
    assert pass_at_k(32, 8, 1) == pytest.approx(8 / 32)
    for bad in [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_powers_of_two():
    assert powers_of_two_up_to(1) == [1]
    assert powers_of_two_up_to(32) == [1, 2, 4, 8, 16, 32]
    assert powers_of_two_up_to(6) == [1, 2, 4]


def test_mean_at_n():
    assert mean_at_n([True, False, False, True]) == 0.5
    with pytest.raises(ValueError):
        mean_at_n([])


def test_maj_at_n_votes_and_tie_policy():
    assert maj_at_n(["1", "2", "2"], [False, True, True]) == 1.0
    assert maj_at_n(["1", "1", "2"], [False, False, True]) == 0.0
    # tie between "1" and "2": the answer seen first wins, whatever its correctness
    assert maj_at_n(["1", "2", "2", "1"], [False, True, True, False]) == 0.0
    assert maj_at_n(["2", "1", "1", "2"], [True, False, False, True]) == 1.0
    # unparsed samples do not vote; nothing parsed scores 0
    assert maj_at_n([None, None, "3"], [False, False, True]) == 1.0
    assert maj_at_n([None, None], [False, False]) == 0.0
    with pytest.raises(ValueError):
        maj_at_n(["1"], [True, False])


def test_summary_averages_over_problems():
    answers = [["1", "1", None, "2"], ["5", "5", "5", "5"]]
    correct = [[True, True, False, False], [False, False, False, False]]
    summary = summarize_problem_set(answers, correct)
    assert summary["num_problems"] == 2 and summary["n"] == 4
    assert summary["mean@n"] == pytest.approx((0.5 + 0.0) / 2)
    assert summary["pass@k"]["1"] == pytest.approx(summary["mean@n"])
    assert summary["pass@k"]["4"] == pytest.approx(0.5)
    assert summary["pass@k"]["2"] == pytest.approx(pass_at_k_by_enumeration(correct[0], 2) / 2)
    assert summary["maj@n"] == pytest.approx(0.5)
    assert summary["unparsed"] == pytest.approx(1 / 8)
    with pytest.raises(ValueError):
        summarize_problem_set([["1"], ["1", "2"]], [[True], [True, False]])
    with pytest.raises(ValueError):
        summarize_problem_set([], [])
