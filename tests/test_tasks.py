"""The embedded arithmetic task: determinism, independently recomputed answers, disjoint splits."""

from __future__ import annotations

import re

import pytest

from ngrpo.errors import NgrpoError
from ngrpo.tasks import generate
from ngrpo.tasks.arith import MAX_VALUE, SPLITS


def solve_from_text(problem: str) -> int:
    """An interpreter written from the problem text alone (not from the generator's code)."""
    sentences = [s.strip() for s in problem.split(" . ")]
    value = int(re.fullmatch(r"\w+ has (\d+) \w+", sentences[0]).group(1))
    for sentence in sentences[1:-1]:
        if m := re.fullmatch(r"\w+ [a-z]+ (\d+) more", sentence):
            value += int(m.group(1))
        elif re.fullmatch(r"\w+ doubles the \w+", sentence):
            value *= 2
        elif m := re.fullmatch(r"\w+ [a-z ]+ (\d+)", sentence):
            value -= int(m.group(1))
        else:
            raise AssertionError(f"unparsed sentence {sentence!r}")
    assert re.fullmatch(r"How many \w+ does \w+ have now \?", sentences[-1])
    return value


def test_generation_is_deterministic_for_a_seed():
    assert generate("arith-id", 50, seed=3) == generate("arith-id", 50, seed=3)
    assert generate("arith-id", 50, seed=3) != generate("arith-id", 50, seed=4)
    assert generate("arith-id", 20) == generate("arith-id", 50)[:20]


@pytest.mark.parametrize("split", list(SPLITS))
def test_gold_answers_match_an_independent_interpreter(split):
    for problem in generate(split, 300, seed=1):
        assert int(problem.answer) == solve_from_text(problem.problem)


@pytest.mark.parametrize("split", list(SPLITS))
def test_worked_solutions_are_correct_arithmetic(split):
    for problem in generate(split, 200, seed=2):
        think, after = problem.solution.split(" </think> ")
        assert think.startswith("<think> ")
        steps = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", think)
        assert steps, problem.solution
        for a, op, b, result in steps:
            a, b, result = int(a), int(b), int(result)
            assert result == {"+": a + b, "-": a - b, "*": a * b}[op]
            assert 0 <= result <= MAX_VALUE
        assert int(steps[-1][3]) == int(problem.answer)
        assert after == f"The answer is \\boxed{{ {problem.answer} }} ."


def test_splits_are_disjoint_and_train_excludes_evaluation_problems():
    id_set = {p.problem for p in generate("arith-id")}
    ood_set = {p.problem for p in generate("arith-ood")}
    train_set = {p.problem for p in generate("arith-train", 5000)}
    assert len(id_set) == SPLITS["arith-id"].size and len(ood_set) == SPLITS["arith-ood"].size
    assert not id_set & ood_set
    assert not train_set & (id_set | ood_set)


def test_ood_is_composed_differently():
    def start(p):
        return int(re.search(r"has (\d+)", p.problem).group(1))

    assert max(start(p) for p in generate("arith-id")) <= 20
    assert min(start(p) for p in generate("arith-ood")) >= 21


def test_bad_split_and_seed_are_clear_errors():
    with pytest.raises(NgrpoError, match="unknown task split 'arith-xx'.*arith-id"):
        generate("arith-xx")
    with pytest.raises(NgrpoError, match="seed must be a non-negative integer"):
        generate("arith-id", seed=-1)
    with pytest.raises(NgrpoError, match="seed"):
        generate("arith-id", seed="1")
