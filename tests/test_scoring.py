"""Chunked scoring (`ngrpo.learner.scoring`) against the full-logits path it replaces: log-probs,
entropy and their gradients on a tiny random Qwen2 with recorded soft inputs (fp32), the fallback to
full logits for models whose logits are not the head's output, and padding trimming."""

from __future__ import annotations

import logging

import pytest
import torch
from factories import tiny_lm
from transformers import Qwen2ForCausalLM

from ngrpo.learner.scoring import chunked_scores, score_tokens
from ngrpo.learner.update import trim_padding
from ngrpo.method.exploration import ExplorationConfig
from ngrpo.rollout import SamplingParams, generate

PROMPTS = [[10, 11, 12, 13], [20, 21], [30, 31, 32], [40, 41, 42, 43, 44]]
VOCAB = 100


def _tiny(tied: bool = False, cls=Qwen2ForCausalLM, seed: int = 0):
    return tiny_lm(VOCAB, seed=seed, max_positions=128, tie=tied, model_class=cls).train()


def _rollouts(model, strategy: str, temperature: float = 0.8):
    exploration = ExplorationConfig(strategy=strategy, mix_top_k=3, mix_rate=0.5)
    return generate(
        model, PROMPTS, SamplingParams(n=2, temperature=temperature, max_new_tokens=12),
        eos_token_id=[1], pad_token_id=0, exploration=exploration, answer_start_ids=[4],
        training=True, seed=0,
    )  # fmt: skip


def _grads(model, batch, temperature, chunk_elements) -> tuple[torch.Tensor, ...]:
    """Scores and the gradient of a loss using both log-probs and entropy, all parameters."""
    model.zero_grad(set_to_none=True)
    logp, entropy = score_tokens(model, batch, temperature, chunk_elements=chunk_elements,
                                 full_logits=chunk_elements is None)  # fmt: skip
    weights = torch.linspace(-1, 1, logp.numel()).view_as(logp)  # (N, T) mixed signs
    mask = batch.response_mask.float()  # (N, T)
    (((weights * logp + 0.3 * entropy) * mask).sum() / mask.sum()).backward()  # token-mean
    grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    return logp.detach(), entropy.detach(), grad


@pytest.mark.parametrize("strategy", ["none", "neighbor", "gaussian"])
@pytest.mark.parametrize("tied", [False, True])
def test_chunked_scores_and_gradients_equal_the_full_logits_path(strategy, tied):
    model = _tiny(tied)
    batch = _rollouts(model, strategy)
    mask = batch.response_mask.bool()
    logp, entropy, grad = _grads(model, batch, 0.8, chunk_elements=None)
    assert (logp - batch.logprobs)[mask].abs().max() <= 1e-4  # the replay invariant
    # 1 position per chunk, an uneven split (7 positions), and everything in one chunk.
    for chunk in (1, 7 * VOCAB, 10**9):
        logp_c, entropy_c, grad_c = _grads(model, batch, 0.8, chunk_elements=chunk)
        torch.testing.assert_close(logp_c[mask], logp[mask], rtol=0, atol=1e-5)
        torch.testing.assert_close(entropy_c[mask], entropy[mask], rtol=0, atol=1e-5)
        torch.testing.assert_close(grad_c, grad, rtol=0, atol=1e-5)
        assert (grad_c - grad).abs().max() <= 2e-6 * grad.abs().max()  # relative to its scale
        assert (logp_c[~mask] == 0).all() and (entropy_c[~mask] == 0).all()
    assert entropy[mask].min() > 0 and grad.abs().max() > 1e-2  # not a vacuous comparison


def test_entropy_matches_a_naive_softmax_reference():
    model = _tiny()
    batch = _rollouts(model, "none", temperature=0.7)
    with torch.no_grad():
        _, entropy = score_tokens(model, batch, 0.7)
        logits = model(
            input_ids=torch.cat([batch.prompt_ids, batch.response_ids], 1),
            attention_mask=batch.attention_mask,
            position_ids=(batch.attention_mask.cumsum(-1) - 1).clamp_min(0),
        ).logits  # (N, P + T, V)
    p = batch.prompt_ids.shape[1]
    probs = torch.softmax(logits[:, p - 1 : -1] / 0.7, dim=-1)  # (N, T, V)
    naive = -(probs * probs.log()).sum(-1)  # (N, T)
    mask = batch.response_mask.bool()
    torch.testing.assert_close(entropy[mask], naive[mask], rtol=0, atol=1e-5)


class _ScaledLogits(Qwen2ForCausalLM):
    """A model that transforms its head's output (as logit soft-capping or a logit scale do)."""

    def forward(self, **kwargs):
        out = super().forward(**kwargs)
        out.logits = out.logits * 2.0
        return out


def test_models_transforming_the_head_output_fall_back_to_full_logits(caplog):
    model = _tiny(cls=_ScaledLogits)
    batch = _rollouts(_tiny(), "none")
    with caplog.at_level(logging.WARNING, logger="ngrpo.learner.scoring"):
        logp, entropy, grad = _grads(model, batch, 0.8, chunk_elements=64)
    assert "scoring with full logits" in caplog.text
    full_logp, full_entropy, full_grad = _grads(model, batch, 0.8, chunk_elements=None)
    mask = batch.response_mask.bool()
    torch.testing.assert_close(logp[mask], full_logp[mask], rtol=0, atol=1e-6)
    torch.testing.assert_close(entropy[mask], full_entropy[mask], rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, full_grad, rtol=0, atol=1e-6)
    with torch.no_grad():  # and it really is the doubled model being scored
        plain = score_tokens(_tiny(), batch, 0.8)[0]
    assert (logp - plain)[mask].abs().max() > 1e-3


def test_trimming_padding_changes_no_score():
    model = _tiny()
    batch = _rollouts(model, "gaussian")
    rows = torch.tensor([1, 2])  # short prompts (2 and 4 tokens of 5): left padding to cut
    sub = batch.select(rows)
    trimmed, width = trim_padding(sub)
    longest_prompt = int(sub.prompt_mask.sum(-1).max())
    assert trimmed.prompt_ids.shape[1] == longest_prompt < sub.prompt_ids.shape[1]
    assert width == int(sub.response_mask.sum(-1).max())
    assert trimmed.soft_inputs.ids.shape[1] == trimmed.prompt_ids.shape[1] + width
    with torch.no_grad():
        full = score_tokens(model, sub, 0.8)[0][:, :width]  # (n, T')
        cut = score_tokens(model, trimmed, 0.8)[0]  # (n, T')
    torch.testing.assert_close(cut, full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("uses", ["logp", "entropy", "both"])
@pytest.mark.parametrize("rows_per_chunk", [1, 3, 100])
def test_chunked_head_gradients_match_autograd_with_a_bias(uses, rows_per_chunk):
    """The hand-written backward against autograd through a naive full softmax, for a head with a
    bias, a loss using log-probs, entropy or both (the unused output gets no gradient)."""
    gen = torch.Generator().manual_seed(0)
    m, d, v, tau = 10, 6, 50, 0.7
    head = torch.nn.Linear(d, v, bias=True)
    with torch.no_grad():
        head.weight.copy_(torch.randn(v, d, generator=gen))
        head.bias.copy_(torch.randn(v, generator=gen))
    hidden = torch.randn(m, d, generator=gen, requires_grad=True)  # (M, d)
    labels = torch.randint(0, v, (m,), generator=gen)  # (M,)
    a, b = torch.randn(m, generator=gen), torch.randn(m, generator=gen)  # (M,) loss weights

    def loss(logp, entropy):
        return {"logp": (a * logp).sum(), "entropy": (b * entropy).sum(),
                "both": (a * logp + b * entropy).sum()}[uses]  # fmt: skip

    def grads(value):
        head.zero_grad(set_to_none=True)
        hidden.grad = None
        value.backward()
        return hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()

    log_softmax = torch.log_softmax(head(hidden) / tau, dim=-1)  # (M, V) naive reference
    naive_logp = log_softmax.gather(-1, labels[:, None]).squeeze(-1)
    naive_entropy = -(log_softmax.exp() * log_softmax).sum(-1)
    expected = grads(loss(naive_logp, naive_entropy))
    logp, entropy = chunked_scores(hidden, head, labels, tau, chunk_elements=rows_per_chunk * v)
    torch.testing.assert_close(logp, naive_logp, rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy, naive_entropy, rtol=0, atol=1e-5)
    for got, want in zip(grads(loss(logp, entropy)), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        assert want.abs().max() > 1e-2


def test_bf16_head_gradient_is_accumulated_in_fp32():
    """256 one-row chunks in bf16: the weight gradient stays within 0.8 % of the exact one (fp32
    on the same bf16-rounded inputs); a bf16 running sum over the chunks drifts to ~1.6 %."""
    gen = torch.Generator().manual_seed(1)
    m, d, v = 256, 16, 40
    weight = torch.randn(v, d, generator=gen).to(torch.bfloat16)  # (V, d)
    hidden = torch.randn(m, d, generator=gen).to(torch.bfloat16)  # (M, d)
    labels = torch.randint(0, v, (m,), generator=gen)  # (M,)
    head = torch.nn.Linear(d, v, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        head.weight.copy_(weight)
    logp, _ = chunked_scores(hidden, head, labels, 1.0, chunk_elements=v)  # one row per chunk
    logp.sum().backward()
    exact_weight = weight.float().requires_grad_()
    logits = hidden.float() @ exact_weight.T  # (M, V)
    torch.log_softmax(logits, -1).gather(-1, labels[:, None]).sum().backward()
    exact = exact_weight.grad
    assert head.weight.grad.dtype == torch.bfloat16
    assert (head.weight.grad.float() - exact).abs().max() <= 0.008 * exact.abs().max()
