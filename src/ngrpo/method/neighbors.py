"""Nearest neighbours of tokens in a model's embedding table (the input embedding, or the output
projection with `exploration.neighbor_table: output`; see `ngrpo.rollout.neighbor_search_table`).

Similarity metrics (larger is closer), as in DESIGN section 2:
- `cosine`: cosine similarity (default);
- `dot`: inner product;
- `l1`: negative L1 distance;
- `l2`: negative squared L2 distance.

Tie policy: among equal scores the lower token id comes first (a stable descending sort), so the
brute-force oracle and any faster index agree exactly. Scores are fp32 whatever autocast is active.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ngrpo.utils.errors import NgrpoError


def _cosine(table: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    table_n = torch.nn.functional.normalize(table, dim=-1)  # (V, d)
    anchors_n = torch.nn.functional.normalize(anchors, dim=-1)  # (A, d)
    return anchors_n @ table_n.T  # (A, V)


def _dot(table: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    return anchors @ table.T  # (A, V)


def _neg_l1(table: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    return -torch.cdist(anchors, table, p=1)  # (A, V)


def _neg_sq_l2(table: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    # Explicit differences, not the |a|^2 + |b|^2 - 2ab expansion: exact ties stay ties.
    return -((anchors[:, None, :] - table[None, :, :]) ** 2).sum(-1)  # (A, V)


SIMILARITIES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cosine": _cosine,
    "dot": _dot,
    "l1": _neg_l1,
    "l2": _neg_sq_l2,
}


def check_metric(metric: str) -> None:
    if metric not in SIMILARITIES:
        raise NgrpoError(f"unknown metric {metric!r}; choose one of {', '.join(SIMILARITIES)}")


def similarity(
    table: torch.Tensor, anchor_ids: torch.Tensor, metric: str = "cosine"
) -> torch.Tensor:
    """Similarity of each anchor row to every row of `table`: (A,) ids -> (A, V) scores, in fp32.

    Autocast is switched off inside: the engine searches within the accelerator's autocast (on by
    default on CUDA), which would run the matmul in bf16 and reorder close neighbours.
    """
    check_metric(metric)
    table = table.detach().float()
    with torch.autocast(table.device.type, enabled=False):
        return SIMILARITIES[metric](table, table[anchor_ids])


def bruteforce_neighbors(
    table: torch.Tensor, anchor_ids: torch.Tensor, k: int, metric: str = "cosine"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` nearest tokens to each anchor, the anchor itself excluded.

    Returns ids (A, k) and scores (A, k), closest first; ties broken by lower id. The oracle for
    faster indexes: it recomputes a full (A, V) similarity on every call.
    """
    vocab = table.shape[0]
    if not 0 <= k < vocab:
        raise NgrpoError(f"k must be in [0, {vocab - 1}] for a vocabulary of {vocab}, got {k}")
    anchor_ids = torch.as_tensor(anchor_ids, dtype=torch.long).reshape(-1)
    scores = similarity(table, anchor_ids, metric)  # (A, V)
    scores[torch.arange(len(anchor_ids)), anchor_ids] = float("-inf")  # never its own neighbour
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]  # (A, k)
    return order, scores.gather(-1, order)


class NeighborIndex:
    """Exact nearest neighbours of anchor tokens, computed lazily per anchor id and cached.

    The first lookup of an anchor runs the brute-force oracle on it (so the index equals the oracle,
    ties included); later lookups are a gather from a (V, k) table kept on the embedding's device.
    It searches whatever table it is given (the input embedding or the output projection); the
    cache must be dropped when that table's weights change: whoever changes them calls
    `invalidate()` (the trainer does after every update, because it knows when it stepped). The
    index also drops it by itself when the weight tensor's identity, storage pointer or in-place
    version counter (`Tensor._version`) moved since the cache was filled, a convenience for
    callers outside the trainer, not a guarantee: fused AdamW (the trainer's optimizer on CUDA)
    writes the parameters without bumping the version counter. The authors' code instead
    recomputes a full V×d similarity for every decoded token; the cache makes lookup cost
    independent of V after warm-up.
    """

    def __init__(
        self, embedding: torch.nn.Module | torch.Tensor, k: int, metric: str = "cosine"
    ) -> None:
        check_metric(metric)
        self.embedding, self.k, self.metric = embedding, k, metric
        vocab = self._table().shape[0]
        if not 0 <= k < vocab:
            raise NgrpoError(f"k must be in [0, {vocab - 1}] for a vocabulary of {vocab}, got {k}")
        self.fills = 0  # anchors computed by brute force since construction (a cache-miss count)
        self.invalidate()

    def table(self) -> torch.Tensor:
        """The (V, d) weight searched (whichever table the index was built on)."""
        table = self.embedding
        return table if isinstance(table, torch.Tensor) else table.weight

    _table = table

    def _fingerprint(self) -> tuple[int, int, int]:
        table = self._table()
        return id(table), table.data_ptr(), table._version

    def invalidate(self) -> None:
        """Forget every cached neighbour list (call after changing the embedding weights)."""
        table = self._table()
        self._neighbors = torch.zeros(table.shape[0], self.k, dtype=torch.long, device=table.device)
        self._filled = torch.zeros(table.shape[0], dtype=torch.bool, device=table.device)
        self._seen = self._fingerprint()

    def missing(self, anchor_ids: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Which anchors (bool, same shape) have no cached neighbours yet, within `rows`; no host
        sync (the engine reads its count together with its own per-step read)."""
        if self._fingerprint() != self._seen:
            self.invalidate()
        anchor_ids = anchor_ids.to(self._filled.device)
        need = ~self._filled[anchor_ids]  # (...)
        if rows is not None:
            need &= rows.to(need.device)
        return need

    def fill(self, anchor_ids: torch.Tensor, need: torch.Tensor) -> None:
        """Compute and cache the neighbours of the anchors marked in `need` (brute force)."""
        missing = torch.unique(anchor_ids.to(need.device)[need])  # (M,)
        if missing.numel() == 0:
            return
        with torch.no_grad():
            ids, _ = bruteforce_neighbors(self._table(), missing, self.k, self.metric)
        self._neighbors[missing] = ids.to(self._neighbors.device)
        self._filled[missing] = True
        self.fills += missing.numel()

    def lookup(
        self, anchor_ids: torch.Tensor, rows: torch.Tensor | None = None, filled: bool = False
    ) -> torch.Tensor:
        """Neighbour ids (..., k) of anchor ids (...), closest first, the anchor excluded.

        `rows` (bool, same shape as `anchor_ids`) restricts which anchors need correct answers;
        entries outside it are filled with whatever the cache holds (callers mask them out).
        `filled=True`: the caller has just `fill`ed what `missing` reported, so the check (one
        host sync) is skipped.
        """
        anchor_ids = anchor_ids.to(self._filled.device)
        if not filled:
            need = self.missing(anchor_ids, rows)
            if bool(need.any()):  # the one host sync per call
                self.fill(anchor_ids, need)
        return self._neighbors[anchor_ids]  # (..., k)
