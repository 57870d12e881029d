"""The rollout–learner gap (`ngrpo.method.rollout_correction`): importance weights of every mode and
the mismatch measures, against hand-computed examples."""

import math

import pytest
import torch
from factories import tiny_lm

from ngrpo.method.exploration import ExplorationConfig
from ngrpo.method.losses import grpo_loss
from ngrpo.method.rollout_correction import (
    CORRECTIONS,
    after_mixed,
    check_correction,
    importance_weights,
    masked_tokens,
    mismatch_metrics,
)
from ngrpo.rollout import SamplingParams, generate
from ngrpo.utils.errors import NgrpoError

# Two sequences: row 0 has three tokens, row 1 two (its last position is padding).
ROLLOUT = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, 0.0]])
DELTA = torch.tensor([[0.5, -0.2, 1.0], [-0.05, 0.9, 7.0]])  # log π_old − log π_rollout
OLD = ROLLOUT + DELTA
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_token_truncate_hand_example():
    w, metrics = importance_weights(OLD, ROLLOUT, MASK, "token_truncate", cap=2.0)
    # e^0.5 = 1.6487, e^-0.2 = 0.8187, e^1 = 2.718 -> 2, e^-0.05 = 0.9512, e^0.9 = 2.4596 -> 2
    expect = torch.tensor([[math.exp(0.5), math.exp(-0.2), 2.0], [math.exp(-0.05), 2.0, 1.0]])
    torch.testing.assert_close(w, expect)  # padding: δ counts as 0, weight 1 (masked anyway)
    assert metrics["rollout_correction/truncated_frac"] == pytest.approx(2 / 5)
    mean = (math.exp(0.5) + math.exp(-0.2) + 2.0 + math.exp(-0.05) + 2.0) / 5
    assert metrics["rollout_correction/weight_mean"] == pytest.approx(mean)


def test_token_mask_hand_example():
    w, metrics = importance_weights(OLD, ROLLOUT, MASK, "token_mask", cap=2.0)
    expect = torch.tensor([[math.exp(0.5), math.exp(-0.2), 0.0], [math.exp(-0.05), 0.0, 1.0]])
    torch.testing.assert_close(w, expect)
    assert metrics["rollout_correction/masked_frac"] == pytest.approx(2 / 5)


def test_sequence_modes_hand_example():
    # row 0: Σδ = 1.3 -> e^1.3 = 3.669 on every token; row 1: Σδ over real tokens = 0.85 -> 2.34
    truncated, metrics = importance_weights(OLD, ROLLOUT, MASK, "sequence_truncate", cap=3.0)
    torch.testing.assert_close(truncated[0], torch.full((3,), 3.0))
    torch.testing.assert_close(truncated[1], torch.full((3,), math.exp(0.85)))
    assert metrics["rollout_correction/truncated_frac"] == pytest.approx(3 / 5)
    masked, metrics = importance_weights(OLD, ROLLOUT, MASK, "sequence_mask", cap=3.0)
    torch.testing.assert_close(masked[0], torch.zeros(3))  # the whole sequence is left out
    torch.testing.assert_close(masked[1], torch.full((3,), math.exp(0.85)))
    assert metrics["rollout_correction/masked_frac"] == pytest.approx(3 / 5)


def test_a_lower_bound_truncates_up_or_masks_below_it():
    # token weights: e^0.5, e^-0.2 = 0.8187, e^1 -> cap 2, e^-0.05 = 0.9512, e^0.9 = 2.46 -> cap 2
    truncated, metrics = importance_weights(OLD, ROLLOUT, MASK, "token_truncate", 2.0, floor=0.9)
    expect = torch.tensor([[math.exp(0.5), 0.9, 2.0], [math.exp(-0.05), 2.0, 1.0]])
    torch.testing.assert_close(truncated, expect)
    assert metrics["rollout_correction/truncated_frac"] == pytest.approx(3 / 5)
    masked, metrics = importance_weights(OLD, ROLLOUT, MASK, "token_mask", 2.0, floor=0.9)
    expect = torch.tensor([[math.exp(0.5), 0.0, 0.0], [math.exp(-0.05), 0.0, 1.0]])
    torch.testing.assert_close(masked, expect)
    assert metrics["rollout_correction/masked_frac"] == pytest.approx(3 / 5)
    # sequence level, the gap reversed: row 0 e^-1.3 = 0.273 (under floor 0.3), row 1 e^-0.85
    masked, _ = importance_weights(ROLLOUT, OLD, MASK, "sequence_mask", 2.0, floor=0.3)
    torch.testing.assert_close(masked[0], torch.zeros(3))
    torch.testing.assert_close(masked[1], torch.full((3,), math.exp(-0.85)))
    assert masked_tokens(masked, "sequence_mask").tolist() == [[True] * 3, [False] * 3]
    assert not masked_tokens(truncated, "token_truncate").any()  # truncation leaves nothing out


def test_none_and_equal_policies_give_weights_of_exactly_one():
    w, metrics = importance_weights(OLD, ROLLOUT, MASK, "none", cap=2.0)
    assert torch.equal(w, torch.ones_like(OLD)) and metrics == {}
    for mode in CORRECTIONS[1:]:  # π_old taken from the rollout: the correction is the identity
        w, metrics = importance_weights(ROLLOUT, ROLLOUT, MASK, mode, cap=2.0)
        assert torch.equal(w, torch.ones_like(ROLLOUT))
        assert metrics["rollout_correction/weight_mean"] == 1.0


def test_weights_scale_only_the_policy_gradient_term():
    logp = OLD.clone().requires_grad_(True)
    advantages = torch.tensor([1.0, -1.0])
    ref = OLD - 0.3
    w, _ = importance_weights(OLD, ROLLOUT, MASK, "token_truncate", cap=2.0)
    plain, m0 = grpo_loss(logp, OLD, advantages, MASK, ref_logp=ref, beta=0.5)
    weighted, m1 = grpo_loss(logp, OLD, advantages, MASK, ref_logp=ref, beta=0.5, is_weights=w)
    # ratio 1 everywhere: pg per token = −A; the KL term (k3 of δ = −0.3) is not weighted
    pg = (-advantages[:, None] * w * MASK).sum() / MASK.sum()
    assert m1["loss/pg"] == pytest.approx(float(pg))
    assert m1["loss/kl"] == pytest.approx(m0["loss/kl"])
    assert weighted.item() == pytest.approx(float(pg) + 0.5 * m0["loss/kl"])
    assert plain.item() != pytest.approx(weighted.item())


def test_mismatch_metrics_hand_example():
    mixed = torch.tensor([[False, True, True], [False, False, True]])
    m = mismatch_metrics(OLD, ROLLOUT, MASK, mixed)
    real = [0.5, -0.2, 1.0, -0.05, 0.9]
    assert m["mismatch/logp_abs_mean"] == pytest.approx(sum(abs(d) for d in real) / 5)
    assert m["mismatch/logp_abs_max"] == pytest.approx(1.0)
    k3 = sum(math.exp(d) - d - 1 for d in real) / 5  # KL(rollout ‖ learner) from rollout samples
    assert m["mismatch/kl_k3"] == pytest.approx(k3)
    assert m["mismatch/frac_over_0.1"] == pytest.approx(4 / 5)  # all but −0.05
    assert m["mismatch/seq_log_ratio_abs_mean"] == pytest.approx((1.3 + 0.85) / 2)
    assert m["mismatch/seq_log_ratio_abs_max"] == pytest.approx(1.3)
    # the positions after a mixed input: row 0's mixes at 1 and 2 are seen by position 2 (δ 1.0;
    # the mix at 2 is the last input and scores nothing); row 1's at 2 by no position
    assert m["mismatch/mixed/logp_abs_mean"] == pytest.approx(1.0)
    assert m["mismatch/mixed/logp_abs_max"] == pytest.approx(1.0)
    first = mismatch_metrics(OLD, ROLLOUT, MASK, torch.tensor([[True, False, False]] * 2))
    assert first["mismatch/mixed/logp_abs_mean"] == pytest.approx((0.2 + 0.9) / 2)  # −0.2, 0.9
    assert first["mismatch/mixed/logp_abs_max"] == pytest.approx(0.9)
    empty = mismatch_metrics(OLD, ROLLOUT, torch.zeros_like(MASK), mixed)
    assert set(empty.values()) == {0.0}


@pytest.mark.parametrize(("mode", "cap", "fragment"), [
    ("token", 2.0, "train.rollout_correction must be one of none, token_truncate"),
    ("token_truncate", 0.5, "train.rollout_correction_cap must be >= 1"),
])  # fmt: skip
def test_bad_settings_name_the_key(mode, cap, fragment):
    with pytest.raises(NgrpoError, match=fragment):
        check_correction(mode, cap)
    with pytest.raises(NgrpoError, match="train.rollout_correction_min must be in"):
        check_correction("token_mask", 2.0, floor=1.2)


def test_after_mixed_moves_the_marks_one_position_right():
    mixed = torch.tensor([[True, False, True], [False, True, False]])
    assert after_mixed(mixed).tolist() == [[False, True, False], [False, False, True]]


def test_mixed_measure_sees_the_token_after_each_mixed_input_on_a_rollout():
    """A real rollout with neighbour mixing, scored by a learner whose log-probs differ from the
    rollout's only at the first token that saw each replayed soft input (where a replay's rounding
    first shows): `mismatch/mixed/*` measures exactly those tokens, the mixed inputs' own tokens
    (their log-probs came from the logits before the mix) not at all."""
    model = tiny_lm(seed=0, max_positions=64).eval()
    exploration = ExplorationConfig(strategy="neighbor", mix_top_k=3, mix_rate=0.3)
    batch = generate(
        model, [[10, 11, 12], [20, 21, 22, 23]], SamplingParams(n=4, max_new_tokens=12),
        eos_token_id=[1], pad_token_id=0, exploration=exploration, answer_start_ids=[4],
        training=True, seed=3,
    )  # fmt: skip
    mask = batch.response_mask.bool()  # (N, T)
    after = after_mixed(batch.mixed) & mask  # (N, T)
    mixed_only = batch.mixed & mask & ~after  # mixed inputs whose own token saw no mix
    assert mixed_only.any() and after.any()
    learner = batch.logprobs + 0.25 * after  # (N, T)
    m = mismatch_metrics(learner, batch.logprobs, mask, batch.mixed)
    assert m["mismatch/mixed/logp_abs_mean"] == pytest.approx(0.25)
    assert m["mismatch/mixed/frac_over_0.1"] == 1.0
    assert m["mismatch/logp_abs_mean"] == pytest.approx(0.25 * int(after.sum()) / int(mask.sum()))
