"""Brute-force neighbours against a naive loop; the cached index against brute force."""

import pytest
import torch

from ngrpo.method.neighbors import SIMILARITIES, NeighborIndex, bruteforce_neighbors
from ngrpo.utils.errors import NgrpoError

METRICS = tuple(SIMILARITIES)


def _naive_score(a: torch.Tensor, b: torch.Tensor, metric: str) -> float:
    a, b = a.double(), b.double()
    if metric == "cosine":
        return float(a @ b / (a.norm() * b.norm()))
    if metric == "dot":
        return float(a @ b)
    if metric == "l1":
        return -float((a - b).abs().sum())
    return -float(((a - b) ** 2).sum())


def _table_with_ties(vocab=40, dim=6, seed=0) -> torch.Tensor:
    """Small integer entries (exact arithmetic) and duplicated rows (exact ties)."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randint(-3, 4, (vocab, dim), generator=gen).float()
    table[table.abs().sum(-1) == 0] = 1.0  # no zero rows (cosine undefined)
    table[7] = table[3]
    table[12] = table[3]
    table[20] = 2 * table[5]  # a cosine tie, not a dot/l1/l2 tie
    return table


@pytest.mark.parametrize("metric", METRICS)
def test_bruteforce_matches_naive_loop_with_lower_id_tie_policy(metric):
    table = _table_with_ties()
    anchors = torch.tensor([3, 5, 0, 39])
    ids, _ = bruteforce_neighbors(table, anchors, 6, metric)
    for row, a in enumerate(anchors.tolist()):
        scored = [
            (-_naive_score(table[a], table[v], metric), v) for v in range(len(table)) if v != a
        ]
        expect = [v for _, v in sorted(scored)[:6]]  # best score first, then lower id
        assert ids[row].tolist() == expect


@pytest.mark.parametrize("metric", METRICS)
def test_index_equals_bruteforce_for_every_metric(metric):
    for table in (
        _table_with_ties(),
        torch.randn(50, 8, generator=torch.Generator().manual_seed(1)),
    ):
        index = NeighborIndex(table, 5, metric)
        gen = torch.Generator().manual_seed(2)
        for _ in range(4):  # lookups in different orders, with repeats, partly cached
            anchors = torch.randint(0, len(table), (9,), generator=gen)
            expect, _ = bruteforce_neighbors(table, anchors, 5, metric)
            assert torch.equal(index.lookup(anchors), expect)
        everything = torch.arange(len(table))
        assert torch.equal(
            index.lookup(everything), bruteforce_neighbors(table, everything, 5, metric)[0]
        )


def test_index_is_lazy_and_cached():
    table = torch.randn(30, 4)
    index = NeighborIndex(table, 3)
    index.lookup(torch.tensor([1, 2, 2, 5]))
    assert index.fills == 3
    index.lookup(torch.tensor([[5, 1], [2, 2]]))  # any shape; all cached
    assert index.fills == 3
    out = index.lookup(torch.tensor([1, 9, 4]), rows=torch.tensor([True, False, True]))
    assert index.fills == 4  # 9 was not needed
    assert torch.equal(out[[0, 2]], bruteforce_neighbors(table, torch.tensor([1, 4]), 3)[0])


def test_index_refreshes_after_an_optimizer_step_and_on_invalidate():
    emb = torch.nn.Embedding(25, 4)
    index = NeighborIndex(emb, 2, "l2")
    anchors = torch.arange(25)
    before = index.lookup(anchors)
    fills = index.fills
    optimizer = torch.optim.SGD(emb.parameters(), lr=10.0)
    emb(torch.tensor([0, 3, 4])).pow(3).sum().backward()
    optimizer.step()
    after = index.lookup(anchors)
    assert index.fills == fills + 25  # recomputed
    assert torch.equal(after, bruteforce_neighbors(emb.weight, anchors, 2, "l2")[0])
    assert not torch.equal(before, after)

    with torch.no_grad():
        emb.weight.data = torch.randn(25, 4)  # a new tensor, not an in-place update
    assert torch.equal(index.lookup(anchors), bruteforce_neighbors(emb.weight, anchors, 2, "l2")[0])

    index.invalidate()
    index.lookup(torch.tensor([0]))
    assert index.fills == fills + 51


def test_index_errors():
    with pytest.raises(NgrpoError, match="cosine, dot, l1, l2"):
        NeighborIndex(torch.randn(5, 2), 1, "hamming")
    with pytest.raises(NgrpoError, match=r"k must be in \[0, 4\]"):
        NeighborIndex(torch.randn(5, 2), 5)


@pytest.mark.parametrize("metric", METRICS)
def test_search_under_bf16_autocast_is_the_fp32_search(metric):
    # The engine calls `fill` inside the accelerator's autocast (on by default on CUDA); a bf16
    # matmul there would reorder close neighbours. CPU autocast forces the same branch. Same
    # operations as the fp32 oracle once autocast is off inside the search: asserted bitwise.
    table = torch.randn(600, 48, generator=torch.Generator().manual_seed(3))
    anchors = torch.arange(0, 600, 3)
    expect_ids, expect_scores = bruteforce_neighbors(table, anchors, 3, metric)
    index = NeighborIndex(table, 3, metric)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ids, scores = bruteforce_neighbors(table, anchors, 3, metric)
        looked_up = index.lookup(anchors)
    assert torch.equal(ids, expect_ids) and torch.equal(looked_up, expect_ids)
    assert scores.dtype == torch.float32 and torch.equal(scores, expect_scores)
