"""The pure GRPO loss functions: hand-computed values, naive reference loops, gradients."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from ngrpo.method.losses import (
    AGGREGATIONS,
    aggregate,
    entropy_from_logits,
    group_advantages,
    grpo_loss,
    kl_penalty,
    logprobs_from_logits,
    loss_normalizer,
    masked_mean,
    policy_loss,
    resolve_aggregation,
    resolve_kl_estimator,
)
from ngrpo.utils.errors import NgrpoError


def _random_batch(seed: int = 0, n: int = 5, t: int = 7):
    g = torch.Generator().manual_seed(seed)
    loss = torch.randn(n, t, generator=g)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).float()  # right padding
    return loss, mask


# --- advantages ------------------------------------------------------------------------------


def test_group_advantages_hand_computed_sample_std():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    # mean 0.5; sample std sqrt(4 * 0.25 / 3) = 1/sqrt(3)
    expected = 0.5 / (1 / math.sqrt(3) + 1e-6)
    adv = group_advantages(rewards)
    torch.testing.assert_close(adv, torch.tensor([[expected, -expected, -expected, expected]]))


def test_group_advantages_population_std_and_unscaled():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(
        group_advantages(rewards, unbiased=False),
        torch.tensor([[1.0, -1.0, -1.0, 1.0]]) * 0.5 / (0.5 + 1e-6),
    )
    torch.testing.assert_close(
        group_advantages(rewards, scale=False), torch.tensor([[0.5, -0.5, -0.5, 0.5]])
    )


def test_group_advantages_matches_naive_loop():
    g = torch.Generator().manual_seed(1)
    rewards = torch.randint(0, 3, (6, 5), generator=g).float()
    adv = group_advantages(rewards)
    for p in range(6):
        row = rewards[p].tolist()
        mean, std = statistics.mean(row), statistics.stdev(row)
        for i in range(5):
            assert adv[p, i].item() == pytest.approx((row[i] - mean) / (std + 1e-6), abs=1e-5)


def test_group_advantages_degenerate_groups_are_zero():
    assert torch.equal(group_advantages(torch.ones(3, 4)), torch.zeros(3, 4))
    assert torch.equal(group_advantages(torch.tensor([[0.7], [0.2]])), torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"\(P, G\)"):
        group_advantages(torch.ones(4))


# --- KL estimators ---------------------------------------------------------------------------


def test_kl_estimators_hand_computed():
    logp = torch.tensor([[math.log(0.5)]])
    ref = torch.tensor([[math.log(0.25)]])
    ln2 = math.log(2.0)
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(ln2)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * ln2**2)
    # δ = ref − logp = −ln 2: exp(δ) − δ − 1 = 0.5 + ln 2 − 1
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 + ln2 - 1.0)


def test_kl_aliases_and_properties():
    assert resolve_kl_estimator("low_var_kl") == "k3"
    assert resolve_kl_estimator("kl") == "k1"
    assert resolve_kl_estimator("mse") == "k2"
    g = torch.Generator().manual_seed(2)
    logp, ref = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    torch.testing.assert_close(kl_penalty(logp, ref, "low_var_kl"), kl_penalty(logp, ref, "k3"))
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert torch.equal(kl_penalty(logp, logp, "k3"), torch.zeros(4, 6))
    with pytest.raises(NgrpoError, match="k1, k2, k3"):
        kl_penalty(logp, ref, "k4")


# --- clipped surrogate -----------------------------------------------------------------------


def _ratios_case(ratios: list[float], advantages: list[float], **kw):
    old = torch.zeros(len(ratios), 1)
    logp = torch.log(torch.tensor(ratios))[:, None].requires_grad_(True)
    mask = torch.ones(len(ratios), 1)
    loss, metrics = policy_loss(logp, old, torch.tensor(advantages), mask, **kw)
    loss.sum().backward()
    return loss.detach()[:, 0], logp.grad[:, 0], metrics


def test_clipping_both_sides_both_signs():
    # ratio, advantage -> expected loss and whether the clipped branch is taken
    ratios = [1.5, 0.5, 0.5, 1.5, 1.1]
    advs = [1.0, 1.0, -1.0, -1.0, 2.0]
    loss, grad, metrics = _ratios_case(ratios, advs, clip_low=0.2, clip_high=0.2)
    # A>0, ρ=1.5: min(1.5, 1.2) -> −1.2 (clipped, no gradient)
    # A>0, ρ=0.5: min(0.5, 0.8) -> −0.5 (unclipped)
    # A<0, ρ=0.5: min(−0.5, −0.8) -> 0.8 (clipped, no gradient)
    # A<0, ρ=1.5: min(−1.5, −1.2) -> 1.5 (unclipped)
    # A=2, ρ=1.1 inside the range -> −2.2
    torch.testing.assert_close(loss, torch.tensor([-1.2, -0.5, 0.8, 1.5, -2.2]))
    # d(−Aρ)/d log π = −Aρ where unclipped, 0 where clipped
    torch.testing.assert_close(grad, torch.tensor([0.0, -0.5, 0.0, 1.5, -2.2]))
    assert metrics["actor/clip_frac"] == pytest.approx(2 / 5)
    assert metrics["actor/clip_frac_low"] == pytest.approx(1 / 5)
    assert metrics["actor/clip_frac_high"] == pytest.approx(1 / 5)
    assert metrics["actor/ratio_max"] == pytest.approx(1.5)
    assert metrics["actor/ratio_min"] == pytest.approx(0.5)


def test_clip_higher_is_asymmetric():
    loss, grad, metrics = _ratios_case([1.25, 0.75], [1.0, -1.0], clip_low=0.2, clip_high=0.28)
    # ρ=1.25 < 1.28: not clipped; ρ=0.75 < 0.8 with A<0: clipped to 0.8
    torch.testing.assert_close(loss, torch.tensor([-1.25, 0.8]))
    torch.testing.assert_close(grad, torch.tensor([-1.25, 0.0]))
    assert metrics["actor/clip_frac_high"] == 0.0
    assert metrics["actor/clip_frac_low"] == pytest.approx(0.5)


def test_ratio_one_gradient_is_minus_advantage_over_token_count():
    g = torch.Generator().manual_seed(3)
    _, mask = _random_batch(3)
    logp = torch.randn(mask.shape, generator=g).requires_grad_(True)
    adv = torch.randn(mask.shape[0], generator=g)
    loss, metrics = grpo_loss(logp, logp.detach(), adv, mask, loss_type="token-mean")
    loss.backward()
    expected = -adv[:, None] * mask / mask.sum()
    torch.testing.assert_close(logp.grad, expected)
    assert metrics["actor/ratio_mean"] == pytest.approx(1.0)
    assert metrics["actor/clip_frac"] == 0.0


def test_padding_gets_no_gradient_even_with_garbage_values():
    logp = torch.tensor([[-1.0, 50.0]], requires_grad=True)  # position 1 is padding
    old = torch.tensor([[-1.2, -50.0]])
    mask = torch.tensor([[1.0, 0.0]])
    loss, _ = grpo_loss(logp, old, torch.tensor([1.0]), mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert logp.grad[0, 1] == 0.0


# --- GSPO sequence-level ratio ---------------------------------------------------------------


def test_sequence_ratio_value_is_exp_mean_log_ratio_on_every_token():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 9.0]])
    old = torch.tensor([[-1.5, -2.0, -2.9], [-0.7, -0.4, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    loss, metrics = policy_loss(logp, old, adv, mask, clip_low=0.5, clip_high=0.5, level="sequence")
    s0 = math.exp((0.5 + 0.0 - 0.1) / 3)
    s1 = math.exp((0.2 - 0.1) / 2)
    torch.testing.assert_close(loss[0], torch.full((3,), -s0))
    torch.testing.assert_close(loss[1, :2], torch.full((2,), s1))
    assert metrics["actor/ratio_max"] == pytest.approx(s0)


def test_gspo_token_form_gradient_equals_paper_objective():
    """GSPO-token + seq-mean-token-mean: the gradient of (1/G) Σ_i −min(s_i A_i, clip(s_i) A_i)."""
    g = torch.Generator().manual_seed(4)
    _, mask = _random_batch(4, n=6, t=5)
    old = torch.randn(mask.shape, generator=g)
    base = old + 0.3 * torch.randn(mask.shape, generator=g)  # some sequences leave the clip range
    adv = torch.randn(6, generator=g)
    eps_low, eps_high = 0.05, 0.08

    logp = base.clone().requires_grad_(True)
    loss, metrics = grpo_loss(
        logp,
        old,
        adv,
        mask,
        clip_low=eps_low,
        clip_high=eps_high,
        level="sequence",
        loss_type="seq-mean-token-mean",
    )
    loss.backward()
    assert 0 < metrics["actor/clip_frac"] < 1  # the case covers clipped and unclipped sequences

    ref = base.clone().requires_grad_(True)
    terms = []
    for i in range(6):
        n_i = mask[i].sum()
        s_i = torch.exp(((ref[i] - old[i]) * mask[i]).sum() / n_i)
        clipped = s_i.clamp(1 - eps_low, 1 + eps_high)
        terms.append(-torch.minimum(s_i * adv[i], clipped * adv[i]))
    paper = torch.stack(terms).mean()
    paper.backward()

    torch.testing.assert_close(loss, paper)
    torch.testing.assert_close(logp.grad, ref.grad)


# --- aggregation -----------------------------------------------------------------------------


def _naive_aggregate(loss, mask, mode):
    n, t = loss.shape
    if mode == "token-mean":
        num = sum(loss[i, j].item() for i in range(n) for j in range(t) if mask[i, j])
        return num / sum(int(mask[i, j]) for i in range(n) for j in range(t))
    per_seq = []
    for i in range(n):
        values = [loss[i, j].item() for j in range(t) if mask[i, j]]
        per_seq.append(sum(values) / len(values) if mode == "seq-mean-token-mean" else sum(values))
    return sum(per_seq) / n


@pytest.mark.parametrize("mode", list(AGGREGATIONS))
def test_aggregation_matches_naive_loop(mode):
    loss, mask = _random_batch(5)
    assert aggregate(loss, mask, mode).item() == pytest.approx(_naive_aggregate(loss, mask, mode))


def test_aggregation_hand_computed():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert aggregate(loss, mask, "token-mean").item() == pytest.approx(10 / 4)
    assert aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(loss, mask, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)
    assert aggregate(loss, mask, "grpo").item() == pytest.approx(3.0)  # TRL alias
    with pytest.raises(NgrpoError, match="token-mean"):
        aggregate(loss, mask, "dr_grpo")


@pytest.mark.parametrize("mode", list(AGGREGATIONS))
def test_micro_batches_with_global_normalizer_equal_the_mini_batch(mode):
    loss, mask = _random_batch(6, n=8)
    full = aggregate(loss, mask, mode)
    norm = loss_normalizer(mask, mode)
    parts = [aggregate(loss[i : i + 3], mask[i : i + 3], mode, norm) for i in range(0, 8, 3)]
    torch.testing.assert_close(sum(parts), full)


def test_empty_mask_is_finite():
    loss = torch.randn(2, 3)
    mask = torch.zeros(2, 3)
    for mode in AGGREGATIONS:
        assert aggregate(loss, mask, mode).item() == 0.0
    assert masked_mean(loss, mask).item() == 0.0
    assert resolve_aggregation("dapo") == "token-mean"


# --- log-probs and entropy -------------------------------------------------------------------


def test_entropy_and_logprobs_against_naive():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 3, 5, generator=g)
    labels = torch.randint(0, 5, (2, 3), generator=g)
    ent = entropy_from_logits(logits)
    lp = logprobs_from_logits(logits, labels, temperature=0.7)
    for i in range(2):
        for j in range(3):
            p = torch.softmax(logits[i, j], -1).tolist()
            assert ent[i, j].item() == pytest.approx(-sum(q * math.log(q) for q in p), abs=1e-5)
            q = torch.softmax(logits[i, j] / 0.7, -1)[labels[i, j]].item()
            assert lp[i, j].item() == pytest.approx(math.log(q), abs=1e-5)
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))


# --- composition -----------------------------------------------------------------------------


def test_grpo_loss_is_pg_plus_beta_kl_minus_entropy_bonus():
    g = torch.Generator().manual_seed(8)
    _, mask = _random_batch(8)
    logp = torch.randn(mask.shape, generator=g)
    old = logp + 0.1 * torch.randn(mask.shape, generator=g)
    ref = logp + 0.1 * torch.randn(mask.shape, generator=g)
    ent = torch.rand(mask.shape, generator=g)
    adv = torch.randn(mask.shape[0], generator=g)
    for mode in AGGREGATIONS:
        loss, metrics = grpo_loss(
            logp,
            old,
            adv,
            mask,
            ref_logp=ref,
            entropy=ent,
            beta=0.05,
            kl_estimator="low_var_kl",
            loss_type=mode,
            entropy_coef=0.01,
            clip_low=0.2,
            clip_high=0.28,
        )
        pg, _ = policy_loss(logp, old, adv, mask, 0.2, 0.28)
        expected = (
            aggregate(pg, mask, mode)
            + 0.05 * aggregate(kl_penalty(logp, ref), mask, mode)
            - 0.01 * aggregate(ent, mask, mode)
        )
        torch.testing.assert_close(loss, expected)
        assert metrics["loss/total"] == pytest.approx(loss.item(), abs=1e-6)
        kl = aggregate(kl_penalty(logp, ref), mask, mode).item()
        assert metrics["loss/kl"] == pytest.approx(kl)
        assert {"loss/pg", "loss/kl", "actor/entropy", "actor/clip_frac"} <= set(metrics)


def test_grpo_loss_argument_errors():
    x, m, a = torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(1)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(x, x, a, m, beta=0.1)
    with pytest.raises(ValueError, match="entropy"):
        grpo_loss(x, x, a, m, entropy_coef=0.1)
    with pytest.raises(NgrpoError, match="token, sequence"):
        grpo_loss(x, x, a, m, level="sentence")
    _, metrics = grpo_loss(x, x, a, m)
    assert "loss/kl" not in metrics and "actor/entropy" not in metrics
