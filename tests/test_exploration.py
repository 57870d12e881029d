"""Exploration strategies as pure functions: record invariants, weights against naive loops,
config validation."""

import math

import pytest
import torch

from ngrpo.method.exploration import (
    NOISE_STRATEGIES,
    STRATEGIES,
    ExplorationConfig,
    StepView,
    answer_start_ids,
    entropy,
    mixing_gate,
    scheduled_mix_rate,
)
from ngrpo.method.neighbors import NeighborIndex, bruteforce_neighbors
from ngrpo.rollout import warp_logits
from ngrpo.utils.errors import NgrpoError

V, D, B = 30, 16, 64


def _view(seed=0, top_k=0, top_p=1.0):
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(B, V, generator=gen)
    probs = warp_logits(logits, 1.0, top_k, top_p).softmax(-1)
    sampled = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
    table = torch.randn(V, D, generator=gen)
    index = NeighborIndex(table, 4, "cosine")
    return StepView(
        logits=logits, probs=probs, sampled=sampled, table=table,
        neighbors=lambda a: index.lookup(a), generator=torch.Generator().manual_seed(seed + 1),
    )  # fmt: skip


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("k", [1, 3])
def test_every_strategy_gives_valid_records(strategy, k):
    view = _view()
    mix = STRATEGIES[strategy](view, k=k, anchor="greedy", mix_temperature=0.7, noise_scale=0.33)
    assert mix.ids.shape == (B, k) and mix.weights.shape == (B, k)
    assert torch.all(mix.weights >= 0)
    torch.testing.assert_close(mix.weights.sum(-1), torch.ones(B))
    assert torch.all(mix.weights[:, 0] > 0)  # the anchor / first candidate always counts
    if strategy == "topk_gumbel":  # Gumbel-perturbed top-k: distinct, not necessarily the argmax
        assert all(len(set(row)) == k for row in mix.ids.tolist())
    else:
        anchors = view.sampled if strategy == "none" else view.logits.argmax(-1)
        assert torch.equal(mix.ids[:, 0], anchors)
    if strategy in NOISE_STRATEGIES:
        assert mix.noise.shape == (B, D)
    else:
        assert mix.noise is None


@pytest.mark.numerics
def test_neighbor_weights_are_renormalised_probabilities():
    view = _view()
    mix = STRATEGIES["neighbor"](view, k=4, anchor="greedy")
    anchors = view.probs.argmax(-1)
    expect_ids = torch.cat([anchors[:, None], bruteforce_neighbors(view.table, anchors, 3)[0]], -1)
    assert torch.equal(mix.ids, expect_ids)
    for b in range(B):
        p = [float(view.probs[b, v]) for v in expect_ids[b]]
        for c in range(4):
            assert math.isclose(float(mix.weights[b, c]), p[c] / sum(p), rel_tol=1e-5, abs_tol=1e-7)


def test_neighbor_truncated_by_top_k_gets_weight_zero_and_sampled_anchor():
    view = _view(top_k=2)  # p_t keeps only two tokens per row
    mix = STRATEGIES["neighbor"](view, k=5, anchor="greedy")
    kept = view.probs > 0
    assert torch.equal(mix.weights > 0, kept.gather(-1, mix.ids))
    assert torch.all(mix.weights[:, 0] > 0)
    sampled = STRATEGIES["neighbor"](view, k=5, anchor="sampled")
    assert torch.equal(sampled.ids[:, 0], view.sampled)


@pytest.mark.numerics
def test_topk_weights_are_softmax_of_scaled_logits():
    view = _view()
    mix = STRATEGIES["topk"](view, k=3, mix_temperature=0.5)
    for b in range(4):
        top = sorted(range(V), key=lambda v: -float(view.logits[b, v]))[:3]
        assert mix.ids[b].tolist() == top
        z = [float(view.logits[b, v]) / 0.5 for v in top]
        expect = [math.exp(x - max(z)) / sum(math.exp(y - max(z)) for y in z) for x in z]
        torch.testing.assert_close(mix.weights[b], torch.tensor(expect))


@pytest.mark.numerics
def test_gaussian_noise_scale_is_relative_to_the_mixture_rms():
    view = _view()
    view.table = torch.randn(V, 2048, generator=torch.Generator().manual_seed(3))
    mix = STRATEGIES["gaussian"](view, k=2, noise_scale=0.33)
    mixture = (view.table[mix.ids] * mix.weights[..., None]).sum(-2)  # (B, d)
    ratio = mix.noise.std(-1) / mixture.pow(2).mean(-1).sqrt()  # (B,)
    assert torch.allclose(ratio, torch.full((B,), 0.33), atol=0.02)


@pytest.mark.numerics
def test_orthogonal_noise_is_orthogonal_to_the_anchor():
    view = _view()
    mix = STRATEGIES["orthogonal"](view, k=3)
    anchor = view.table[mix.ids[:, 0]]
    cos = torch.nn.functional.cosine_similarity(mix.noise, anchor, dim=-1)
    assert cos.abs().max() < 1e-4
    assert torch.equal(mix.weights[:, 0], torch.ones(B))
    assert mix.noise.norm(dim=-1).max() > 0


def test_topk_gumbel_follows_a_dominant_logit():
    view = _view()
    view.logits[:, 5] = 1e4
    mix = STRATEGIES["topk_gumbel"](view, k=2)
    assert torch.all(mix.ids[:, 0] == 5)


def test_mixing_gate():
    gen = torch.Generator().manual_seed(0)
    eligible = torch.tensor([True, False] * 500)
    probs = torch.full((1000, 4), 0.25)
    assert not mixing_gate(eligible, probs, gen, 0.0).any()
    assert torch.equal(mixing_gate(eligible, probs, gen, 1.0), eligible)
    frac = mixing_gate(eligible, probs, gen, 0.3)[eligible].float().mean()
    assert abs(frac - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 500)
    peaked = torch.tensor([[1.0, 0, 0, 0]]).expand(1000, 4)
    both = torch.cat([probs[:500], peaked[:500]])
    gate = mixing_gate(torch.ones(1000, dtype=torch.bool), both, gen, 1.0, entropy_threshold=1.0)
    assert gate[:500].all() and not gate[500:].any()  # entropy ln 4 >= 1 > 0
    # with a rate: about that share of the uncertain positions, none of the certain ones
    gate = mixing_gate(torch.ones(1000, dtype=torch.bool), both, gen, 0.3, entropy_threshold=1.0)
    assert abs(gate[:500].float().mean() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 500)
    assert not gate[500:].any()


@pytest.mark.numerics
def test_entropy_matches_naive():
    probs = torch.tensor([[0.5, 0.25, 0.25, 0.0]])
    expect = -sum(p * math.log(p) for p in (0.5, 0.25, 0.25))
    assert math.isclose(float(entropy(probs)), expect, rel_tol=1e-6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"strategy": "nope"}, "none, neighbor, gaussian, topk, topk_gumbel, orthogonal"),
        ({"metric": "hamming"}, "cosine, dot, l1, l2"),
        ({"anchor": "random"}, "greedy, sampled"),
        ({"mix_top_k": 0}, r"mix_top_k must be an integer in \[1, 50\]"),
        ({"mix_top_k": 51}, r"mix_top_k must be an integer in \[1, 50\]"),
        ({"mix_rate": 1.5}, r"mix_rate must be in \[0, 1\]"),
        ({"mix_rate": -0.1}, r"mix_rate must be in \[0, 1\]"),
        ({"mix_temperature": 0.0}, "mix_temperature"),
        ({"noise_scale": -1.0}, "noise_scale"),
        ({"entropy_threshold": -1.0}, "entropy_threshold"),
        ({"strategy": "neighbor", "answer_start": " "}, "answer_start"),
        (
            {"mix_rate_schedule": "cosine"},
            "mix_rate_schedule: unknown schedule 'cosine'; choose one of constant, linear",
        ),
    ],
)
def test_config_errors_name_the_key_and_choices(overrides, message):
    with pytest.raises(NgrpoError, match=message):
        ExplorationConfig(**overrides).validate(vocab_size=50)


def test_valid_config_and_answer_marker_tokenisation():
    ExplorationConfig(strategy="neighbor", mix_top_k=50).validate(vocab_size=50)
    from ngrpo.models.tokenizer import THINK_END, build_tokenizer

    tokenizer = build_tokenizer()
    ids = answer_start_ids(tokenizer, THINK_END)
    assert ids == [tokenizer.convert_tokens_to_ids(THINK_END)]
    for marker in ("", "   "):
        with pytest.raises(NgrpoError, match="tokenises to nothing"):
            answer_start_ids(tokenizer, marker)


def test_mix_rate_schedules():
    constant = ExplorationConfig(mix_rate=0.2)
    linear = ExplorationConfig(mix_rate=0.2, mix_rate_schedule="linear")
    assert [scheduled_mix_rate(constant, s, 4) for s in range(5)] == [0.2] * 5
    # the full rate at the first step, mix_rate / steps at the last, 0 from `steps` on
    got = [scheduled_mix_rate(linear, s, 4) for s in range(6)]
    assert got == pytest.approx([0.2, 0.15, 0.1, 0.05, 0.0, 0.0])
    assert scheduled_mix_rate(linear, 3, 0) == 0.2  # no length known: as constant
