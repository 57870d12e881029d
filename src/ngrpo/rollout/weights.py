"""The static decoder's projection weights in the compute dtype, owned by the decoder.

Under mixed precision the model keeps fp32 master weights and autocast casts each matmul weight to
bf16 when it is used, caching the copy until the autocast region ends. A CUDA graph captured in one
`generate` call would then hold pointers to copies that are freed when that call's region ends,
and, after an optimizer step, stale. So the decoder keeps its own compute-dtype copy of every
plain `torch.nn.Linear` projection of its layers (q, k, v, o, gate, up, down), made once and
refreshed in place (same addresses, so captured graphs stay valid). The values are exactly
autocast's casts, so the arithmetic is unchanged.

When to refresh: `refresh(force=True)` copies unconditionally; the trainer calls it (through
`ngrpo.rollout.DecoderPool.weights_changed`) after every update, because it knows when it stepped.
The parameters' version counter is not a reliable signal: fused AdamW (the trainer's optimizer
on CUDA) writes the parameters without bumping it. `refresh()` without `force` still copies when
the counter moved (an in-place write by an ordinary operation, as a caller outside the trainer
may make), which is a convenience, not the guarantee.

A projection that is not a plain `Linear` (a LoRA-wrapped one, whose fp32 adapters autocast casts
per region) is called as a module; then `graph_safe` is False and the decoder does not keep
captured graphs from one call to the next.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


class Projection:
    """One projection: a compute-dtype copy of a plain Linear, or the module itself."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype) -> None:
        self.module = module
        plain = type(module) is torch.nn.Linear
        self.copy = plain and module.weight.dtype != dtype
        self.plain = plain
        self.weight, self.bias = (module.weight, module.bias) if plain else (None, None)
        self.versions: tuple[int, int] = (-1, -1)
        if self.copy:
            self.weight = torch.empty_like(module.weight, dtype=dtype)
            bias = module.bias
            self.bias = None if bias is None else torch.empty_like(bias, dtype=dtype)
            self.refresh()

    def _source_versions(self) -> tuple[int, int]:
        bias = self.module.bias
        return self.module.weight._version, -1 if bias is None else bias._version

    def refresh(self, force: bool = False) -> bool:
        """Copy the source parameters in when `force` or their version counter moved; True when a
        copy was made."""
        if not self.copy or (not force and self._source_versions() == self.versions):
            return False
        with torch.no_grad():
            self.weight.copy_(self.module.weight)
            if self.bias is not None:
                self.bias.copy_(self.module.bias)
        self.versions = self._source_versions()
        return True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.plain:
            return F.linear(x, self.weight, self.bias)
        return self.module(x)


class LayerWeights:
    """The projections of every decoder layer (`layers[i]["q_proj"](h)`, ...), see the module
    docstring. `dtype`: the compute dtype (the autocast dtype, or the weights' own)."""

    def __init__(self, layers, dtype: torch.dtype) -> None:
        self.layers = [
            {name: Projection(getattr(layer.self_attn, name), dtype)
             for name in ATTENTION_PROJECTIONS}
            | {name: Projection(getattr(layer.mlp, name), dtype) for name in MLP_PROJECTIONS}
            for layer in layers
        ]  # fmt: skip
        self.graph_safe = all(p.plain for layer in self.layers for p in layer.values())

    def __getitem__(self, i: int) -> dict[str, Projection]:
        return self.layers[i]

    def refresh(self, force: bool = False) -> int:
        """Bring every copy up to date with its source (all of them with `force`, else those whose
        source's version counter moved); the number of copies refreshed."""
        return sum(p.refresh(force) for layer in self.layers for p in layer.values())

    @property
    def nbytes(self) -> int:
        """Bytes held by the copies (0 when the decoder computes in the weights' own dtype)."""
        return sum(
            t.numel() * t.element_size()
            for layer in self.layers for p in layer.values() if p.copy
            for t in (p.weight, p.bias) if t is not None
        )  # fmt: skip
