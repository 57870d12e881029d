"""Learner tests on a tiny random Qwen2: the replay invariant through the learner's path, gradient
reaching exactly the embedding rows that were fed, the direction of one update, gradient
accumulation, and skipping non-finite steps."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import torch
from factories import tiny_lm
from numerics import REPLAY_ATOL
from transformers import Qwen2ForCausalLM

import ngrpo.learner.averages
import ngrpo.learner.scored
import ngrpo.learner.update
from ngrpo.learner.update import (
    LearnerParams,
    recompute_old_logprobs,
    sequence_logprobs,
    update_policy,
)
from ngrpo.method.exploration import ExplorationConfig
from ngrpo.method.neighbors import NeighborIndex, bruteforce_neighbors
from ngrpo.method.rollout_correction import mismatch_metrics
from ngrpo.method.soft_inputs import SoftInputs
from ngrpo.rollout import SamplingParams, generate

PAD, EOS, MARKER = 0, [1], [4]
PROMPTS = [[10, 11, 12, 13], [20, 21], [30, 31, 32], [40, 41, 42, 43, 44]]
G = 2  # responses per prompt


def _tiny(seed: int = 0) -> Qwen2ForCausalLM:
    return tiny_lm(seed=seed, max_positions=128).train()


def _rollouts(model, strategy: str, mix_rate: float = 1.0, temperature: float = 1.0, seed=0):
    exploration = ExplorationConfig(strategy=strategy, mix_top_k=3, mix_rate=mix_rate)
    return generate(
        model, PROMPTS, SamplingParams(n=G, temperature=temperature, max_new_tokens=12),
        eos_token_id=EOS, pad_token_id=PAD, exploration=exploration, answer_start_ids=MARKER,
        training=True, seed=seed,
    )  # fmt: skip


def _params(**kw) -> LearnerParams:
    defaults = dict(group_size=G, mini_batch_groups=len(PROMPTS), micro_batch_size=3)
    return LearnerParams(**{**defaults, **kw})


def _advantages(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))  # (N,)


@pytest.mark.numerics
@pytest.mark.parametrize("strategy", ["none", "neighbor", "gaussian"])
def test_recomputed_logprobs_equal_rollout_before_the_first_update(strategy):
    model = _tiny()
    batch = _rollouts(model, strategy, mix_rate=1.0, temperature=0.8)
    if strategy != "none":
        assert batch.mixed.any()
    mask = batch.response_mask.bool()
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, batch, temperature=0.8)  # (N, T) train mode
    assert (logp - batch.logprobs)[mask].abs().max() <= 1e-4

    # The learner's own check on its first mini-batch: ratio 1, nothing clipped.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    params = _params(temperature=0.8)  # one mini-batch, three micro-batches
    metrics = update_policy(model, optimizer, None, batch, _advantages(len(mask)), params)
    assert metrics["actor/replay_logp_err"] <= 1e-4
    assert abs(metrics["actor/ratio_min"] - 1) <= 1e-4
    assert abs(metrics["actor/ratio_max"] - 1) <= 1e-4
    assert metrics["actor/clip_frac"] == 0.0
    assert metrics["train/optimizer_steps"] == 1.0


def _bf16(fn):
    """`fn()` under CPU bf16 autocast, as the trainer runs a `model.dtype=bfloat16` run."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return fn()


def _with_rollout_gap(batch, scale: float = 0.02, seed: int = 2):
    """`batch` with its rollout log-probs moved by a known gap, as a GPU's bf16 kernels move them.

    On CPU the rollout's bf16 log-probs differ from the learner's only where the kernels sum in
    another order, which depends on the kernel path: with ATEN_CPU_CAPABILITY=default this model's
    two are bitwise equal (max gap 0.0). The tests of what the learner does *with* a gap bring
    their own."""
    mask = batch.response_mask.bool()
    noise = scale * torch.randn(batch.logprobs.shape, generator=torch.Generator().manual_seed(seed))
    return dataclasses.replace(batch, logprobs=torch.where(mask, batch.logprobs + noise, 0.0))


@pytest.mark.numerics
@pytest.mark.parametrize("strategy", ["none", "neighbor"])
def test_recomputed_old_logprobs_make_the_first_mini_batch_ratios_exactly_one_in_bf16(strategy):
    model = _tiny()
    batch = _with_rollout_gap(_bf16(lambda: _rollouts(model, strategy, mix_rate=0.5)))
    advantages = _advantages(len(batch.response_ids))
    results = {}
    for mode in ("rollout", "recompute"):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        params = _params(old_logprobs=mode, rollout_correction="none")  # one mini-batch
        results[mode] = _bf16(lambda p=params, o=optimizer: update_policy(
            model, o, None, batch, advantages, p))  # fmt: skip
    exact = results["recompute"]
    assert exact["actor/ratio_min"] == 1.0 and exact["actor/ratio_max"] == 1.0
    assert exact["actor/clip_frac"] == 0.0 and exact["time/old_logprobs_s"] > 0
    # the gap measured is π_old's (the learner's own pass) against the rollout's log-probs, on
    # every loss token, the positions after a mix separately
    old = _bf16(lambda: recompute_old_logprobs(model, batch, _params(old_logprobs="recompute")))
    expect = mismatch_metrics(old, batch.logprobs, batch.response_mask, batch.mixed)
    assert {k: exact[k] for k in expect} == pytest.approx(expect, rel=1e-6, abs=1e-9)
    assert exact["actor/replay_logp_err"] == expect["mismatch/logp_abs_max"]
    rollout = results["rollout"]  # π_old = the rollout's: ratios move by the gap
    assert rollout["actor/ratio_max"] > 1.0 or rollout["actor/ratio_min"] < 1.0
    assert "time/old_logprobs_s" not in rollout
    # both measure the same gap on this one mini-batch (scored before any optimizer step)
    assert rollout["mismatch/logp_abs_max"] == pytest.approx(exact["mismatch/logp_abs_max"])


def _first_tokens(batch, row: int, tokens: int, gap: float):
    """Row `row` of `batch` cut to its first `tokens` response tokens, with the rollout's log-probs
    lowered by `gap / tokens` each: log π_old − log π_rollout sums to `gap` over the row (fp32:
    π_old recomputed equals the rollout's within the replay invariant's 1e-4)."""
    one = batch.select([row])
    assert int(one.response_mask.sum()) >= tokens
    end = one.prompt_ids.shape[1] + tokens
    soft = one.soft_inputs
    return dataclasses.replace(
        one, response_ids=one.response_ids[:, :tokens], response_mask=one.response_mask[:, :tokens],
        logprobs=one.logprobs[:, :tokens] - gap / tokens, mixed=one.mixed[:, :tokens],
        eligible=None, truncated=None,
        soft_inputs=SoftInputs(soft.ids[:, :end], soft.weights[:, :end],
                               None if soft.noise is None else soft.noise[:, :end]),
    )  # fmt: skip


def _policy_gradient(model, batch, mode: str, cap: float, **kw) -> torch.Tensor:
    """The gradient (flattened) of one update's loss on `batch` (one row, advantage 1)."""
    model.zero_grad(set_to_none=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    params = LearnerParams(group_size=1, mini_batch_groups=1, micro_batch_size=1,
                           max_grad_norm=None, old_logprobs="recompute", rollout_correction=mode,
                           rollout_correction_cap=cap, **kw)  # fmt: skip
    update_policy(model, optimizer, None, batch, torch.tensor([1.0]), params)
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.numerics
@pytest.mark.parametrize("gap", [0.3, 0.5])  # e^0.3 = 1.35 under the cap 1.5, e^0.5 = 1.65 over
def test_each_correction_mode_scales_the_gradient_by_its_hand_computed_weight(gap):
    """One token (token modes) or one three-token sequence (sequence modes) whose rollout log-prob
    lies `gap` below π_old: the corrected gradient is w × the uncorrected one, with w = e^gap,
    truncated to the cap (TIS) or 0 above it (MIS)."""
    model = tiny_lm(seed=0, max_positions=128).eval()  # no dropout: the passes are comparable
    batch = _rollouts(model, "neighbor", mix_rate=0.5)
    cap, weight = 1.5, math.exp(gap)
    for mode in ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"):
        row = _first_tokens(batch, row=1, tokens=1 if mode.startswith("token") else 3, gap=gap)
        plain = _policy_gradient(model, row, "none", cap)
        corrected = _policy_gradient(model, row, mode, cap)
        kept = weight if weight <= cap else 0.0  # MIS: the token (sequence) is left out
        expect = min(weight, cap) if mode.endswith("truncate") else kept
        scale = float(plain.abs().max())
        assert scale > 0
        # same math, another order: w comes from the recomputed π_old, e^(gap ± 3 REPLAY_ATOL)
        # over three tokens; the scaled loss's backward rounds each element within about
        # sqrt(20 ops) * sqrt(64) * eps = 4e-6 of the largest gradient (numerics.REPLAY_ATOL)
        rtol = math.expm1(3 * REPLAY_ATOL)
        torch.testing.assert_close(corrected, expect * plain, rtol=rtol, atol=1e-5 * scale)


@pytest.mark.numerics
def test_masked_tokens_keep_their_place_in_the_normaliser_or_leave_the_loss_mask():
    """Two tokens, the first's weight e^1 above the cap 1.5 (masked), the second's 1. `keep`
    (TRL): loss = (0 + ρ_2 A) / 2; `drop` (verl's rejection sampling): loss = ρ_2 A / 1, twice
    the gradient."""
    model = tiny_lm(seed=0, max_positions=128).eval()
    row = _first_tokens(_rollouts(model, "neighbor", mix_rate=0.5), row=1, tokens=2, gap=0.0)
    row = dataclasses.replace(row, logprobs=row.logprobs - torch.tensor([[1.0, 0.0]]))
    keep = _policy_gradient(model, row, "token_mask", 1.5, rollout_correction_masked="keep")
    drop = _policy_gradient(model, row, "token_mask", 1.5, rollout_correction_masked="drop")
    scale = float(keep.abs().max())
    assert scale > 0
    torch.testing.assert_close(drop, 2.0 * keep, rtol=0, atol=1e-5 * scale)  # rounding: as above
    truncate = _policy_gradient(model, row, "token_truncate", 1.5, rollout_correction_masked="drop")
    assert not torch.allclose(truncate, drop)  # truncation leaves no token out: nothing dropped


def test_ratio_extremes_are_the_extremes_over_micro_batches():
    averages = ngrpo.learner.averages.Averages()
    averages.add({"actor/ratio_min": 0.9, "actor/ratio_max": 1.1, "actor/ratio_mean": 1.0,
                  "actor/ratio_tokens": 3.0, "loss/pg": 1.0,
                  "actor/clip_frac": 1 / 3, "actor/clip_frac_high": 0.0})  # fmt: skip
    averages.add({"actor/ratio_min": 0.7, "actor/ratio_max": 1.05, "actor/ratio_mean": 0.8,
                  "actor/ratio_tokens": 1.0, "loss/pg": 3.0,
                  "actor/clip_frac": 1.0, "actor/clip_frac_high": 1.0})  # fmt: skip
    averages.add({"actor/ratio_min": 1.0, "actor/ratio_max": 1.0, "actor/ratio_mean": 1.0,
                  "actor/ratio_tokens": 0.0, "loss/pg": 2.0,  # nothing scored
                  "actor/clip_frac": 0.0, "actor/clip_frac_high": 0.0})  # fmt: skip
    result = averages.result()
    assert result["actor/ratio_min"] == 0.7 and result["actor/ratio_max"] == 1.1
    assert result["actor/ratio_mean"] == pytest.approx((3 * 1.0 + 0.8) / 4)  # token-weighted
    # the clip fractions are token means too: 2 clipped tokens of the 4 scored
    assert result["actor/clip_frac"] == pytest.approx(2 / 4)
    assert result["actor/clip_frac_high"] == pytest.approx(1 / 4)
    assert result["actor/ratio_tokens"] == 4.0 and result["loss/pg"] == 2.0
    empty = ngrpo.learner.averages.Averages()
    empty.add({"actor/ratio_min": 1.0, "actor/ratio_max": 1.0, "actor/ratio_mean": 1.0,
               "actor/ratio_tokens": 0.0, "actor/clip_frac": 0.0})  # fmt: skip
    assert empty.result() == {"actor/ratio_min": 1.0, "actor/ratio_max": 1.0,
                              "actor/ratio_mean": 1.0, "actor/ratio_tokens": 0.0,
                              "actor/clip_frac": 0.0}  # fmt: skip


@pytest.mark.numerics
def test_a_micro_batch_of_truncated_rows_adds_no_ratio_and_the_mean_weighs_tokens():
    """Rows 0-1 truncated under `mask_truncated_completions`: their micro-batch scores no token and
    must not put ratio 1 into the extremes; the rollout's log-probs lowered by 0.1 + 0.05 * row
    make every scored ratio e^(0.1 + 0.05 * row) > 1, and `actor/ratio_mean` is their token mean."""
    model = _tiny()
    batch = _rollouts(model, "none")
    mask = batch.response_mask.bool()
    n = len(mask)
    gap = 0.1 + 0.05 * torch.arange(n, dtype=torch.float32)[:, None]  # (N, 1)
    truncated = torch.zeros(n, dtype=torch.bool)
    truncated[:2] = True
    batch = dataclasses.replace(
        batch, logprobs=torch.where(mask, batch.logprobs - gap, 0.0), truncated=truncated
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    params = _params(micro_batch_size=2, mask_truncated_completions=True)  # rows 0-1 alone
    metrics = update_policy(model, optimizer, None, batch, _advantages(n), params)
    scored = mask & ~truncated[:, None]  # (N, T)
    ratios = torch.exp(gap.expand_as(mask))[scored]  # π_old = π_rollout e^gap (replay: ±1e-4)
    rtol = math.expm1(REPLAY_ATOL)
    assert metrics["actor/ratio_min"] == pytest.approx(float(ratios.min()), rel=rtol)
    assert metrics["actor/ratio_max"] == pytest.approx(float(ratios.max()), rel=rtol)
    assert metrics["actor/ratio_mean"] == pytest.approx(float(ratios.mean()), rel=rtol)
    assert metrics["actor/ratio_tokens"] == float(scored.sum())


def _fed_ids(batch) -> tuple[set[int], set[int]]:
    """(ids fed with weight > 0 at positions whose input reaches a scored logit, of those the ids
    that were only ever fed as a mixed neighbour: slot >= 1)."""
    p = batch.prompt_ids.shape[1]
    lengths = batch.response_mask.sum(-1)  # (N,)
    attention = batch.attention_mask.bool()  # (N, P + T)
    positions = torch.arange(attention.shape[1])
    reaches = attention & (positions[None, :] <= p + lengths[:, None] - 2)  # (N, P + T)
    soft = batch.soft_inputs
    used = (soft.weights > 0) & reaches[..., None]  # (N, P + T, K)
    fed = set(soft.ids[used].tolist())
    as_token = set(soft.ids[..., 0][used[..., 0]].tolist())
    return fed, fed - as_token


def _embedding_grad_rows(model, batch) -> set[int]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    params = _params(max_grad_norm=None)
    update_policy(model, optimizer, None, batch, _advantages(len(batch.response_ids)), params)
    grad = model.get_input_embeddings().weight.grad  # (V, d)
    return set(grad.abs().sum(-1).nonzero().flatten().tolist())


def test_embedding_rows_of_neighbours_get_gradient_exactly_when_mixed():
    model = _tiny()
    mixed = _rollouts(model, "neighbor", mix_rate=1.0)
    fed, only_neighbours = _fed_ids(mixed)
    assert only_neighbours, "some candidate id should enter only as a mixed neighbour"
    assert _embedding_grad_rows(model, mixed) == fed

    plain = _rollouts(model, "neighbor", mix_rate=0.0)  # same gate machinery, mixing off
    assert not plain.mixed.any()
    fed_plain, none = _fed_ids(plain)
    rows = _embedding_grad_rows(model, plain)
    assert rows == fed_plain and not none
    assert only_neighbours - fed_plain and not rows & (only_neighbours - fed_plain)


@pytest.mark.parametrize("strategy", ["none", "neighbor"])
def test_one_update_raises_positive_and_lowers_negative_advantage_responses(strategy):
    model = _tiny(seed=3)
    batch = _rollouts(model, strategy, mix_rate=0.5, seed=4)
    mask = batch.response_mask.float()
    advantages = torch.tensor([1.0, -1.0]).repeat(len(PROMPTS))  # (N,) ± within each group
    with torch.no_grad():
        before = (sequence_logprobs(model, batch, 1.0)[0] * mask).sum(-1)  # (N,)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    metrics = update_policy(model, optimizer, None, batch, advantages, _params())
    assert metrics["train/optimizer_steps"] == 1.0 and metrics["actor/grad_norm"] > 0
    with torch.no_grad():
        after = (sequence_logprobs(model, batch, 1.0)[0] * mask).sum(-1)  # (N,)
    change = after - before
    assert change[advantages > 0].mean() > 0 > change[advantages < 0].mean()


@pytest.mark.numerics
def test_micro_batches_accumulate_to_the_mini_batch_gradient():
    model = _tiny()
    batch = _rollouts(model, "neighbor", mix_rate=0.5)
    advantages = _advantages(len(batch.response_ids))
    grads = []
    for micro in (1, 3, len(batch.response_ids)):
        model.zero_grad()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        update_policy(model, optimizer, None, batch, advantages,
                      _params(micro_batch_size=micro, max_grad_norm=None))  # fmt: skip
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[2], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("frozen", [False, True])
def test_mini_batches_step_the_optimizer_and_scheduler_and_neighbours_stay_fresh(frozen):
    model = _tiny()
    batch = _rollouts(model, "neighbor", mix_rate=0.5)
    table = model.get_input_embeddings().weight
    table.requires_grad_(not frozen)  # frozen (LoRA): the index keeps its cache
    index, anchors = NeighborIndex(table, 2), torch.arange(table.shape[0])
    index.lookup(anchors)  # every anchor's neighbours cached before the update
    cached = index.fills

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    params = _params(mini_batch_groups=1, num_iterations=2)  # 4 mini-batches x 2 epochs
    metrics = update_policy(
        model, optimizer, scheduler, batch, _advantages(len(batch.response_ids)), params
    )
    assert metrics["train/optimizer_steps"] == 8.0
    assert scheduler.last_epoch == 8
    # the next lookup answers for the updated table: recomputed, unless the table is frozen
    with torch.no_grad():
        fresh, _ = bruteforce_neighbors(table, anchors, 2)
    assert torch.equal(index.lookup(anchors), fresh)
    assert index.fills == (cached if frozen else 2 * cached)


def test_non_finite_loss_or_gradient_skips_the_step_and_training_goes_on(monkeypatch, caplog):
    model = _tiny()
    batch = _rollouts(model, "neighbor", mix_rate=0.5)
    advantages = _advantages(len(batch.response_ids))
    real_loss, calls = ngrpo.learner.update.grpo_loss, []

    def nan_once(*args, **kwargs):  # the first micro-batch's loss is NaN
        loss, metrics = real_loss(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 1 else loss), metrics

    monkeypatch.setattr(ngrpo.learner.update, "grpo_loss", nan_once)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    params = _params(mini_batch_groups=2, micro_batch_size=2)  # 2 mini-batches, 2 micro each
    with caplog.at_level(logging.WARNING, logger="ngrpo.learner.update"):
        metrics = update_policy(model, optimizer, None, batch, advantages, params)
    assert "optimizer step skipped" in caplog.text
    assert metrics["train/skipped_updates"] == 1.0 and metrics["train/optimizer_steps"] == 1.0
    assert len(calls) == 4  # the skipped mini-batch still ran all its micro-batches
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    monkeypatch.undo()

    # inf in a gradient (the loss itself finite): skipped as well
    weight = model.get_input_embeddings().weight
    fired = []

    def inf_once(grad):
        fired.append(1)
        return grad * float("inf") if len(fired) == 1 else grad

    handle = weight.register_hook(inf_once)
    params = _params(mini_batch_groups=2, micro_batch_size=8)  # 2 mini-batches, 1 micro each
    metrics = update_policy(model, optimizer, None, batch, advantages, params)
    handle.remove()
    assert metrics["train/skipped_updates"] == 1.0 and metrics["train/optimizer_steps"] == 1.0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _fp16_accelerator(init_scale: float):
    """accelerate's fp16 set-up as on a GPU (a `GradScaler` that `backward` scales by, clipping
    unscales and the prepared optimizer's `step` steps and updates), forced on the CPU, where
    accelerate creates no scaler."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=True, mixed_precision="fp16")
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    accelerator.native_amp = True
    return accelerator


@pytest.mark.parametrize("overflow", ["gradient", "loss"])
def test_fp16_overflow_skips_the_step_backs_off_the_scale_and_the_next_steps_train(
    overflow, monkeypatch
):
    model = _tiny()
    batch = _rollouts(model, "neighbor", mix_rate=0.5)
    advantages = _advantages(len(batch.response_ids))
    accelerator = _fp16_accelerator(init_scale=1024.0)
    optimizer = accelerator.prepare_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    fired = []
    if overflow == "gradient":  # the first backward overflows (the loss itself finite)

        def inf_once(grad):
            fired.append(1)
            return grad * float("inf") if len(fired) == 1 else grad

        handle = model.get_input_embeddings().weight.register_hook(inf_once)
    else:  # the first micro-batch's loss overflows
        real_loss = ngrpo.learner.update.grpo_loss

        def inf_once(*args, **kwargs):
            loss, metrics = real_loss(*args, **kwargs)
            fired.append(1)
            return (loss * float("inf") if len(fired) == 1 else loss), metrics

        monkeypatch.setattr(ngrpo.learner.update, "grpo_loss", inf_once)
    steps = []
    optimizer.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    before = [p.detach().clone() for p in model.parameters()]
    params = _params(mini_batch_groups=1, micro_batch_size=8)  # 4 mini-batches of one micro
    metrics = update_policy(
        model, optimizer, None, batch, advantages, params, accelerator=accelerator
    )
    if overflow == "gradient":
        handle.remove()
    assert metrics["train/skipped_updates"] == 1.0 and metrics["train/optimizer_steps"] == 3.0
    assert len(steps) == 3  # the inner optimizer stepped for the three finite mini-batches only
    assert accelerator.scaler.get_scale() == 1024.0 * 0.5  # backed off once, not grown (2000)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # the next update trains at the smaller scale, without an overflow
    metrics = update_policy(
        model, optimizer, None, batch, advantages, params, accelerator=accelerator
    )
    assert metrics["train/skipped_updates"] == 0.0 and metrics["train/optimizer_steps"] == 4.0
    assert accelerator.scaler.get_scale() == 512.0


def test_disable_dropout_zeroes_modules_and_config():
    from transformers import LlamaConfig, LlamaForCausalLM

    from ngrpo.models.load import disable_dropout

    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, attention_dropout=0.3,
    ))  # fmt: skip
    model.model.extra = torch.nn.Dropout(0.5)
    disable_dropout(model)
    assert model.config.attention_dropout == 0.0
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    model.train()
    ids = torch.randint(0, 32, (2, 6))
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_micro_batches_by_token_budget_pack_longest_first():
    prompts = torch.tensor([3, 5, 2, 4, 5])  # (n,)
    responses = torch.tensor([10, 2, 7, 1, 30])  # (n,) totals 13, 7, 9, 5, 35
    # Longest first: 4 (35 > budget: alone), then 0 (13), 2 (2 × (3 + 10) = 26 fits),
    # 1 (3 × (5 + 10) = 45 does not), then 1 (7) with 3: 2 × (5 + 2) = 14.
    parts = ngrpo.learner.update.micro_batches(
        prompts, responses, micro_batch_size=2, max_tokens=30
    )
    assert [p.tolist() for p in parts] == [[4], [0, 2], [1, 3]]
    parts = ngrpo.learner.update.micro_batches(
        prompts, responses, micro_batch_size=2, max_tokens=None
    )
    assert [p.tolist() for p in parts] == [[0, 1], [2, 3], [4]]  # today's: consecutive rows
    parts = ngrpo.learner.update.micro_batches(
        prompts, responses, micro_batch_size=2, max_tokens=10**6
    )
    assert [p.tolist() for p in parts] == [[4, 0, 2, 1, 3]]


@pytest.mark.numerics
@pytest.mark.parametrize("loss_type", ["token-mean", "seq-mean-token-mean"])
def test_token_budget_micro_batches_give_the_one_micro_batch_update(loss_type):
    batch = _rollouts(_tiny(), "neighbor", mix_rate=0.5)
    n = len(batch.response_ids)
    lengths = batch.prompt_mask.sum(-1) + batch.response_mask.sum(-1)  # (N,)
    assert lengths.min() < lengths.max()  # rows of different lengths to pack
    packed = ngrpo.learner.update.micro_batches(
        batch.prompt_mask.sum(-1), batch.response_mask.sum(-1), n, 3 * int(lengths.max())
    )
    assert 1 < len(packed) < n and any(len(p) > 1 for p in packed)  # really packs
    advantages = _advantages(n)
    weights = []
    for kw in ({"micro_batch_size": n}, {"max_tokens_per_micro_batch": 3 * int(lengths.max())},
               {"max_tokens_per_micro_batch": 1}):  # fmt: skip
        model = _tiny()
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        params = _params(loss_type=loss_type, max_grad_norm=None, entropy_coef=0.01, **kw)
        update_policy(model, optimizer, None, batch, advantages, params)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    moved = (weights[0] - torch.cat([p.flatten() for p in _tiny().parameters()])).abs().max()
    assert moved > 1e-3  # the update is not vacuous
    torch.testing.assert_close(weights[1], weights[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(weights[2], weights[0], rtol=0, atol=1e-5)


def test_an_out_of_memory_retry_redoes_the_mini_batch_from_its_state_before(monkeypatch):
    """Out of memory in mini-batch 2's second micro-batch, after mini-batch 1's AdamW step and
    mini-batch 2's first backward; `on_oom` returns a token budget (rows alone). The update
    equals, bitwise, mini-batch 1 as configured followed by mini-batch 2 under that budget
    from the start: the failed attempt left nothing in the gradients, weights or AdamW state,
    and the earlier optimizer step was kept, not redone."""
    batch = _rollouts(_tiny(), "neighbor", mix_rate=0.5)
    params = _params(mini_batch_groups=2, micro_batch_size=2)  # 2 mini-batches × 2 micro-batches
    advantages = _advantages(len(batch.response_ids))
    real, calls, failures = ngrpo.learner.update.policy_scores, [], []

    def scores(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(*args, **kwargs)

    def on_oom(old: LearnerParams, err) -> LearnerParams:
        failures.append(err)
        return dataclasses.replace(old, max_tokens_per_micro_batch=1)

    model = _tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    monkeypatch.setattr(ngrpo.learner.update, "policy_scores", scores)
    metrics = update_policy(model, optimizer, None, batch, advantages, params, on_oom=on_oom)
    monkeypatch.undo()
    assert metrics["train/oom_retries"] == 1.0 and metrics["train/optimizer_steps"] == 2.0
    (err,) = failures
    assert err.phase == "learner" and err.requested == "1.00 GiB"
    assert err.shape.startswith("mini-batch 2 of 2, micro-batch 2 of 2: 2 rows × (")

    ref = _tiny()
    ref_optimizer = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    rows = torch.arange(len(batch.response_ids)).split(2 * G)  # (4,), (4,)
    for mini, mini_params in zip(rows, (params, on_oom(params, err)), strict=True):
        update_policy(ref, ref_optimizer, None, batch.select(mini), advantages[mini], mini_params)
    for (name, got), want in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(got, want), name
    for got, want in zip(optimizer.state.values(), ref_optimizer.state.values(), strict=True):
        assert all(torch.equal(got[k], want[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    assert not torch.equal(next(model.parameters()), next(_tiny().parameters()))


def test_an_out_of_memory_retry_in_the_reference_recomputes_it(monkeypatch):
    """The reference's log-probs (beta > 0) run out of memory on a micro-batch of several rows:
    with `on_oom` they are recomputed under the returned budget, which the update then keeps;
    the result equals, bitwise, the update run with that budget from the start."""
    batch = _rollouts(_tiny(), "neighbor", mix_rate=0.5)
    params = _params(beta=0.1)
    one_row = dataclasses.replace(params, max_tokens_per_micro_batch=1)
    advantages = _advantages(len(batch.response_ids))
    real, phases = ngrpo.learner.update.policy_scores, []

    def scores(model, sub, *args, **kwargs):
        if not torch.is_grad_enabled() and len(sub.prompt_ids) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(model, sub, *args, **kwargs)

    def on_oom(old: LearnerParams, err) -> LearnerParams:
        phases.append(err.phase)
        return one_row

    def update(start_params: LearnerParams, retry) -> tuple[torch.nn.Module, dict]:
        model = _tiny()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        reference = _tiny(seed=1).requires_grad_(False)  # another model: the KL term is live
        metrics = update_policy(model, optimizer, None, batch, advantages, start_params,
                                ref_model=reference, on_oom=retry)  # fmt: skip
        return model, metrics

    monkeypatch.setattr(ngrpo.learner.scored, "policy_scores", scores)  # the no-grad passes
    retried, metrics = update(params, on_oom)
    monkeypatch.undo()
    direct, _ = update(one_row, None)
    assert phases == ["reference"] and metrics["train/oom_retries"] == 1.0
    assert metrics["loss/kl"] > 0
    for got, want in zip(retried.parameters(), direct.parameters(), strict=True):
        assert torch.equal(got, want)
