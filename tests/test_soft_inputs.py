"""Soft-input records and `embed`, against naive loops."""

import pytest
import torch

from ngrpo.method.soft_inputs import SoftInputs, embed


def _records(b=3, t=4, k=3, v=11, d=5, noise=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, v, (b, t, k), generator=gen)
    weights = torch.rand(b, t, k, generator=gen)
    weights = weights / weights.sum(-1, keepdim=True)
    n = torch.randn(b, t, d, generator=gen) if noise else None
    return SoftInputs(ids, weights, n)


def test_plain_record_is_y_with_weight_one():
    ids = torch.tensor([[4, 7, 1]])
    soft = SoftInputs.from_token_ids(ids, k=3)
    assert soft.shape == (1, 3, 3)
    assert torch.equal(soft.ids[..., 0], ids)
    assert torch.equal(soft.weights[..., 0], torch.ones(1, 3))
    assert torch.equal(soft.weights[..., 1:], torch.zeros(1, 3, 2))
    assert soft.noise is None


def test_embed_of_plain_records_is_exactly_the_embedding_lookup():
    emb = torch.nn.Embedding(13, 6)
    ids = torch.randint(0, 13, (2, 5))
    for k in (1, 4):
        assert torch.equal(embed(emb, SoftInputs.from_token_ids(ids, k)), emb(ids))


@pytest.mark.numerics
def test_embed_matches_naive_loop():
    table = torch.randn(11, 5)
    soft = _records()
    out = embed(table, soft)
    b, t, k = soft.shape
    for i in range(b):
        for j in range(t):
            expect = soft.noise[i, j].clone()
            for c in range(k):
                expect += soft.weights[i, j, c] * table[soft.ids[i, j, c]]
            torch.testing.assert_close(out[i, j], expect)


@pytest.mark.numerics
def test_embed_module_and_tensor_agree_and_module_output_is_used():
    emb = torch.nn.Embedding(11, 5)
    soft = _records()
    torch.testing.assert_close(embed(emb, soft), embed(emb.weight, soft))

    class Scaled(torch.nn.Embedding):  # e.g. Gemma multiplies embeddings by sqrt(d)
        def forward(self, ids):
            return super().forward(ids) * 3.0

    scaled = Scaled(11, 5)
    scaled.weight.data.copy_(emb.weight.data)
    no_noise = SoftInputs(soft.ids, soft.weights)
    torch.testing.assert_close(embed(scaled, no_noise), 3.0 * embed(emb, no_noise))


@pytest.mark.numerics
def test_gradient_flows_into_every_candidate_row_by_weight_only():
    table = torch.randn(11, 5, requires_grad=True)
    ids = torch.tensor([[[2, 7, 9]]])
    weights = torch.tensor([[[0.5, 0.3, 0.2]]], requires_grad=True)
    soft = SoftInputs(ids, weights, torch.randn(1, 1, 5))
    embed(table, soft).sum().backward()
    for row, w in zip((2, 7, 9), (0.5, 0.3, 0.2), strict=True):
        torch.testing.assert_close(table.grad[row], torch.full((5,), w))
    untouched = [r for r in range(11) if r not in (2, 7, 9)]
    assert torch.all(table.grad[untouched] == 0)
    assert weights.grad is None  # weights are constants


@pytest.mark.numerics
def test_cat_pads_k_and_noise_and_select_rows():
    prompt = SoftInputs.from_token_ids(torch.tensor([[1, 2], [3, 4]]))  # K = 1, no noise
    response = _records(b=2, t=3, k=3, d=5)
    full = SoftInputs.cat([prompt, response], dim=1)
    assert full.shape == (2, 5, 3)
    assert torch.equal(full.ids[:, :2, 0], prompt.ids[..., 0])
    assert torch.equal(full.weights[:, :2, 1:], torch.zeros(2, 2, 2))
    assert torch.equal(full.noise[:, :2], torch.zeros(2, 2, 5))
    table = torch.randn(11, 5)
    torch.testing.assert_close(embed(table, full)[:, 2:], embed(table, response))
    torch.testing.assert_close(embed(table, full)[:, :2], table[prompt.ids[..., 0]])

    row = full.select([1])
    assert row.shape == (1, 5, 3)
    torch.testing.assert_close(embed(table, row), embed(table, full)[1:])
    assert full[0:1].to("cpu").shape == (1, 5, 3)
    both = SoftInputs.cat([full[0:1], full[1:2]], dim=0)
    assert torch.equal(both.ids, full.ids) and torch.equal(both.noise, full.noise)


@pytest.fixture
def cuda_autocast_sum():
    """CUDA's autocast policy for `sum` (an fp32 kernel: `aten/src/ATen/autocast_mode.cpp`'s fp32
    list) registered for CPU autocast, which leaves `sum` in the input dtype: the GPU branch of
    the mixture, on CPU."""

    def sum_in_fp32(self, dim, keepdim=False, *, dtype=None):
        no_autocast = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)
        with torch._C._ExcludeDispatchKeyGuard(no_autocast):
            return torch.ops.aten.sum.dim_IntList(self.float(), dim, keepdim, dtype=dtype)

    lib = torch.library.Library("aten", "IMPL")
    lib.impl("sum.dim_IntList", sum_in_fp32, "AutocastCPU")
    yield
    lib._destroy()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_mixture_stays_in_the_embedding_dtype_under_a_gpu_autocast(cuda_autocast_sum, dtype):
    # a LoRA run's frozen base embeds in bf16: rollout (static decoder, `precision: learner`), KL
    # reference (no autocast) and learner (autocast) must all start the residual stream from the
    # same bf16 mixture; same operations with and without autocast: asserted bitwise
    table = torch.randn(11, 5).to(dtype)
    soft = _records()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.ones(2, 3, dtype=torch.bfloat16).sum(dim=-1).dtype == torch.float32  # forced
        mixed = embed(table, soft)
    assert mixed.dtype == dtype
    assert torch.equal(mixed, embed(table, soft))
