"""A preallocated (static) key/value cache for the static decoder (`ngrpo.rollout.step`).

One keys and one values tensor per layer, shaped (rows, kv_heads, max_len, head_dim) and allocated
once for prompt + max_new_tokens, so a decoding step writes one column in place and its cost does
not depend on what was allocated before (no `torch.cat` growth, no reallocation). Addresses never
change, which is what lets a CUDA graph capture the decoding step. A batch of b < rows rows uses
the first b rows (`view(layer, b, length)`); `compact` moves the rows that are still decoding to
the front, `expand` copies prompt rows to the rows of their samples (shared prefill).

Deviation: transformers' `StaticCache` is not used. Its API differs between the 5.x releases this
project supports (5.17 passes `cache_position`, 5.24 keeps a cumulative length inside the cache),
and the decoder needs row views and in-place row moves it does not offer.
"""

from __future__ import annotations

import torch


class StaticKVCache:
    """Keys and values of `layers` layers for up to `rows` rows of `max_len` positions."""

    def __init__(
        self,
        layers: int,
        rows: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (rows, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.rows, self.max_len = rows, max_len

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v (b, H, q, D) of the first b rows at positions `slots` (q,) in place."""
        b = k.shape[0]
        self.keys[layer][:b].index_copy_(2, slots, k)
        self.values[layer][:b].index_copy_(2, slots, v)

    def view(self, layer: int, b: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (b, H, length, D) of the first b rows' first `length` positions."""
        return self.keys[layer][:b, :, :length], self.values[layer][:b, :, :length]

    def gather_rows(self, index: torch.Tensor, length: int) -> None:
        """Row i becomes old row index[i] (i < len(index)), positions [0, length) only."""
        b = index.shape[0]
        for t in self.keys + self.values:
            t[:b, :, :length] = t[index, :, :length]  # the gather copies first: aliasing is safe
