"""Release-faithful switches, each pinned against a hand-computed example: candidate weights
(`neighbor_weights`), the searched neighbour table (`neighbor_table`), the embedding gradient
through mixed positions (`soft_input_grad`), verl's dual clip (`clip_ratio_c`), and the shipped
configs' choices."""

from __future__ import annotations

import logging
import math
import re

import pytest
import torch
from factories import tiny_lm
from transformers import Qwen2ForCausalLM

from ngrpo.config import load_config
from ngrpo.learner.update import sequence_logprobs
from ngrpo.method.exploration import STRATEGIES, ExplorationConfig, StepView, release_weights
from ngrpo.method.losses import policy_loss
from ngrpo.method.neighbors import NeighborIndex, bruteforce_neighbors
from ngrpo.method.soft_inputs import SoftInputs, embed
from ngrpo.rollout import SamplingParams, generate, neighbor_search_table
from ngrpo.utils.errors import NgrpoError

PAD, EOS, MARKER = 0, [1], [4]
PROMPTS = [[10, 11, 12, 13], [20, 21], [30, 31, 32]]


def _view(probs: list[float], logits: list[float] | None = None) -> StepView:
    p = torch.tensor([probs])  # (1, V)
    z = p.log() if logits is None else torch.tensor([logits])  # (1, V) softmax(z) = p
    return StepView(z, p, p.argmax(-1), torch.eye(len(probs)), None, torch.Generator())


# ----------------------------------------------------------------------- neighbor_weights


def test_release_weights_hand_example_tau_one():
    view = _view([0.998, 0.002, 0.0, 0.0])
    w = release_weights(view.logits, view.probs, torch.tensor([[0, 1]]), temperature=1.0)
    e0, e1 = math.exp(0.998), math.exp(0.002)
    assert torch.allclose(w, torch.tensor([[e0 / (e0 + e1), e1 / (e0 + e1)]]), atol=1e-6)
    assert abs(float(w[0, 1]) - 0.2699) < 1e-3  # the neighbour gets ≈ 0.27 in the release
    # the paper's text (policy) gives it 0.002
    policy = STRATEGIES["neighbor"]
    view.neighbors = lambda anchors: torch.tensor([[1]])
    assert torch.allclose(policy(view, k=2).weights, torch.tensor([[0.998, 0.002]]), atol=1e-6)
    mix = policy(view, k=2, weights="release", temperature=1.0)
    assert mix.ids.tolist() == [[0, 1]] and torch.allclose(mix.weights, w)


def test_release_weights_temperature_enters_twice_and_truncated_candidates_get_zero():
    z = [2.0, 1.0, 0.5, -1.0]
    tau = 0.5
    q = torch.softmax(torch.tensor(z) / tau, -1)  # untruncated softmax(z/τ)
    # the sampler truncated token 2 (top-k = 2): p_t = 0 there
    p = torch.tensor([[q[0] / (q[0] + q[1]), q[1] / (q[0] + q[1]), 0.0, 0.0]])
    view = StepView(torch.tensor([z]), p, torch.tensor([0]), torch.eye(4), None, torch.Generator())
    w = release_weights(view.logits, view.probs, torch.tensor([[0, 1, 2]]), temperature=tau)
    a, b = math.exp(float(q[0]) / tau), math.exp(float(q[1]) / tau)
    assert torch.allclose(w, torch.tensor([[a / (a + b), b / (a + b), 0.0]]), atol=1e-6)


def test_release_weights_of_the_topk_family_divide_by_mix_temperature():
    z = [3.0, 2.0, 1.0, 0.0]
    q = torch.softmax(torch.tensor(z), -1)
    view = StepView(torch.tensor([z]), q[None], torch.tensor([0]), torch.eye(4), None,
                    torch.Generator())  # fmt: skip
    mt = 0.25
    s = torch.exp(q[:2] / (1.0 * mt))
    want = (s / s.sum())[None]
    got = STRATEGIES["topk"](view, k=2, mix_temperature=mt, weights="release", temperature=1.0)
    assert got.ids.tolist() == [[0, 1]] and torch.allclose(got.weights, want, atol=1e-6)
    gauss = STRATEGIES["gaussian"](view, k=2, mix_temperature=mt, weights="release",
                                   temperature=1.0, noise_scale=0.0)  # fmt: skip
    assert torch.allclose(gauss.weights, want, atol=1e-6)
    # policy reading: softmax(z / mix_temperature) over the top-k
    plain = STRATEGIES["topk"](view, k=2, mix_temperature=mt)
    assert torch.allclose(plain.weights, torch.softmax(torch.tensor([[3.0, 2.0]]) / mt, -1))


@pytest.mark.parametrize(
    ("key", "value"), [("neighbor_weights", "paper"), ("neighbor_table", "lm_head")]
)
def test_exploration_switches_are_validated(key, value):
    with pytest.raises(NgrpoError, match=f"exploration.{key}.*{value}.*choose one of"):
        ExplorationConfig(strategy="neighbor", **{key: value}).validate()


# ------------------------------------------------------------------------ neighbor_table


def _tiny(seed: int = 0, tie: bool = False) -> Qwen2ForCausalLM:
    return tiny_lm(40, seed=seed, shape="micro", max_positions=64, tie=tie)


def _constructed_tables(model) -> None:
    """Input rows: token 6 nearest to 5; output rows: token 7 nearest to 5."""
    with torch.no_grad():
        inp, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        inp[5], inp[6], inp[7] = torch.ones(16), torch.ones(16) * 1.1, -torch.ones(16)
        out[5], out[6], out[7] = torch.ones(16), -torch.ones(16), torch.ones(16) * 0.9


def test_output_table_neighbours_differ_from_input_table_ones():
    model = _tiny()
    _constructed_tables(model)
    anchors = torch.tensor([5])
    for which, want in (("input", 6), ("output", 7)):
        table = neighbor_search_table(model, which)
        assert NeighborIndex(table, 1).lookup(anchors).tolist() == [[want]]
        assert bruteforce_neighbors(table.weight, anchors, 1)[0].tolist() == [[want]]


@pytest.mark.numerics
def test_rollout_mixes_output_table_neighbours_from_input_rows_and_replays():
    model = _tiny(seed=1)
    explore = ExplorationConfig(strategy="neighbor", mix_top_k=2, mix_rate=1.0,
                                neighbor_table="output", neighbor_weights="release")  # fmt: skip
    batch = generate(
        model, PROMPTS, SamplingParams(n=2, max_new_tokens=8), eos_token_id=EOS, pad_token_id=PAD,
        exploration=explore, answer_start_ids=MARKER, training=True, seed=0,
    )  # fmt: skip
    assert batch.mixed.any()
    p = batch.prompt_ids.shape[1]
    ids = batch.soft_inputs.ids[:, p:][batch.mixed]  # (M, 2)
    out = model.get_output_embeddings().weight
    want = bruteforce_neighbors(out, ids[:, 0], 1)[0][:, 0]
    assert torch.equal(ids[:, 1], want)
    inp_nn = bruteforce_neighbors(model.get_input_embeddings().weight, ids[:, 0], 1)[0][:, 0]
    assert not torch.equal(want, inp_nn)  # the switch changes something on this model
    assert 0.0 < batch.stats["rollout/neighbor_weight"] < 1.0
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, batch, 1.0)
    assert (logp - batch.logprobs)[batch.response_mask.bool()].abs().max() <= 1e-4


def test_output_table_errors_name_the_key():
    class NoHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)

        def get_input_embeddings(self):
            return self.emb

        def get_output_embeddings(self):
            return None

    with pytest.raises(NgrpoError, match="neighbor_table=output.*no output embeddings"):
        neighbor_search_table(NoHead(), "output")
    model = _tiny()
    model.lm_head = torch.nn.Linear(16, 30, bias=False)  # vocabulary rows differ
    with pytest.raises(NgrpoError, match="neighbor_table=output.*30 rows.*40"):
        neighbor_search_table(model, "output")


def test_index_cache_tracks_the_searched_output_table():
    model = _tiny()
    _constructed_tables(model)
    index = NeighborIndex(neighbor_search_table(model, "output"), 1)
    assert index.lookup(torch.tensor([5])).tolist() == [[7]]
    with torch.no_grad():
        model.get_output_embeddings().weight[7] = -torch.ones(16)  # in place: version bump
        model.get_output_embeddings().weight[8] = torch.ones(16)
    assert index.lookup(torch.tensor([5])).tolist() == [[8]]


# ------------------------------------------------------------------------ soft_input_grad


@pytest.mark.numerics
def test_embed_detach_cuts_the_gradient_of_mixed_rows_only():
    table = torch.randn(6, 3, requires_grad=True)
    soft = SoftInputs(
        torch.tensor([[[1, 1], [2, 3], [4, 4]]]),  # plain 1, mixed (2, 3), plain 4
        torch.tensor([[[1.0, 0.0], [0.7, 0.3], [1.0, 0.0]]]),
    )
    mixed = torch.tensor([[False, True, False]])
    out_all = embed(table, soft)
    out_none = embed(table, soft, detach=mixed)
    assert torch.equal(out_all, out_none)  # same values: the replay invariant is untouched
    (grad_all,) = torch.autograd.grad(out_all.sum(), table)
    (grad_none,) = torch.autograd.grad(out_none.sum(), table)
    assert torch.allclose(grad_all[2], torch.full((3,), 0.7))
    assert torch.allclose(grad_all[3], torch.full((3,), 0.3))
    assert grad_none[2].abs().sum() == 0 and grad_none[3].abs().sum() == 0
    assert torch.allclose(grad_none[1], torch.ones(3))
    assert torch.allclose(grad_none[4], torch.ones(3))


@pytest.mark.numerics
def test_soft_input_grad_none_gives_no_gradient_to_rows_fed_only_at_mixed_positions():
    model = _tiny(seed=2).train()
    explore = ExplorationConfig(strategy="neighbor", mix_top_k=3, mix_rate=1.0)
    batch = generate(
        model, PROMPTS, SamplingParams(n=2, max_new_tokens=8), eos_token_id=EOS, pad_token_id=PAD,
        exploration=explore, answer_start_ids=MARKER, training=True, seed=0,
    )  # fmt: skip
    assert batch.mixed.any()
    p = batch.prompt_ids.shape[1]
    mask = batch.response_mask.bool()
    grads = {}
    for mode in ("all", "none"):
        model.zero_grad()
        logp, _ = sequence_logprobs(model, batch, 1.0, soft_input_grad=mode)
        assert (logp.detach() - batch.logprobs)[mask].abs().max() <= 1e-4
        logp[mask].sum().backward()
        grads[mode] = model.get_input_embeddings().weight.grad.abs().sum(-1)  # (V,)
    # ids fed at mixed positions that reach a scored logit, and ids fed anywhere else
    lengths = batch.response_mask.sum(-1)
    t = torch.arange(batch.mixed.shape[1])
    reaches = batch.mixed & (t[None, :] <= lengths[:, None] - 2)
    mixed_ids = set(batch.soft_inputs.ids[:, p:][reaches].flatten().tolist())
    plain_pos = torch.cat([batch.prompt_mask.bool(), ~batch.mixed & batch.response_mask.bool()], 1)
    plain_ids = set(batch.soft_inputs.ids[..., 0][plain_pos].tolist())
    only_mixed = mixed_ids - plain_ids
    assert only_mixed
    assert all(grads["all"][i] > 0 for i in only_mixed)
    assert all(grads["none"][i] == 0 for i in only_mixed)
    assert grads["none"][sorted(plain_ids)].sum() > 0


# ---------------------------------------------------------------------------- dual clip


def test_dual_clip_hand_example():
    # tokens: (A=-1, ρ=5), (A=-1, ρ=2), (A=-1, ρ=0.5), (A=+1, ρ=5)
    ratio = torch.tensor([[5.0, 2.0, 0.5, 5.0]])
    adv = torch.tensor([[-1.0, -1.0, -1.0, 1.0]])
    logp, old = ratio.log(), torch.zeros(1, 4)
    mask = torch.ones(1, 4)
    loss, m = policy_loss(logp, old, adv, mask, 0.2, 0.2, "token", clip_ratio_c=3.0)
    # A<0: min(max(-Aρ, -A clip(ρ)), -A c) = min(max(ρ, clip ρ), 3); A>0: max(-5, -1.2) = -1.2
    assert torch.allclose(loss, torch.tensor([[3.0, 2.0, 0.8, -1.2]]))
    assert m["loss/pg_clipfrac_lower"] == 0.25
    off, m_off = policy_loss(logp, old, adv, mask, 0.2, 0.2, "token")
    assert torch.allclose(off, torch.tensor([[5.0, 2.0, 0.8, -1.2]]))
    assert "loss/pg_clipfrac_lower" not in m_off
    with pytest.raises(NgrpoError, match="clip_ratio_c must be > 1"):
        policy_loss(logp, old, adv, mask, clip_ratio_c=1.0)


# ---------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.clip_ratio_c=0.5", "train.clip_ratio_c must be > 1 or null"),
        ("train.soft_input_grad=some", "train.soft_input_grad: 'some' is not allowed.*all, none"),
        ("train.max_sampling_rounds=0", "train.max_sampling_rounds must be an integer >= 1"),
        ("exploration.neighbor_weights=paper", "exploration.neighbor_weights.*policy, release"),
        ("exploration.neighbor_table=lm", "exploration.neighbor_table.*input, output"),
    ],
)
def test_config_validation_errors_name_the_key(override, message):
    with pytest.raises(NgrpoError, match=message):
        load_config("tiny_ngrpo", [override])


@pytest.mark.parametrize("size", ["1.5b", "7b"])
def test_shipped_release_configs_reproduce_the_release(size):
    cfg = load_config(f"r1_distill_qwen_{size}_ngrpo", ["model.path=/m", "data.train=/d"])
    assert cfg.exploration.neighbor_weights == "release"
    assert cfg.exploration.neighbor_table == "output"
    assert cfg.train.clip_ratio_c == 3.0
    assert cfg.train.soft_input_grad == "none"
    assert cfg.train.loss_type == "token-mean"
    grpo = load_config(f"r1_distill_qwen_{size}_grpo", ["model.path=/m", "data.train=/d"])
    assert grpo.train.clip_ratio_c == 3.0


def test_shipped_tiny_configs_defaults():
    """N-GRPO uses the authors' code's weights (as the demo); everything else is the paper's text;
    the three differ only in `exploration` (and the output directory)."""
    configs = {name: load_config(name, []) for name in ("tiny_grpo", "tiny_ngrpo", "tiny_stht")}
    for name, cfg in configs.items():
        assert cfg.exploration.neighbor_weights == ("release" if name == "tiny_ngrpo" else "policy")
        assert cfg.exploration.neighbor_table == "input"
        assert cfg.train.soft_input_grad == "all"
        assert cfg.train.clip_ratio_c is None
        assert cfg.train.dynamic_sampling is False
        grpo = configs["tiny_grpo"]
        assert (cfg.train, cfg.rollout, cfg.data, cfg.eval) == (
            grpo.train,
            grpo.rollout,
            grpo.data,
            grpo.eval,
        )
    mixing = [configs["tiny_ngrpo"].exploration, configs["tiny_stht"].exploration]
    assert {(e.mix_rate, e.entropy_threshold) for e in mixing} == {(0.2, 0.5)}  # one shared gate


def test_verl_aliases_of_the_new_keys():
    cfg = load_config("tiny_ngrpo", [
        "actor_rollout_ref.actor.clip_ratio_c=3.0", "algorithm.filter_groups.enable=true",
        "algorithm.filter_groups.max_num_gen_batches=10",
    ])  # fmt: skip
    assert cfg.train.clip_ratio_c == 3.0 and cfg.train.dynamic_sampling
    assert cfg.train.max_sampling_rounds == 10


@pytest.mark.parametrize(("overrides", "mode", "cap"), [
    (["algorithm.rollout_correction.rollout_is=sequence",
      "algorithm.rollout_correction.rollout_is_threshold=3.0"], "sequence_truncate", 3.0),
    (["algorithm.rollout_correction.rollout_is=null"], "none", 2.0),
    (["vllm_importance_sampling_mode=token_mask", "vllm_importance_sampling_cap=5"],
     "token_mask", 5.0),
    (["vllm_importance_sampling_mode=sequence_mask", "vllm_importance_sampling_clip_max=3.0"],
     "sequence_mask", 3.0),
])  # fmt: skip
def test_rollout_correction_aliases_of_verl_and_trl(overrides, mode, cap):
    cfg = load_config("tiny_ngrpo", overrides)
    assert cfg.train.rollout_correction == mode and cfg.train.rollout_correction_cap == cap


def test_trl_correction_switch_and_lower_bound_reach_the_learner():
    from ngrpo.trainer.setup import _learner_params

    cfg = load_config("tiny_ngrpo", ["vllm_importance_sampling_clip_min=0.5",
                                     "train.rollout_correction_masked=drop"])  # fmt: skip
    params = _learner_params(cfg, 1, torch.bfloat16)
    assert params.rollout_correction == "token_truncate"
    assert params.rollout_correction_min == 0.5 and params.rollout_correction_masked == "drop"
    off = load_config("tiny_ngrpo", ["vllm_importance_sampling_correction=false",
                                     "vllm_importance_sampling_mode=token_mask"])  # fmt: skip
    assert off.train.rollout_correction == "token_mask"  # stored as given ...
    assert _learner_params(off, 1, torch.bfloat16).rollout_correction == "none"  # ... but off
    for bad, fragment in (("train.rollout_correction_min=1.5", "must be in [0, 1] or null"),
                          ("train.rollout_correction_masked=zero", "keep, drop")):  # fmt: skip
        with pytest.raises(NgrpoError, match=re.escape(fragment)):
            load_config("tiny_ngrpo", [bad])


def test_a_correction_against_the_rollouts_own_logprobs_in_bf16_warns(caplog):
    from ngrpo.trainer.setup import rollout_correction_mode

    cfg = load_config("tiny_ngrpo", ["train.old_logprobs=rollout"])
    with caplog.at_level(logging.WARNING, logger="ngrpo.trainer.setup"):
        assert rollout_correction_mode(cfg.train, torch.float32) == "token_truncate"
        assert not caplog.records  # fp32: the rollout's log-probs are π_old's, nothing to correct
        assert rollout_correction_mode(cfg.train, torch.bfloat16) == "token_truncate"
    assert "does nothing with train.old_logprobs=rollout" in caplog.text
    caplog.clear()
    auto = load_config("tiny_ngrpo", [])
    with caplog.at_level(logging.WARNING, logger="ngrpo.trainer.setup"):
        rollout_correction_mode(auto.train, torch.bfloat16)  # auto recomputes in bf16
    assert not caplog.records


def test_old_logprobs_auto_follows_the_compute_dtype():
    from ngrpo.trainer.setup import old_logprobs_mode

    assert old_logprobs_mode("auto", torch.float32) == "rollout"  # exact: the replay invariant
    assert old_logprobs_mode("auto", torch.bfloat16) == "recompute"
    assert old_logprobs_mode("auto", torch.float16) == "recompute"
    assert old_logprobs_mode("rollout", torch.bfloat16) == "rollout"  # an explicit choice stays
