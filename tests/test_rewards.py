"""Rewards: extraction, equivalence both ways, multiple choice, shipped golds, bad input."""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import pytest

from ngrpo.data import benchmark_names, load_benchmark
from ngrpo.rewards import (
    GRADERS,
    REWARD_FUNCTIONS,
    GradingPool,
    extract_answer,
    extract_choice,
    grade,
    grade_batch,
    last_boxed,
    normalize_gold,
)
from ngrpo.rewards.equivalence import plain_number, quick_equal
from ngrpo.utils.errors import NgrpoError


@pytest.fixture(scope="module")
def pool():
    with GradingPool(num_workers=2) as grading_pool:
        yield grading_pool


def wrap(answer: str) -> str:
    return f"<think> some reasoning \\boxed{{999}} </think> The answer is \\boxed{{{answer}}}."


# ---- extraction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("\\boxed{42}", "42"),
        ("a \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
        ("\\fbox{7}", "7"),
        ("\\boxed {3}", "3"),
        ("\\boxed 5 is it", "5"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{ 18 } .", "18"),
        ("<think> \\boxed{1} </think> \\boxed{2}", "2"),
        ("<think> \\boxed{1} </think> no box here", None),
        ("<think> a </think> b </think> \\boxed{3}", "3"),
        ("work\n#### 1,234", "1,234"),
        ("\\boxed{1} and an unbalanced \\boxed{2", "1"),
        ("the answer is 12", None),
        ("", None),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_last_number_fallback_is_off_by_default_for_math():
    assert extract_answer("so we get 12 apples") is None
    assert extract_answer("so we get -1,234.5 apples", fallback_last_number=True) == "-1,234.5"
    assert grade("so we get 12 apples", "12").correct is False
    assert grade("so we get 12 apples", "12", "math_lenient").correct is True


def test_last_boxed_prefers_the_last_complete_box():
    assert last_boxed("\\boxed{a{b}c}") == "a{b}c"
    assert last_boxed("\\boxed{x} \\boxed{") == "x"
    assert last_boxed("no box") is None


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Answer: B", "B"),
        ("I think... Answer: (c)", None),  # lower-case letters are words, not choices
        ("answer: (C)", "C"),
        ("The answer is D.", "D"),
        ("Answer: A ... wait, Answer: C", "C"),
        ("<think> Answer: A </think> Answer: **B**", "B"),
        ("so \\boxed{D}", "D"),
        ("\\boxed{\\text{(A)}}", "A"),
        ("Answer: Because", None),
        ("no choice here", None),
    ],
)
def test_extract_choice(response, expected):
    assert extract_choice(response) == expected


def test_multiple_choice_grading():
    assert grade("Answer: B", "B", "multiple_choice").correct
    assert grade("Answer: B", "(b)", "multiple_choice").correct
    assert not grade("Answer: C", "B", "multiple_choice").correct
    assert not grade("I cannot decide", "B", "multiple_choice").correct


# ---- equivalence --------------------------------------------------------------------------------

EQUIVALENT = [
    ("\\frac{1}{2}", "0.5"),
    ("\\frac{1}{2}", "\\dfrac{1}{2}"),
    ("\\frac12", "\\frac{1}{2}"),
    ("\\tfrac{3}{4}", "0.75"),
    ("-\\frac{1}{3}", "-1/3"),
    ("50\\%", "50"),
    ("50\\%", "0.5"),
    ("90^\\circ", "90"),
    ("45^{\\circ}", "45"),
    ("[1, 2)", "[1,2)"),
    ("(-\\infty, 3]", "(-\\infty,3]"),
    ("(1, 2)", "\\left( 1, 2 \\right)"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
    ("\\{1, 2, 3\\}", "\\{3, 2, 1\\}"),
    ("10\\text{ cm}", "10"),
    ("5 \\text{ dollars}", "5"),
    ("-3", "- 3"),
    ("-3", "-3.0"),
    ("x = 3", "3"),
    ("1,234", "1234"),
    ("\\$1,234", "1234"),
    ("$18", "18"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("x^2 + 2x + 1", "(x+1)^2"),
]


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_equivalent_both_ways(a, b, pool):
    assert grade(wrap(a), b, pool=pool).correct, (a, b)
    assert grade(wrap(b), a, pool=pool).correct, (b, a)


NOT_EQUIVALENT = [
    ("\\frac{1}{2}", "0.51"),
    ("\\frac{1}{3}", "0.3"),
    ("[1, 2)", "(1, 2]"),
    ("(1, 2)", "(2, 1)"),
    ("\\{1, 2\\}", "\\{1, 3\\}"),
    ("-3", "3"),
    ("1,234", "1235"),
    ("x = 3", "4"),
    ("2\\sqrt{2}", "\\sqrt{2}"),
]


@pytest.mark.parametrize(("a", "b"), NOT_EQUIVALENT)
def test_not_equivalent_both_ways(a, b, pool):
    assert not grade(wrap(a), b, pool=pool).correct, (a, b)
    assert not grade(wrap(b), a, pool=pool).correct, (b, a)


def test_gsm8k_style_gold_and_response():
    assert grade("She makes $18 every day.\n#### 18", "Janet ... = $18\n#### 18").correct
    assert grade("#### $1,080", "1080").correct
    assert not grade("#### 1,081", "1080").correct


def test_quick_check_decides_plain_numbers_without_the_pool():
    gold = normalize_gold("18")
    assert quick_equal("18", gold) is True
    assert quick_equal("18.0", gold) is True
    assert quick_equal("19", gold) is False
    assert quick_equal("18.0000001", gold) is None  # within rounding: math-verify decides
    assert quick_equal("\\frac{36}{2}", gold) is None
    assert plain_number("-1,234.50") == Fraction("-1234.5")
    assert plain_number("\\$12") == 12
    assert plain_number("1,2") is None


def test_gold_normalisation_is_cached():
    normalize_gold.cache_clear()
    first = normalize_gold("\\dfrac{1}{2}")
    assert normalize_gold("\\dfrac{1}{2}") is first
    assert normalize_gold.cache_info().hits == 1
    assert first.key == "\\frac{1}{2}"


# ---- registry -----------------------------------------------------------------------------------


def test_reward_registry():
    assert {"math", "multiple_choice", "exact"} <= set(REWARD_FUNCTIONS)
    assert set(REWARD_FUNCTIONS) == set(GRADERS)
    assert REWARD_FUNCTIONS["math"](wrap("\\frac12"), "0.5") == 1.0
    assert REWARD_FUNCTIONS["math"](wrap("7"), "0.5") == 0.0
    assert REWARD_FUNCTIONS["exact"](wrap("\\frac12"), "0.5") == 0.0
    assert REWARD_FUNCTIONS["exact"](wrap(" 0.5 "), "0.5") == 1.0
    assert REWARD_FUNCTIONS["multiple_choice"]("Answer: A", "A") == 1.0
    with pytest.raises(NgrpoError, match="unknown grader"):
        grade("x", "y", kind="fuzzy")
    with pytest.raises(ValueError):
        grade_batch(["a"], ["b", "c"])


# ---- shipped benchmarks: every gold grades itself ----------------------------------------------

# Every gold grades itself correct. These golds also accept our changed answer (math-verify
# limitations, kept rather than patched around):
CHANGED_ANSWER_EXCEPTIONS: dict[str, str] = {
    # parsed as 2/3: the subscripted symbols E_{1}, E_{2} are dropped, so any coefficient of E_1
    # gives the same value
    "minervamath/269": "\\frac{1}{3} E_{1}+\\frac{2}{3} E_{2}",
    # symbols are case-folded, so the gold `N=n` parses as Eq(n, n) and any right side matches
    "olympiadbench/122": "$N=n$",
}


def _changed(answer: str) -> str:
    """A different answer: the number plus one, else its first digit bumped, else `+ 1` appended."""
    number = plain_number(answer)
    if number is not None:
        return str(number + 1) if number.denominator == 1 else str(float(number) + 1)
    digits = [i for i, char in enumerate(answer) if char.isdigit()]
    if digits:
        i = digits[0]
        return answer[:i] + str((int(answer[i]) + 1) % 10) + answer[i + 1 :]
    return f"{answer} + 1"


@pytest.mark.parametrize("name", [n for n in benchmark_names() if not n.startswith("arith-train")])
def test_every_shipped_gold_grades_itself(name, pool):
    examples = load_benchmark(name, limit=100 if name.startswith("arith") else None).examples
    golds = [e.answer for e in examples]
    right = grade_batch([wrap(g) for g in golds], golds, pool=pool)
    wrong = grade_batch([wrap(_changed(g)) for g in golds], golds, pool=pool)
    failures = [
        (e.id, e.answer, r.reason, w.reason)
        for e, r, w in zip(examples, right, wrong, strict=True)
        if not r.correct or (w.correct and e.id not in CHANGED_ANSWER_EXCEPTIONS)
    ]
    assert failures == [], "\n".join(map(repr, failures))


# ---- safety -------------------------------------------------------------------------------------

PATHOLOGICAL = {
    "code": "\\boxed{__import__('os').system('touch pwned')}",
    "eval": "\\boxed{eval(\"open('pwned','w')\")}",
    "power tower": "\\boxed{10^{10^{10^{10}}}}",
    "long": "\\boxed{" + "9" * 50_000 + "}",
    "long text": "1 + " * 50_000,
    "nested": "\\boxed{" + "{" * 1000 + "1" + "}" * 1000 + "}",
    "nested short": "\\boxed{" + "{" * 400 + "1" + "}" * 400 + "}",  # under the length cap
    "unbalanced": "\\boxed{" * 1000 + "1",
    "unbalanced close": "\\boxed{1" + "}" * 1000 + "{" * 1000,
    "control": "\\boxed{1\x00\x07\x1b[31m2}",
    "binary": "\\boxed{" + bytes(range(256)).decode("latin-1") + "}",
    "spaces": "Answer:" + " " * 50_000 + "!",
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_answers_are_incorrect_fast_and_never_executed(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grade(wrap("\\frac12"), "0.5")  # start the default pool: the bound is per call, once warm
    slowest = 0.0
    for _ in range(100):
        for kind in ("math", "multiple_choice"):
            start = time.perf_counter()
            result = grade(PATHOLOGICAL[name], "5", kind)
            slowest = max(slowest, time.perf_counter() - start)
            assert result.correct is False
    assert slowest < 2.0  # the bound, per call
    assert not (tmp_path / "pwned").exists()


def test_pool_kills_a_slow_comparison_and_keeps_working(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The gold has a nested power too, so screening lets the tower through to math-verify.
    with GradingPool(num_workers=1, timeout_s=1.0) as slow_pool:
        start = time.perf_counter()
        result = grade(PATHOLOGICAL["power tower"], "10^{10^{10}}", pool=slow_pool)
        elapsed = time.perf_counter() - start
        assert (result.correct, result.reason) == (False, "timeout")
        assert elapsed < 2.0
        assert grade(wrap("\\frac12"), "0.5", pool=slow_pool).correct  # replacement worker
    assert not (tmp_path / "pwned").exists()


def test_grading_from_threads(pool):
    """math-verify's signal timeout fails outside the main thread; ours must not."""
    results: list[bool] = []

    def work():
        results.extend(g.correct for g in grade_batch([wrap("\\frac{2}{4}")] * 5, ["0.5"] * 5))
        results.append(grade(wrap("\\sqrt{4}"), "2", pool=pool).correct)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [True] * 18
