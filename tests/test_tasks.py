"""The embedded arithmetic task: determinism, independently recomputed answers, disjoint splits,
surface forms and the imperfect teacher."""

from __future__ import annotations

import re

import pytest

from ngrpo.tasks import generate
from ngrpo.tasks.arith import (
    MAX_VALUE,
    SPLITS,
    canonical_word,
    canonicalize,
    sloppy_solution,
    surface_variants,
)
from ngrpo.utils.errors import NgrpoError

# Written out by hand, not imported: the test's own reading of the number words.
WORDS = {
    w: i for i, w in enumerate([
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
        "nineteen", "twenty",
    ])
}  # fmt: skip
NUM = r"(\d+|[a-z]+)"
TRAIN_DIGEST = "eb3c36f22ba87348"  # the split the shipped base model was warmed up on


def number(text: str) -> int:
    return int(text) if text.isdigit() else WORDS[text]


def solve_from_text(problem: str) -> int:
    """An interpreter written from the problem text alone (not from the generator's code)."""
    sentences = [s.strip() for s in problem.split(" . ")]
    value = number(re.fullmatch(rf"\w+ has {NUM} \w+", sentences[0]).group(1))
    for sentence in sentences[1:-1]:
        if m := re.fullmatch(rf"\w+ (finds|gets|receives|wins|buys) {NUM} more", sentence):
            value += number(m.group(2))
        elif re.fullmatch(r"\w+ doubles the \w+", sentence):
            value *= 2
        elif m := re.fullmatch(rf"\w+ (loses|drops|uses|sells|spends) {NUM}", sentence):
            value -= number(m.group(2))
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
        steps = re.findall(rf"{NUM} ([-+*]) {NUM} = {NUM} \.", think)
        assert steps, problem.solution
        for a, op, b, result in steps:
            a, b, result = number(a), number(b), number(result)
            assert result == {"+": a + b, "-": a - b, "*": a * b}[op]
            assert 0 <= result <= MAX_VALUE
        assert number(steps[-1][3]) == int(problem.answer)
        assert after == f"The answer is \\boxed{{ {problem.answer} }} ."


def test_splits_are_disjoint_and_train_excludes_evaluation_problems():
    id_set = {p.problem for p in generate("arith-id")}
    ood_set = {p.problem for p in generate("arith-ood")}
    train_set = {p.problem for p in generate("arith-train", 5000)}
    assert len(id_set) == SPLITS["arith-id"].size and len(ood_set) == SPLITS["arith-ood"].size
    assert not id_set & ood_set
    assert not train_set & (id_set | ood_set)


def test_train_excludes_paraphrases_of_evaluation_problems():
    keys = {p.key for p in generate("arith-id")}
    assert not keys & {p.key for p in generate("arith-train", 5000)}
    assert len({p.key for p in generate("arith-id")}) == SPLITS["arith-id"].size


def test_ood_is_composed_differently():
    def start(p):
        return number(re.search(r"has (\w+)", p.problem).group(1))

    assert max(start(p) for p in generate("arith-id")) <= 20
    assert min(start(p) for p in generate("arith-ood")) >= 21


def test_long_split_has_longer_chains_than_training_ever_saw():
    def events(p):
        return len(p.problem.split(" . ")) - 2  # sentences minus the start and the question

    long = generate("arith-long")
    assert len(long) == SPLITS["arith-long"].size
    assert {events(p) for p in long} == {5, 6}
    assert {events(p) for p in generate("arith-train", 2000)} == {2, 3, 4}
    assert {events(p) for p in generate("arith-id")} <= {2, 3, 4}
    assert not {p.key for p in long} & {p.key for p in generate("arith-id")}


def test_training_split_of_the_shipped_base_is_unchanged():
    """The shipped base model was warmed up on `arith-train` (seed 0): adding an evaluation split
    must not move a single training problem (pinned digest of the first 2,000 stories)."""
    import hashlib

    stories = repr([p.key for p in generate("arith-train", 2000, seed=0)]).encode()
    assert hashlib.sha256(stories).hexdigest()[:16] == TRAIN_DIGEST


def test_canonical_form_maps_every_surface_variant_to_one_word():
    assert canonical_word("seven") == canonical_word("7") == "7"
    assert canonical_word("twenty") == "20" and canonical_word("21") == "21"
    assert {canonical_word(w) for w in surface_variants("wins")} == {"finds"}
    assert {canonical_word(w) for w in surface_variants("drops")} == {"loses"}
    assert {canonical_word(w) for w in ("so", "thus", "then")} == {"so"}
    assert canonical_word("apples") == "apples" and canonical_word("=") == "="
    # two rephrasings of one solution have one canonical form; another solution does not
    a = "7 + five = 12 . then 12 - 3 = nine ."
    b = "seven + 5 = twelve . so 12 - three = 9 ."
    assert canonicalize(a) == canonicalize(b) == "7 + 5 = 12 . so 12 - 3 = 9 ."
    assert canonicalize("7 + 5 = 12 .") != canonicalize(a)
    assert canonicalize("  seven \t+  5 ") == "7 + 5"  # white space folded


def test_surface_forms_vary_in_problems_and_solutions():
    problems = generate("arith-train", 400, seed=0)
    text = " ".join(p.problem + " " + p.solution for p in problems).split()
    for group in (
        ("7", "seven"),
        ("20", "twenty"),
        ("finds", "gets", "receives", "wins", "buys"),
        ("loses", "drops", "uses", "sells", "spends"),
        ("so", "thus", "then"),
    ):
        counts = [text.count(word) for word in group]
        assert min(counts) > 0.4 * max(counts), (group, counts)  # all forms, roughly evenly
    boxed = [p.solution.split("\\boxed{ ")[1].split(" }")[0] for p in problems]
    assert all(b.isdigit() for b in boxed)  # the answer is always in digits


def test_surface_variants_table():
    assert surface_variants("7") == {"7", "seven"} == surface_variants("seven")
    assert surface_variants("20") == {"20", "twenty"}
    assert surface_variants("21") == {"21"}  # no word form above twenty
    assert surface_variants("gets") == {"finds", "gets", "receives", "wins", "buys"}
    assert surface_variants("then") == {"so", "thus", "then"}
    assert surface_variants("apples") == {"apples"}
    # an equivalence relation: every member of a class has that same class
    for word in ["0", "zero", "13", "loses", "so", "buys"]:
        assert all(surface_variants(v) == surface_variants(word) for v in surface_variants(word))


def test_sloppy_teacher_skips_events():
    import random

    problems = generate("arith-train", 300, seed=0)
    rng = random.Random(0)
    assert all(sloppy_solution(p, rng, 0.0).split()[-3] == p.answer for p in problems)
    wrong = sum(sloppy_solution(p, rng, 0.3).split()[-3] != p.answer for p in problems)
    # P(no event skipped) = 0.7^events with 2-4 events: roughly half the answers are wrong
    assert 0.35 < wrong / len(problems) < 0.75
    for p in problems[:50]:  # the skipped chain is still correct arithmetic, in fewer steps
        sloppy = sloppy_solution(p, rng, 0.5)
        steps = re.findall(rf"{NUM} ([-+*]) {NUM} = {NUM} \.", sloppy)
        assert 1 <= len(steps) <= len(p.events)
        for a, op, b, result in steps:
            assert number(result) == {"+": number(a) + number(b), "-": number(a) - number(b),
                                      "*": number(a) * number(b)}[op]  # fmt: skip


def test_bad_split_and_seed_are_clear_errors():
    with pytest.raises(NgrpoError, match="unknown task split 'arith-xx'.*arith-id"):
        generate("arith-xx")
    with pytest.raises(NgrpoError, match="seed must be a non-negative integer"):
        generate("arith-id", seed=-1)
    with pytest.raises(NgrpoError, match="seed"):
        generate("arith-id", seed="1")
