"""The rollout engine on tiny random Qwen2 and Llama models: the replay invariant, equality with
plain sampling and with a naive loop without KV cache, gating, records, errors."""

import json
import math

import pytest
import torch
from factories import tiny_lm

from ngrpo.method.exploration import STRATEGIES, ExplorationConfig
from ngrpo.method.neighbors import bruteforce_neighbors
from ngrpo.method.soft_inputs import SoftInputs
from ngrpo.rollout import (
    SamplingParams,
    generate,
    left_pad,
    position_ids_from_mask,
    replay_logits,
    replay_logprobs,
    sample_tokens,
    warp_logits,
)
from ngrpo.utils.errors import NgrpoError

PAD, EOS = 0, [1, 2, 3]
MARKER = [4]
PROMPTS = [[10, 11, 12, 13, 14, 15, 16], [20, 21], [30, 31, 32, 33], [40]]


def _tiny(kind: str, vocab: int = 100, seed: int = 0):
    return tiny_lm(vocab, seed=seed, arch=kind)


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model(request):
    return _tiny(request.param)


def _explore(strategy, mix_rate=0.5, k=3, **kw):
    return ExplorationConfig(strategy=strategy, mix_top_k=k, mix_rate=mix_rate, **kw)


def _run(model, sampling=None, exploration=None, training=True, seed=0, prompts=PROMPTS, **kw):
    return generate(
        model, prompts, sampling or SamplingParams(n=2, max_new_tokens=24),
        eos_token_id=kw.pop("eos", EOS), pad_token_id=PAD, exploration=exploration,
        answer_start_ids=kw.pop("marker", MARKER), training=training, seed=seed, **kw,
    )  # fmt: skip


# ------------------------------------------------------------------------ sampling math


@pytest.mark.numerics
def test_warp_matches_naive_top_k_top_p():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 15, generator=gen) * 2
    for top_k, top_p in [(0, 1.0), (4, 1.0), (0, 0.7), (5, 0.5), (3, 0.99)]:
        warped = warp_logits(logits, 0.8, top_k, top_p)
        for row in range(20):
            z = (logits[row] / 0.8).tolist()
            order = sorted(range(15), key=lambda v: -z[v])
            keep = set(order[:top_k]) if top_k else set(order)
            mass = [math.exp(z[v]) for v in order if v in keep]
            kept_order = [v for v in order if v in keep]
            total, cum, nucleus = sum(mass), 0.0, set()
            for v, m in zip(kept_order, mass, strict=True):
                if top_p < 1.0 and cum >= top_p * total:
                    break
                nucleus.add(v)
                cum += m
            assert {v for v in range(15) if warped[row, v] > -math.inf} == nucleus


def test_sampler_draws_from_the_warped_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    warped = probs.log().expand(40_000, 5)
    tokens, p = sample_tokens(warped, 1.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(p[0], probs)
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    sigma = (probs * (1 - probs) / len(tokens)).sqrt()
    assert torch.all((freq - probs).abs() <= 4 * sigma + 1e-9)
    greedy, _ = sample_tokens(warped, 0.0, torch.Generator())
    assert torch.all(greedy == 0)


# ------------------------------------------------------------------------ plain sampling


def _naive_sample(model, prompts, sampling, seed):
    """Reference: no KV cache, the model's own input_ids path, the full sequence every step."""
    rows = [p for p in prompts for _ in range(sampling.n)]
    ids, mask = left_pad(rows, PAD)
    gen = torch.Generator().manual_seed(seed)
    finished = torch.zeros(len(rows), dtype=torch.bool)
    out, logps = [], []
    for _ in range(sampling.max_new_tokens):
        full_mask = torch.cat([mask, torch.ones(len(rows), len(out), dtype=torch.long)], 1)
        seq = torch.cat([ids] + [y[:, None] for y in out], 1)
        with torch.no_grad():
            positions = position_ids_from_mask(full_mask)
            logits = model(input_ids=seq, attention_mask=full_mask, position_ids=positions).logits
        logits = logits[:, -1]
        warped = warp_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p)
        y, _ = sample_tokens(warped, sampling.temperature, gen)
        y = y.masked_fill(finished, PAD)
        scale = sampling.temperature or 1.0
        logps.append(torch.log_softmax(logits / scale, -1).gather(-1, y[:, None])[:, 0])
        out.append(y)
        finished |= torch.isin(y, torch.tensor(EOS))
        if finished.all():
            break
    return torch.stack(out, 1), torch.stack(logps, 1)


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(n=2, max_new_tokens=20),
        SamplingParams(n=3, temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=20),
        SamplingParams(n=1, temperature=0.0, max_new_tokens=12),
    ],
)
@pytest.mark.numerics
def test_engine_equals_naive_loop_without_kv_cache(model, sampling):
    batch = _run(model, sampling, training=False, seed=3)
    tokens, logps = _naive_sample(model, PROMPTS, sampling, seed=3)
    assert torch.equal(batch.response_ids, tokens)
    mask = batch.response_mask.bool()
    torch.testing.assert_close(batch.logprobs[mask], logps[mask], atol=1e-5, rtol=0)
    if sampling.temperature > 0:
        assert batch.response_mask.sum(-1).min() < batch.response_ids.shape[1]  # stopped early
    for row in batch.responses():
        assert all(t not in EOS for t in row[:-1])


def test_strategy_none_and_mix_rate_zero_equal_plain_sampling(model):
    plain = _run(model, exploration=None, training=False, seed=5)
    variants = [
        _run(model, exploration=_explore("none"), seed=5),
        _run(model, exploration=_explore("neighbor", mix_rate=0.0), seed=5),
        _run(model, exploration=_explore("gaussian", mix_rate=0.0), seed=5),
        _run(model, exploration=_explore("neighbor", mix_rate=1.0), training=False, seed=5),
    ]
    for batch in variants:
        assert torch.equal(batch.response_ids, plain.response_ids)
        assert torch.equal(batch.logprobs, plain.logprobs)
        assert not batch.mixed.any()
        assert batch.stats["rollout/mixed_frac"] == 0.0


def test_seeded_reproducible_and_prompt_major(model):
    a = _run(model, seed=7, exploration=_explore("neighbor"))
    b = _run(model, seed=7, exploration=_explore("neighbor"))
    c = _run(model, seed=8, exploration=_explore("neighbor"))
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.mixed, b.mixed)
    assert not torch.equal(a.response_ids, c.response_ids)
    assert a.prompt_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for row, prompt in enumerate(a.prompt_index.tolist()):
        real = a.prompt_ids[row][a.prompt_mask[row].bool()].tolist()
        assert real == PROMPTS[prompt]
        assert a.prompt_mask[row, : a.prompt_ids.shape[1] - len(real)].sum() == 0  # left padding


# ------------------------------------------------------------------------ replay invariant


@pytest.mark.numerics
@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "none"])
@pytest.mark.parametrize("mix_rate", [0.5, 1.0])
def test_replay_reproduces_rollout_logprobs(model, strategy, mix_rate):
    batch = _run(model, exploration=_explore(strategy, mix_rate=mix_rate), seed=11, marker=[99, 98])
    lengths = batch.response_mask.sum(-1)
    assert lengths.min() < batch.response_ids.shape[1]  # sequences stopping early at EOS
    assert batch.prompt_mask.sum(-1).unique().numel() > 1  # left padding of different lengths
    assert batch.mixed.sum() > 10
    with torch.no_grad():
        replayed = replay_logprobs(model, batch, temperature=1.0)
    mask = batch.response_mask.bool()
    assert (replayed - batch.logprobs)[mask].abs().max() < 1e-4
    assert torch.all(replayed[~mask] == 0)
    # sensitivity: replaying the plain tokens instead of the recorded mixtures does not match
    seq = torch.cat([batch.prompt_ids, batch.response_ids], 1)
    batch.soft_inputs = SoftInputs.from_token_ids(seq)
    with torch.no_grad():
        plain = replay_logprobs(model, batch, temperature=1.0)
    assert (plain - batch.logprobs)[mask].abs().max() > 1e-3


@pytest.mark.numerics
def test_replay_with_temperature_top_k_and_chunks(model):
    sampling = SamplingParams(n=3, temperature=0.8, top_k=10, top_p=0.9, max_new_tokens=20)
    batch = _run(model, sampling, exploration=_explore("neighbor", k=4), seed=2, batch_size=5)
    assert batch.response_ids.shape[0] == 12
    with torch.no_grad():
        replayed = replay_logprobs(model, batch, temperature=0.8)
        subset = batch.select([7, 2, 3])  # a learner mini-batch
        replayed_subset = replay_logprobs(model, subset, temperature=0.8)
    mask = batch.response_mask.bool()
    assert (replayed - batch.logprobs)[mask].abs().max() < 1e-4
    torch.testing.assert_close(replayed_subset, replayed[[7, 2, 3]], atol=1e-5, rtol=0)
    assert torch.equal(subset.mixed, batch.mixed[[7, 2, 3]])


def test_replay_backward_reaches_mixed_candidate_rows():
    model = _tiny("qwen2")
    batch = _run(model, exploration=_explore("neighbor", mix_rate=1.0, k=2), seed=1)
    model.train()
    loss = -(replay_logprobs(model, batch, 1.0)).sum()
    loss.backward()
    grad = model.get_input_embeddings().weight.grad
    mixed_ids = batch.soft_inputs.ids[:, batch.prompt_ids.shape[1] :][batch.mixed]  # (M, K)
    assert grad[mixed_ids[:, 1].unique()].abs().sum(-1).min() > 0  # neighbours get gradient


# ------------------------------------------------------------------------ records and gating


@pytest.mark.numerics
def test_records_are_valid_and_neighbors_are_correct(model):
    batch = _run(model, exploration=_explore("neighbor", mix_rate=0.5, k=3), seed=4)
    p = batch.prompt_ids.shape[1]
    soft = batch.soft_inputs
    assert soft.shape == (8, p + batch.response_ids.shape[1], 3)
    assert torch.all(soft.weights >= 0)
    torch.testing.assert_close(soft.weights.sum(-1), torch.ones(soft.shape[:2]))
    resp_ids, resp_w = soft.ids[:, p:], soft.weights[:, p:]  # (N, T, K)
    plain = ~batch.mixed
    assert torch.equal(resp_ids[..., 0][plain], batch.response_ids[plain])  # ([y], [1.0])
    assert torch.all(resp_w[..., 0][plain] == 1.0)
    assert torch.equal(soft.ids[:, :p, 0], batch.prompt_ids)
    # mixed: anchor = argmax p_t (recomputed by replay), neighbours = brute force
    with torch.no_grad():
        logits = replay_logits(model, batch)  # (N, T, V)
    anchors = resp_ids[..., 0][batch.mixed]
    assert torch.equal(anchors, logits.argmax(-1)[batch.mixed])
    table = model.get_input_embeddings().weight
    assert torch.equal(resp_ids[batch.mixed][:, 1:], bruteforce_neighbors(table, anchors, 2)[0])
    probs = logits.softmax(-1)[batch.mixed]  # (M, V)
    expect = probs.gather(-1, resp_ids[batch.mixed])
    torch.testing.assert_close(resp_w[batch.mixed], expect / expect.sum(-1, keepdim=True))
    assert batch.stats["rollout/embed_shift"] > 0


def test_no_mixing_after_the_answer_marker_and_none_in_eval():
    model = _tiny("qwen2", vocab=6, seed=1)  # tiny vocabulary: the 2-token marker occurs often
    marker = [4, 5]
    prompts = [[1, 2, 3]] * 24
    sampling = SamplingParams(n=1, max_new_tokens=40)
    batch = _run(model, sampling, _explore("topk", mix_rate=1.0, k=2), prompts=prompts, eos=[],
                 marker=marker, seed=0)  # fmt: skip
    hits = 0
    for row in range(24):
        tokens = batch.response_ids[row].tolist()
        first = next(
            (t for t in range(1, len(tokens)) if tokens[t - 1 : t + 1] == marker), len(tokens)
        )
        hits += first < len(tokens)
        assert batch.mixed[row, :first].all()  # mix_rate 1: every position before the marker
        assert not batch.mixed[row, first:].any()  # none from the step that completes it
    assert 3 <= hits < 24
    assert batch.stats["rollout/mixed_frac"] == 1.0

    evaluation = _run(model, sampling, _explore("topk", mix_rate=1.0, k=2), training=False,
                      prompts=prompts, eos=[], marker=marker)  # fmt: skip
    assert not evaluation.mixed.any()
    assert evaluation.soft_inputs.shape[2] == 1 and evaluation.soft_inputs.noise is None


def test_observed_mixed_fraction_matches_mix_rate(model):
    rate = 0.3
    sampling = SamplingParams(n=8, max_new_tokens=48)
    batch = _run(model, sampling, _explore("neighbor", mix_rate=rate), eos=[], marker=[99, 98])
    eligible = int(batch.eligible.sum())
    assert eligible > 1000
    frac = batch.stats["rollout/mixed_frac"]
    assert frac == pytest.approx(float(batch.mixed.sum()) / eligible)
    assert abs(frac - rate) <= 4 * math.sqrt(rate * (1 - rate) / eligible)  # binomial, 4 sigma
    assert not (batch.mixed & ~batch.eligible).any()


def test_entropy_gate_combines_with_mix_rate(model):
    always = _run(model, exploration=_explore("topk", mix_rate=1.0, entropy_threshold=0.0))
    assert torch.equal(always.mixed, always.eligible) and always.mixed.any()
    never = _run(model, exploration=_explore("topk", mix_rate=1.0, entropy_threshold=1e9))
    assert not never.mixed.any()
    zero_rate = _explore("topk", mix_rate=0.0, entropy_threshold=0.0)
    assert not _run(model, exploration=zero_rate).mixed.any()


# ------------------------------------------------------------------------ errors


def test_bad_input_errors(model):
    class NoEmbeddings(torch.nn.Module):
        def forward(self, **_):
            raise AssertionError("never called")

    with pytest.raises(NgrpoError, match="no input embeddings"):
        _run(NoEmbeddings())
    with pytest.raises(NgrpoError, match="answer_start_ids"):
        _run(model, exploration=_explore("neighbor"), marker=None)
    with pytest.raises(NgrpoError, match="answer_start_ids"):
        _run(model, exploration=_explore("neighbor"), marker=[])
    with pytest.raises(NgrpoError, match=r"mix_top_k must be an integer in \[1, 100\]"):
        _run(model, exploration=_explore("neighbor", k=101))
    with pytest.raises(NgrpoError, match="unknown strategy 'nope'; choose one of none, neighbor"):
        _run(model, exploration=_explore("nope"))
    with pytest.raises(NgrpoError, match="top_p"):
        _run(model, SamplingParams(top_p=0.0))
    with pytest.raises(NgrpoError, match="empty prompt"):
        _run(model, prompts=[[5], []])


# ------------------------------------------------------------------------ CLI


def test_bench_rollout_cli_writes_the_json(tmp_path):
    from ngrpo.cli import main
    from ngrpo.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    model = _tiny("qwen2", vocab=len(tokenizer))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "bench.json"
    argv = ["bench", "rollout", "--model", str(tmp_path / "model"), "--batch", "2",
            "--new-tokens", "3", "--repeats", "1", "--lookup-vocab", "300", "--lookup-dim", "8",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report["tokens_per_s"]) == {
        "none", "neighbor", "gaussian", "hf_generate", "hf_generate_static"
    }  # fmt: skip
    assert report["ratios"]["none_over_hf_generate_static"] == pytest.approx(
        report["tokens_per_s"]["none"] / report["tokens_per_s"]["hf_generate_static"]
    )
    assert all(v > 0 for v in report["tokens_per_s"].values())
    lookup = report["neighbor_lookup"]
    assert (lookup["vocab"], lookup["dim"]) == (300, 8)
    assert lookup["cached_us_per_token"] > 0 and lookup["bruteforce_us_per_token"] > 0
    assert report["batch"] == 2 and report["new_tokens"] == 3
    assert report["device"] == "cpu" and report["torch"] == torch.__version__


def test_bench_learner_slot_and_bad_arguments(capsys):
    from ngrpo.cli import main

    assert main(["bench", "learner", "--batch", "0"]) == 2
    assert "--batch must be >= 1" in capsys.readouterr().err
    assert main(["bench", "rollout", "--batch", "0"]) == 2
    assert "--batch must be >= 1" in capsys.readouterr().err
