"""The pure parts of data parallelism and sharding: the global loss normaliser, rollout seeds and
generation batches, joining separately generated batches, the policy module, the optimizer-state
conversion, DCP checkpoints read back in one process, and the restricted reader of DCP metadata."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from test_rollout import _tiny as tiny_model

from ngrpo.config import load_config
from ngrpo.learner.policy import SoftInputPolicy, policy_scores
from ngrpo.learner.scoring import score_tokens
from ngrpo.method.exploration import ExplorationConfig
from ngrpo.method.losses import aggregate
from ngrpo.rollout import SamplingParams, generate, replay_logprobs
from ngrpo.rollout.batch import concat_batches
from ngrpo.sharding.checkpoint import (
    OPTIMIZER_DIR,
    OPTIMIZER_IN_DCP,
    check_dcp_metadata,
    ids_to_names,
    load_optimizer_state,
    names_to_ids,
    parameter_names,
)
from ngrpo.sharding.data_parallel import (
    generation_batches,
    global_loss_normalizer,
    process_prompt_slots,
    rollout_seed,
)
from ngrpo.utils.errors import NgrpoError

PAD, EOS, MARKER = 0, 1, [5]


def _tiny(seed: int = 0):
    return tiny_model("qwen2", vocab=64, seed=seed)  # eval mode


def _rollouts(model, prompts, seed=0):
    return generate(
        model, prompts, SamplingParams(n=2, max_new_tokens=12), eos_token_id=EOS,
        pad_token_id=PAD, exploration=ExplorationConfig(strategy="gaussian", mix_rate=0.5),
        answer_start_ids=MARKER, training=True, seed=seed,
    )  # fmt: skip


# ------------------------------------------------------------------------ loss normaliser


@pytest.mark.numerics
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_global_normaliser_makes_the_averaged_gradient_the_global_mean(mode):
    """Two processes with different token counts (one with none): the average of their
    gradients equals the gradient of one process holding both halves."""
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(6, 5, generator=gen)  # (N, T) per-token d loss / d w
    mask = (torch.rand(6, 5, generator=gen) > 0.4).float()
    mask[4:] = 0.0  # the second process's last rows have no tokens
    halves = [slice(0, 2), slice(2, 6)]
    counts = {"token-mean": lambda m: float(m.sum()), "seq-mean-token-mean": lambda m: m.shape[0],
              "seq-mean-token-sum": lambda m: m.shape[0]}[mode]  # fmt: skip
    total = sum(counts(mask[h]) for h in halves)
    grads = []
    for h in halves:
        w = torch.zeros((), requires_grad=True)
        norm = global_loss_normalizer(counts(mask[h]), 2, lambda c: total)
        aggregate(w * values[h], mask[h], mode, normalizer=norm).backward()
        grads.append(w.grad)
    w = torch.zeros((), requires_grad=True)
    aggregate(w * values, mask, mode).backward()
    torch.testing.assert_close(sum(grads) / 2, w.grad, rtol=1e-6, atol=1e-7)


def test_global_normaliser_in_one_process_is_the_local_count():
    assert global_loss_normalizer(7.0, 1, lambda c: 1 / 0) == 7.0
    assert global_loss_normalizer(0.0, 1, lambda c: c) == 1.0  # at least 1
    assert global_loss_normalizer(0.0, 4, lambda c: 0.0) == 0.25


# --------------------------------------------------------------------------------- seeding


def test_rollout_seed_of_the_first_batch_is_the_old_single_process_seed():
    for seed, step, round_ in [(0, 0, 0), (3, 17, 0), (5, 2, 2)]:
        old = (seed * 1_000_003 + step) * 1_009 + 0 + round_ * 104_729  # process 0
        assert rollout_seed(seed, step, round_, 0) == old


def test_rollout_seeds_differ_across_steps_rounds_and_batches():
    seeds = {rollout_seed(0, s, r, f) for s in range(60) for r in range(4) for f in range(0, 64, 4)}
    assert len(seeds) == 60 * 4 * 16


def test_process_prompt_slots_take_a_slice_of_every_mini_batch():
    assert process_prompt_slots(8, 8, 1, 0) == list(range(8))
    assert process_prompt_slots(8, 4, 2, 0) == [0, 1, 4, 5]
    assert process_prompt_slots(8, 4, 2, 1) == [2, 3, 6, 7]
    assert process_prompt_slots(12, 4, 4, 3) == [3, 7, 11]
    every = sorted(i for r in range(4) for i in process_prompt_slots(16, 8, 4, r))
    assert every == list(range(16))


def test_generation_batches():
    assert generation_batches(8, 4, 8) == [(0, 2), (2, 2), (4, 2), (6, 2)]
    assert generation_batches(5, 4, 8) == [(0, 2), (2, 2), (4, 1)]
    assert generation_batches(8, 4, None) == [(0, 8)]
    assert generation_batches(8, 4, 6) == [(0, 8)]  # not whole groups: one call, rows split inside


def test_joined_batches_keep_each_batch_rows_and_offset_prompt_indices():
    """What one process generating two generation batches hands on: each batch's rows as
    generated apart (as two processes would), prompt indices offset, totals summed."""
    model = _tiny()
    prompts = [[10, 11, 12, 13, 14], [20, 21], [30, 31, 32], [40]]
    first = _rollouts(model, prompts[:2], seed=rollout_seed(0, 1, 0, 0))
    second = _rollouts(model, prompts[2:], seed=rollout_seed(0, 1, 0, 2))
    joined = concat_batches([first, second], PAD)
    assert joined.responses() == first.responses() + second.responses()
    assert joined.prompt_ids.shape[1] == first.prompt_ids.shape[1] > second.prompt_ids.shape[1]
    assert joined.prompt_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert joined.stats["rollout/tokens"] == first.stats["rollout/tokens"] + second.stats[
        "rollout/tokens"]  # fmt: skip


@pytest.mark.numerics
def test_joined_batch_ratios_are_the_whole_batchs():
    """`embed_shift` and `neighbor_weight` are means over mixed positions: the joined batch's are
    the whole batch's (recomputed from its records), not the parts' weighted by rows."""
    from ngrpo.rollout.engine import _embed_shift_sum

    model = _tiny()
    explore = ExplorationConfig(strategy="neighbor", mix_rate=0.6, mix_top_k=3)
    parts = [
        generate(model, prompts, SamplingParams(n=n, max_new_tokens=12), eos_token_id=EOS,
                 pad_token_id=PAD, exploration=explore, answer_start_ids=MARKER, training=True,
                 seed=seed)
        for prompts, n, seed in (([[10, 11, 12]], 2, 3), ([[20, 21], [30]], 3, 4))
    ]  # fmt: skip
    joined = concat_batches(parts, PAD)
    start = joined.prompt_ids.shape[1]
    ids, weights = joined.soft_inputs.ids[:, start:], joined.soft_inputs.weights[:, start:]
    mixed = joined.mixed  # (N, T)
    assert [int(p.mixed.sum()) for p in parts] != [0, 0]
    expected = float((1 - weights[..., 0])[mixed].mean())
    assert joined.stats["rollout/neighbor_weight"] == pytest.approx(expected, rel=1e-6)
    with torch.no_grad():
        total, count = _embed_shift_sum(model.get_input_embeddings(), joined.response_ids, ids,
                                        weights, None, mixed)  # fmt: skip
    assert joined.stats["rollout/embed_shift"] == pytest.approx(float(total / count), rel=1e-6)


def test_process_reduction_sums_error_counts_and_weights_ratios_by_their_counts():
    """Over processes: `reward/<name>/errors` is a count (summed); `mixed_frac` / `embed_shift`
    / `neighbor_weight` are ratios of the whole (weighted by eligible, measured, mixed tokens)."""
    from types import SimpleNamespace

    from ngrpo.trainer.step import _reduce

    mine = {"reward/math/errors": 1.0, "rollout/mixed_frac": 0.5, "rollout/eligible_tokens": 10.0,
            "rollout/embed_shift": 0.2, "rollout/embed_shift_tokens": 5.0,
            "rollout/neighbor_weight": 0.3, "rollout/mixed_tokens": 5.0}  # fmt: skip
    other = {"reward/math/errors": 2.0, "rollout/mixed_frac": 0.1, "rollout/eligible_tokens": 30.0,
             "rollout/embed_shift": 0.6, "rollout/embed_shift_tokens": 3.0,
             "rollout/neighbor_weight": 0.5, "rollout/mixed_tokens": 3.0}  # fmt: skip

    def gather(values):  # two processes: this one and `other`, in sorted-key order
        theirs = torch.tensor([other[k] for k in sorted(other)], dtype=values.dtype)
        return torch.cat([values, theirs])

    run = SimpleNamespace(accelerator=SimpleNamespace(num_processes=2, device="cpu",
                                                      gather=gather))  # fmt: skip
    out = _reduce(run, mine)
    assert out["reward/math/errors"] == 3.0
    assert out["rollout/eligible_tokens"] == 40.0 and out["rollout/mixed_tokens"] == 8.0
    assert out["rollout/mixed_frac"] == pytest.approx((5 + 3) / 40)  # mixed over eligible
    assert out["rollout/embed_shift"] == pytest.approx((0.2 * 5 + 0.6 * 3) / 8)
    assert out["rollout/neighbor_weight"] == pytest.approx((0.3 * 5 + 0.5 * 3) / 8)


@pytest.mark.numerics
def test_joined_batch_replays_its_own_log_probabilities():
    """Padding added by `concat_batches` (prompts left, responses right, records) scores
    nothing: the replay of the joined batch equals the rollout's log-probs (fp32, 1e-4)."""
    model = _tiny()
    joined = concat_batches(
        [_rollouts(model, [[10, 11, 12, 13, 14, 15]], 1), _rollouts(model, [[20]], 2)], PAD
    )
    assert joined.soft_inputs.noise is not None and joined.mixed.any()
    with torch.no_grad():
        logp = replay_logprobs(model, joined, 1.0)  # (N, T)
    assert float((logp - joined.logprobs).abs().max()) < 1e-4


# --------------------------------------------------------------------------- policy module


@pytest.mark.numerics
def test_policy_module_scores_as_score_tokens_with_the_same_gradients():
    model = _tiny().train()
    batch = _rollouts(model, [[10, 11, 12], [20, 21]])
    expected, entropy = score_tokens(model, batch, 1.0, detach_mixed=True)
    (expected.sum() + entropy.sum()).backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logp, ent = policy_scores(SoftInputPolicy(model), batch, 1.0, detach_mixed=True)
    (logp.sum() + ent.sum()).backward()
    torch.testing.assert_close(logp, expected, rtol=0, atol=0)
    torch.testing.assert_close(ent, entropy, rtol=0, atol=0)
    for p, g in zip(model.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


@pytest.mark.numerics
def test_policy_module_under_autocast_scores_with_the_head_outside_it():
    """accelerate's mixed precision wraps the whole policy forward in autocast (DDP, bf16): the
    chunked head still runs in its own dtype and returns fp32 scores near the fp32 ones."""
    model = _tiny().train()
    batch = _rollouts(model, [[10, 11, 12], [20, 21]])
    want, _ = score_tokens(model, batch, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, entropy = policy_scores(SoftInputPolicy(model), batch, 1.0)
    assert logp.dtype == entropy.dtype == torch.float32
    assert float((logp - want).abs().max()) < 0.1
    (logp.sum() + entropy.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ------------------------------------------------------------------------ optimizer states


def _stepped_optimizer(module):
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    loss = sum((p * p).sum() for p in module.parameters())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def test_id_and_name_keyed_optimizer_states_convert_both_ways():
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    module = SoftInputPolicy(_tiny())
    optimizer = _stepped_optimizer(module)
    names = parameter_names(module)
    by_name = ids_to_names(optimizer.state_dict(), names)
    torch_form = get_optimizer_state_dict(module, optimizer)  # torch's FQN-keyed form
    assert sorted(by_name["state"]) == sorted(torch_form["state"])
    assert by_name["param_groups"][0]["params"] == torch_form["param_groups"][0]["params"]
    for name, state in torch_form["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(by_name["state"][name][key], value, rtol=0, atol=0)
    back = names_to_ids(by_name, names)
    assert back["param_groups"] == optimizer.state_dict()["param_groups"]
    with pytest.raises(NgrpoError, match="unknown parameter 'model.nope'"):
        names_to_ids({"state": {"model.nope": {}}, "param_groups": []}, names)


def test_a_dcp_optimizer_state_loads_exactly_in_one_process(tmp_path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    module = SoftInputPolicy(_tiny())
    optimizer = _stepped_optimizer(module)
    state = get_optimizer_state_dict(module, optimizer)
    dcp.save(state, checkpoint_id=str(tmp_path / "optimizer"), no_dist=True)
    fresh = torch.optim.AdamW(module.parameters(), lr=1e-2)
    load_optimizer_state(module, fresh, tmp_path, OPTIMIZER_IN_DCP, sharded=False)
    want, got = optimizer.state_dict(), fresh.state_dict()
    assert got["param_groups"] == want["param_groups"]
    for i, state in want["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(got["state"][i][key], value, rtol=0, atol=0)


# --------------------------------------------------------------------- restricted metadata


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_dcp_metadata_with_code_is_refused_before_loading(tmp_path):
    """A run directory from elsewhere cannot run code on --resume through DCP's pickled
    `.metadata`: refused with an error naming the file; the payload never runs."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    module = SoftInputPolicy(_tiny())
    optimizer = _stepped_optimizer(module)
    good = tmp_path / "good" / OPTIMIZER_DIR
    dcp.save(get_optimizer_state_dict(module, optimizer), checkpoint_id=str(good), no_dist=True)
    check_dcp_metadata(good)  # real metadata passes

    bad = tmp_path / "bad" / OPTIMIZER_DIR
    bad.mkdir(parents=True)
    marker = tmp_path / "pwned"
    (bad / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(NgrpoError, match=r"bad/optimizer/\.metadata cannot be loaded safely"):
        load_optimizer_state(module, optimizer, bad.parent, OPTIMIZER_IN_DCP, sharded=False)
    assert not marker.exists()
    (bad / ".metadata").write_bytes(b"not a pickle")
    with pytest.raises(NgrpoError, match="or is damaged"):
        check_dcp_metadata(bad)


# ---------------------------------------------------------------------------------- config


def test_strategy_key_its_verl_alias_and_bad_values():
    assert load_config("tiny_ngrpo").train.strategy == "ddp"
    cfg = load_config("tiny_ngrpo", ["actor_rollout_ref.actor.strategy=fsdp"])
    assert cfg.train.strategy == "fsdp"
    with pytest.raises(NgrpoError, match="train.strategy: 'zero3' is not allowed"):
        load_config("tiny_ngrpo", ["train.strategy=zero3"])
    for name in ("r1_distill_qwen_7b_grpo", "r1_distill_qwen_7b_ngrpo"):  # 7B needs sharding
        assert load_config(name, ["model.path=/m", "data.train=/d"]).train.strategy == "fsdp"


def test_fsdp_with_lora_is_refused_with_the_keys_named():
    with pytest.raises(NgrpoError, match=r"train.strategy=fsdp with model.lora.r > 0"):
        load_config("tiny_ngrpo", ["train.strategy=fsdp", "model.lora.r=8"])
    assert load_config("tiny_ngrpo", ["train.strategy=ddp", "model.lora.r=8"]).model.lora.r == 8
