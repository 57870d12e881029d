"""Soft inputs: the per-position input record of a rollout, and the one function that embeds it.

A position's input is a small mixture `Σ_k w_k · e(ids_k) + noise` (DESIGN section 2). A plain
token `y` is the record `([y, y, ...], [1.0, 0.0, ...])`: padding slots repeat the first id with
weight 0, so the gather is always in range and the padding contributes exactly zero. `embed` is the
only function in the package that builds mixed input embeddings; the rollout engine calls it at
every decoding step and the learner calls it over whole sequences, which is what makes the
learner's recomputed log-probabilities equal the rollout's.

Deviation from the paper's released code: the authors mix inside the sampler and do not store the
mixture; here every position keeps its record (ids, weights, and for noise strategies the dense
additive noise), so training replays exactly the inputs the policy saw. The noise is stored densely
as (B, T, d) in the embedding dtype for noise strategies only (`gaussian`, `orthogonal`); it is
`None` for all others. That costs B·T·d numbers per rollout batch, which is fine at the sizes this
project trains; an exact seeded-regeneration scheme would trade that memory for a per-position loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class SoftInputs:
    """Per-position input records of a batch, padded to K candidates."""

    ids: torch.LongTensor  # (B, T, K) candidate token ids
    weights: torch.Tensor  # (B, T, K) mixture weights, fp32, non-negative, summing to 1
    noise: torch.Tensor | None = None  # (B, T, d) additive noise, or None (no noise anywhere)

    @classmethod
    def from_token_ids(cls, ids: torch.LongTensor, k: int = 1) -> SoftInputs:
        """Plain-token records for ids (B, T): ([y, y, ...], [1, 0, ...]) padded to k slots."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        cand = ids.unsqueeze(-1).expand(*ids.shape, k).contiguous()  # (B, T, K)
        weights = torch.zeros(cand.shape, dtype=torch.float32, device=ids.device)  # (B, T, K)
        weights[..., 0] = 1.0
        return cls(cand, weights, None)

    @property
    def shape(self) -> tuple[int, int, int]:
        b, t, k = self.ids.shape
        return b, t, k

    def pad_k(self, k: int) -> SoftInputs:
        """The same records with K padded up to `k` slots (first id repeated, weight 0)."""
        _, _, k0 = self.shape
        if k <= k0:
            return self
        extra = k - k0
        ids = torch.cat([self.ids, self.ids[..., :1].expand(-1, -1, extra)], dim=-1)
        weights = torch.cat(
            [self.weights, self.weights.new_zeros(*self.weights.shape[:2], extra)], -1
        )
        return SoftInputs(ids, weights, self.noise)

    def select(self, rows: torch.Tensor | slice | Sequence[int]) -> SoftInputs:
        """A subset of rows (batch dimension)."""
        noise = None if self.noise is None else self.noise[rows]
        return SoftInputs(self.ids[rows], self.weights[rows], noise)

    def __getitem__(self, rows) -> SoftInputs:
        return self.select(rows)

    def to(self, device: torch.device | str) -> SoftInputs:
        noise = None if self.noise is None else self.noise.to(device)
        return SoftInputs(self.ids.to(device), self.weights.to(device), noise)

    @staticmethod
    def cat(parts: Sequence[SoftInputs], dim: int = 1) -> SoftInputs:
        """Concatenate along time (dim=1, e.g. prompt + response) or batch (dim=0).

        K is padded to the largest K; a part without noise gets zero noise when another part has
        some (zero noise adds exactly nothing).
        """
        k = max(p.shape[2] for p in parts)
        parts = [p.pad_k(k) for p in parts]
        ids = torch.cat([p.ids for p in parts], dim=dim)  # (B, T, K)
        weights = torch.cat([p.weights for p in parts], dim=dim)  # (B, T, K)
        with_noise = [p.noise for p in parts if p.noise is not None]
        noise = None
        if with_noise:
            d, like = with_noise[0].shape[-1], with_noise[0]
            noise = torch.cat(
                [
                    p.noise if p.noise is not None else like.new_zeros(*p.shape[:2], d)
                    for p in parts
                ],
                dim=dim,
            )  # (B, T, d)
        return SoftInputs(ids, weights, noise)


def embedding_table(embedding: torch.nn.Module | torch.Tensor) -> torch.Tensor:
    """The (V, d) weight behind an embedding module (or the tensor itself)."""
    return embedding if isinstance(embedding, torch.Tensor) else embedding.weight


def embed(
    embedding: torch.nn.Module | torch.Tensor,
    soft: SoftInputs,
    detach: torch.Tensor | None = None,
) -> torch.Tensor:
    """Input embeddings (B, T, d) for a batch of soft-input records.

    `embedding` is the model's input-embedding module (called on the candidate ids, so a module
    that scales its output, as Gemma's does, is honoured; mixing is linear so scale and mixture
    commute) or a bare (V, d) table. Gradients flow into the embedding rows of every candidate in
    proportion to its weight; weights and noise are constants. `detach` (B, T) bool: positions
    whose candidate rows get no gradient (`train.soft_input_grad: none` passes the mixed
    positions); the values are unchanged, only the gradient path is cut. The result is in the
    embedding's dtype whatever autocast is active (CUDA's autocast runs `sum` in fp32, CPU's does
    not: a bf16 embedding would start the learner's residual stream in fp32 on a GPU only).
    """
    if isinstance(embedding, torch.Tensor):
        rows = torch.nn.functional.embedding(soft.ids, embedding)  # (B, T, K, d)
    else:
        rows = embedding(soft.ids)  # (B, T, K, d)
    if detach is not None:
        cut = detach.to(device=rows.device, dtype=torch.bool)[..., None, None]  # (B, T, 1, 1)
        rows = torch.where(cut, rows.detach(), rows)  # (B, T, K, d)
    weights = soft.weights.to(device=rows.device, dtype=rows.dtype).detach()  # (B, T, K)
    with torch.autocast(rows.device.type, enabled=False):
        mixed = (rows * weights.unsqueeze(-1)).sum(dim=-2)  # (B, T, d)
        if soft.noise is not None:
            mixed = mixed + soft.noise.to(device=rows.device, dtype=rows.dtype).detach()
    return mixed
