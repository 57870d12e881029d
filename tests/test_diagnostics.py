"""Rollout diversity diagnostics against naive reference implementations on hand-made groups."""

import functools
import random

import pytest

from ngrpo.evaluation.diagnostics import (
    canonical_paths,
    correct_paths,
    distinct_answers,
    distinct_n,
    group_diversity,
    levenshtein,
    mean_pairwise_edit,
    normalized_edit_distance,
    reasoning_text,
    rephrase_pairs,
    rollout_diagnostics,
    split_groups,
)
from ngrpo.tasks.arith import canonicalize


def naive_levenshtein(a, b) -> int:
    """The textbook recursion, memoised."""

    @functools.cache
    def d(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


def naive_distinct(sequences, n):
    seen, total = [], 0
    for tokens in sequences:
        for i in range(len(tokens) - n + 1):
            gram = tuple(tokens[i : i + n])
            total += 1
            if gram not in seen:
                seen.append(gram)
    return len(seen) / total if total else None


def test_levenshtein_matches_the_recursion_on_random_sequences():
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abc") for _ in range(rng.randint(0, 9))]
        b = [rng.choice("abc") for _ in range(rng.randint(0, 9))]
        assert levenshtein(a, b) == naive_levenshtein(a, b) == levenshtein(b, a)


def test_levenshtein_matches_a_full_table_on_long_sequences():
    rng = random.Random(2)
    for _ in range(40):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 150))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 150))]
        table = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                table[i][j] = min(
                    table[i - 1][j] + 1, table[i][j - 1] + 1,
                    table[i - 1][j - 1] + (a[i - 1] != b[j - 1]),
                )  # fmt: skip
        assert levenshtein(a, b) == table[-1][-1]


def test_levenshtein_known_values_and_normalisation():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein([], [1, 2, 3]) == 3
    assert normalized_edit_distance("kitten", "sitting") == pytest.approx(3 / 7)
    assert normalized_edit_distance([], []) == 0.0
    assert normalized_edit_distance("ab", "cd") == 1.0
    # token-level: one changed word is distance 1 however long the word is
    assert levenshtein(["7", "+", "5", "=", "12"], ["7", "+", "5", "=", "13"]) == 1


def test_distinct_n_matches_naive_counting():
    rng = random.Random(1)
    for _ in range(100):
        seqs = [[rng.choice("xyz") for _ in range(rng.randint(0, 8))] for _ in range(3)]
        for n in (1, 2, 3):
            expected = naive_distinct(seqs, n)
            got = distinct_n(seqs, n)
            assert got == expected if expected is None else got == pytest.approx(expected)
    assert distinct_n([["a", "b", "a", "b"]], 2) == pytest.approx(2 / 3)  # ab, ba, ab
    with pytest.raises(ValueError):
        distinct_n([["a"]], 0)


def test_reasoning_text_is_inside_think():
    assert reasoning_text("<think> 1 + 1 = 2 . </think> \\boxed{ 2 }").strip() == "1 + 1 = 2 ."
    assert reasoning_text("1 + 1 = 2 . </think> x").strip() == "1 + 1 = 2 ."  # prompt opened it
    assert reasoning_text("<think> still thinking").strip() == "still thinking"  # truncated
    assert reasoning_text("no markers") == "no markers"


def _response(steps: str, answer: str | None) -> str:
    tail = "" if answer is None else f" The answer is \\boxed{{ {answer} }} ."
    return f"<think> {steps} </think>{tail}"


GROUPS = [
    [  # two distinct parsed answers (12, 13) and one response without an answer
        _response("7 + 5 = 12 .", "12"),
        _response("7 + 5 = 13 .", "13"),
        _response("7 + 5 = 12 .", "12"),
        _response("7 + 6 = 13 . 13 * 2 = 26 .", None),
    ],
    [_response("3 * 2 = 6 .", "6")] * 4,  # identical responses
]


def test_group_diversity_against_naive_per_group_means():
    got = group_diversity(GROUPS)
    reasoning = [[reasoning_text(r).split() for r in g] for g in GROUPS]
    whole = [[r.split() for r in g] for g in GROUPS]
    expected_edit = [
        sum(
            naive_levenshtein(a, b) / max(len(a), len(b))
            for i, a in enumerate(g)
            for b in g[i + 1 :]
        )
        / 6
        for g in whole
    ]
    assert got["diversity/distinct_answers"] == pytest.approx((2 + 1) / 2)
    assert got["diversity/distinct_2"] == pytest.approx(
        sum(naive_distinct(g, 2) for g in reasoning) / 2
    )
    assert got["diversity/distinct_3"] == pytest.approx(
        sum(naive_distinct(g, 3) for g in reasoning) / 2
    )
    assert got["diversity/pairwise_edit"] == pytest.approx(sum(expected_edit) / 2)
    assert expected_edit[1] == 0.0 and expected_edit[0] > 0


def test_distinct_answers_normalises_and_ignores_unparsed():
    assert distinct_answers([_response("", "12"), _response("", " 12 "), _response("", None)]) == 1
    assert distinct_answers([_response("", None)] * 3) == 0


def test_rollout_diagnostics_zero_advantage_and_pass_through():
    rewards = [[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
    stats = {"rollout/mixed_frac": 0.1, "rollout/embed_shift": 0.25, "rollout/tokens": 99.0}
    got = rollout_diagnostics(GROUPS, rewards, stats)
    assert got["diversity/zero_adv_frac"] == 0.5
    assert got["rollout/mixed_frac"] == 0.1 and got["rollout/embed_shift"] == 0.25
    assert "rollout/tokens" not in got  # only the mixing statistics are copied
    assert set(rollout_diagnostics(GROUPS, rewards)) == {
        "diversity/distinct_answers", "diversity/distinct_2", "diversity/distinct_3",
        "diversity/pairwise_edit", "diversity/zero_adv_frac",
    }  # fmt: skip
    assert rollout_diagnostics(GROUPS, [[0.0] * 4, [0.5] * 4])["diversity/zero_adv_frac"] == 1.0


def test_custom_tokenizer_and_single_response_groups():
    chars = group_diversity([["<think> ab </think>"], ["<think> ab </think>"]], tokenize=list)
    assert chars["diversity/pairwise_edit"] == 0.0  # no pairs: skipped, mean of nothing is 0
    assert chars["diversity/distinct_2"] == pytest.approx(naive_distinct([list(" ab ")], 2))
    assert mean_pairwise_edit([["a"]]) is None


def test_shape_errors_and_split_groups():
    with pytest.raises(ValueError, match="same shape"):
        rollout_diagnostics(GROUPS, [[1.0] * 4])
    with pytest.raises(ValueError, match="same shape"):
        rollout_diagnostics(GROUPS, [[1.0] * 4, [1.0] * 3])
    with pytest.raises(ValueError, match="no empty group"):
        group_diversity([[]])
    assert split_groups(list(range(6)), 3) == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="do not split"):
        split_groups(list(range(5)), 2)


def test_neighbor_synonym_frac_on_a_hand_example(embedded_tokenizer):
    import torch

    from ngrpo.evaluation.diagnostics import neighbor_synonym_frac
    from ngrpo.tasks.arith import variant_classes

    vocab = embedded_tokenizer.get_vocab()
    classes = torch.tensor(variant_classes(vocab, len(embedded_tokenizer)))
    pairs = [("7", "seven"), ("gets", "wins"), ("so", "then"), ("7", "5"), ("apples", "pens"),
             ("twelve", "12"), ("3", "3")]  # fmt: skip
    ids = torch.tensor([[[vocab[a], vocab[b]] for a, b in pairs]])  # (1, 7, 2)
    mixed = torch.tensor([[True, True, True, True, True, False, True]])  # (1, 7)
    # mixed: 3 synonym pairs of 6; ("twelve", "12") is not mixed; ("3", "3") is the same token
    assert neighbor_synonym_frac(ids, mixed, classes) == 3 / 6
    assert neighbor_synonym_frac(ids, torch.zeros_like(mixed), classes) == 0.0
    assert neighbor_synonym_frac(ids[..., :1], mixed, classes) == 0.0
    assert variant_classes({"7": 3, "seven": 1, "x": 0}, 4) == [0, 1, 2, 1]


# Semantic diversity on hand-made groups. Canonical form (the task's): number words -> digits, one
# verb per kind, one connective.
SOLUTION = "<think> 7 + 5 = 12 . so 12 - 3 = 9 . </think> The answer is \\boxed{ 9 } ."
REPHRASINGS = [
    SOLUTION,
    "<think> seven + 5 = 12 . then 12 - three = 9 . </think> The answer is \\boxed{ 9 } .",
    "<think> 7 + five = twelve . thus 12 - 3 = nine . </think> The answer is \\boxed{ 9 } .",
    "<think> seven + five = 12 . so twelve - 3 = 9 . </think> The answer is \\boxed{ 9 } .",
]
SKIPPED = "<think> 7 + 5 = 12 . </think> The answer is \\boxed{ 12 } ."  # another path (a skip)
SKIPPED_WORDS = "<think> seven + five = twelve . </think> The answer is \\boxed{ 12 } ."


def naive_semantic(group, rewards):
    """Reference: canonicalise word by word from a hand-written table, count by brute force."""
    table = {"seven": "7", "five": "5", "twelve": "12", "three": "3", "nine": "9", "then": "so",
             "thus": "so"}  # fmt: skip

    def path(text):
        inside = text.split("<think>")[1].split("</think>")[0].split()
        return " ".join(inside), " ".join(table.get(w, w) for w in inside)

    paths = [path(t) for t in group]
    pairs = [(paths[i], paths[j]) for i in range(len(paths)) for j in range(i + 1, len(paths))]
    rephrase = sum(a[0] != b[0] and a[1] == b[1] for a, b in pairs) / len(pairs)
    correct = len({p[1] for p, r in zip(paths, rewards, strict=True) if r > 0})
    return len({p[1] for p in paths}), rephrase, correct


def test_a_group_of_pure_rephrasings_scores_one_canonical_path():
    assert canonical_paths(REPHRASINGS, canonicalize) == 1
    assert rephrase_pairs(REPHRASINGS, canonicalize) == 1.0  # every pair differs only in words
    # distinct-2 and edit distance count the same group as diverse
    plain = group_diversity([REPHRASINGS])
    assert plain["diversity/distinct_2"] > 0.5 and plain["diversity/pairwise_edit"] > 0.1


def test_verbatim_copies_are_not_rephrasings_and_mistakes_are_other_paths():
    assert canonical_paths([SOLUTION] * 4, canonicalize) == 1
    assert rephrase_pairs([SOLUTION] * 4, canonicalize) == 0.0
    group = [SOLUTION, REPHRASINGS[1], SKIPPED, SKIPPED_WORDS]
    assert canonical_paths(group, canonicalize) == 2
    # pairs: (0,1) and (2,3) are rephrasings; the four cross pairs are different paths
    assert rephrase_pairs(group, canonicalize) == pytest.approx(2 / 6)
    assert correct_paths(group, [1.0, 1.0, 0.0, 0.0], canonicalize) == 1
    assert correct_paths(group, [0.0] * 4, canonicalize) == 0
    assert rephrase_pairs([SOLUTION], canonicalize) is None
    assert (
        canonical_paths(["<think> 7  +  5 </think>", "<think> 7 + 5 </think>"], canonicalize) == 1
    )
    with pytest.raises(ValueError, match="4 responses but 3 rewards"):
        correct_paths(group, [1.0] * 3, canonicalize)


def test_semantic_metrics_match_a_naive_reference_on_random_groups():
    import random

    rng = random.Random(0)
    pool = [*REPHRASINGS, SKIPPED, SKIPPED_WORDS]
    for _ in range(50):
        group = [rng.choice(pool) for _ in range(rng.randint(2, 8))]
        rewards = [float(text.endswith("\\boxed{ 9 } .")) for text in group]
        paths, rephrase, correct = naive_semantic(group, rewards)
        assert canonical_paths(group, canonicalize) == paths
        assert rephrase_pairs(group, canonicalize) == pytest.approx(rephrase)
        assert correct_paths(group, rewards, canonicalize) == correct


def test_rollout_diagnostics_with_a_canonical_form_adds_the_semantic_keys():
    groups = [REPHRASINGS, [SOLUTION, REPHRASINGS[1], SKIPPED, SKIPPED_WORDS]]
    rewards = [[1.0] * 4, [1.0, 1.0, 0.0, 0.0]]
    got = rollout_diagnostics(groups, rewards, canonicalize=canonicalize)
    assert got["diversity/canonical_paths"] == 1.5  # 1 and 2
    assert got["diversity/rephrase_pairs"] == pytest.approx((1.0 + 2 / 6) / 2)
    assert got["diversity/correct_paths"] == 1.0
    assert "diversity/canonical_paths" not in rollout_diagnostics(groups, rewards)
