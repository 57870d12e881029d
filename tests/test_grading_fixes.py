"""Issue 13's grading pitfalls: tiny magnitudes, radicals, and maj@n over equivalence classes."""

from __future__ import annotations

import pytest

from ngrpo.data import Example
from ngrpo.evaluation import SampleResult, summarize
from ngrpo.rewards import GradingPool, grade
from ngrpo.rewards.classes import MAX_DISTINCT, equivalence_classes


@pytest.fixture(scope="module")
def pool():
    # Verdicts, not speed: a generous deadline keeps a loaded CI machine from turning a slow
    # comparison into a "timeout" (the deadline itself is tested in test_rewards.py).
    with GradingPool(num_workers=2, timeout_s=30.0) as grading_pool:
        yield grading_pool


def boxed(answer: str) -> str:
    return f"<think> work </think> so \\boxed{{{answer}}}"


# (prediction, gold): math-verify's absolute tolerance accepted these; relative comparison must not
TINY_DIFFERENT = [
    ("1/2004!", "1/2006!"),
    ("\\frac{1}{2004!}", "\\frac{1}{2006!}"),
    ("0", "\\frac{1}{2006!}"),
    ("10^{-20}", "2\\cdot 10^{-20}"),
    ("0.0000001", "0.0000002"),
    ("3\\times 10^{-9}", "3.1\\times 10^{-9}"),
]
TINY_EQUAL = [
    ("\\frac{1}{2004!}", "1/2004!"),
    ("10^{-20}", "1.0000001\\cdot 10^{-20}"),  # within the relative tolerance (1e-6)
    ("\\frac{1}{10^{8}}", "0.00000001"),
    ("0", "0.0"),
    ("\\frac{1}{3}", "0.333333"),  # the absolute policy above 1e-6 is unchanged
]


@pytest.mark.parametrize(("pred", "gold"), TINY_DIFFERENT)
def test_tiny_magnitudes_are_compared_relatively(pred, gold, pool):
    assert not grade(boxed(pred), gold, pool=pool).correct
    assert not grade(boxed(gold), pred, pool=pool).correct


@pytest.mark.parametrize(("pred", "gold"), TINY_EQUAL)
def test_tiny_magnitudes_still_equal_when_they_are(pred, gold, pool):
    assert grade(boxed(pred), gold, pool=pool).correct
    assert grade(boxed(gold), pred, pool=pool).correct


RADICALS_EQUAL = [
    ("\\sqrt{1/n}", "\\frac{1}{\\sqrt{n}}"),
    ("\\sqrt{\\frac{1}{n}}", "1/\\sqrt{n}"),
    ("\\sqrt{\\frac{a}{b}}", "\\frac{\\sqrt{a}}{\\sqrt{b}}"),
    ("\\sqrt{ab}", "\\sqrt{a}\\sqrt{b}"),
    ("\\sqrt{x^3}", "x\\sqrt{x}"),
    ("\\sqrt[3]{x^6}", "x^2"),
    ("x^{1/2}", "\\sqrt{x}"),
    ("\\sqrt{\\frac{2}{x}}", "\\frac{\\sqrt{2x}}{x}"),
    ("\\frac{\\sqrt{n}}{n}", "\\sqrt{1/n}"),
    ("\\frac{1}{\\sqrt{a}+\\sqrt{b}}", "\\frac{\\sqrt{a}-\\sqrt{b}}{a-b}"),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
]
RADICALS_DIFFERENT = [
    ("\\sqrt{1/n}", "\\sqrt{n}"),
    ("\\sqrt{x}", "x"),
    ("\\sqrt{2x}", "2\\sqrt{x}"),
    ("|x|", "x"),  # no radical: the positive reading is not applied
    ("x = \\sqrt{2}", "x = 2"),
    ("\\sqrt{n}", "\\sqrt{n+1}"),
]


@pytest.mark.parametrize(("pred", "gold"), RADICALS_EQUAL)
def test_radicals_are_equal_for_positive_symbols(pred, gold, pool):
    assert grade(boxed(pred), gold, pool=pool).correct
    assert grade(boxed(gold), pred, pool=pool).correct


@pytest.mark.parametrize(("pred", "gold"), RADICALS_DIFFERENT)
def test_different_radicals_stay_different(pred, gold, pool):
    assert not grade(boxed(pred), gold, pool=pool).correct
    assert not grade(boxed(gold), pred, pool=pool).correct


# ---- maj@n ----------------------------------------------------------------------------------


def test_equivalence_classes_merge_equal_answers_and_keep_first_spelling(pool):
    rows = [
        ["0.5", "\\frac{1}{2}", "1/2", "3", "3", None],
        ["\\sqrt{1/n}", "\\frac{1}{\\sqrt{n}}", "n"],
        ["x", "2x"],
    ]
    assert equivalence_classes(rows, "math", pool) == [
        ["0.5", "0.5", "0.5", "3", "3", None],
        ["\\sqrt{1/n}", "\\sqrt{1/n}", "n"],
        ["x", "2x"],
    ]
    assert equivalence_classes([["0.5", "1/2"]], "exact", pool) == [["0.5", "1/2"]]


def test_equivalence_classes_compare_only_the_most_frequent_answers(pool):
    # MAX_DISTINCT + 2 distinct answers; the two rarest (last seen) are equivalent but not compared
    row = [str(i) for i in range(MAX_DISTINCT) for _ in range(2)] + ["0.25", "1/4"]
    assert equivalence_classes([row], "math", pool)[0][-2:] == ["0.25", "1/4"]
    row = [str(i) for i in range(MAX_DISTINCT - 2) for _ in range(2)] + ["0.25", "1/4"]
    assert equivalence_classes([row], "math", pool)[0][-2:] == ["0.25", "0.25"]


def test_maj_at_n_votes_on_equivalent_answers(pool):
    # 3 samples say 1/2 in three spellings (right), 2 say 3 (wrong): the text vote would pick 3
    example = Example("p", "q", "0.5")
    answers = ["3", "0.5", "3", "\\frac{1}{2}", "1/2"]
    samples = [SampleResult("p", j, boxed(a), a, a != "3") for j, a in enumerate(answers)]
    summary = summarize([example], samples, n=5, pool=pool)
    assert summary["maj@n"] == 1.0
    assert summary["mean@n"] == pytest.approx(0.6)
    text_vote = summarize([example], samples, n=5, grader="exact", pool=pool)
    assert text_vote["maj@n"] == 0.0
