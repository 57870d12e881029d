"""Which decoder a `generate` call runs on, keeping one between calls, and compacting its batch.

- `EngineOptions`: how the engine decodes (the `rollout.kv_cache`, `cuda_graphs`, `precision`
  settings);
- `decoder_kind` / `make_decoder`: the static decoder (`ngrpo.rollout.step`) for Llama-family
  models, the model's own forward with a growing cache (`ngrpo.rollout.hf.DynamicDecoder`)
  otherwise, as `EngineOptions` ask;
- `DecoderPool`: the static decoder kept from one call to the next (KV cache, weight copies,
  captured CUDA graphs);
- `batch_target` / `compact`: finished rows leave the static decoder's batch (powers of two with
  CUDA graphs: few captured sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ngrpo.rollout.hf import DynamicDecoder
from ngrpo.rollout.step import PRECISIONS, StaticDecoder, static_unsupported
from ngrpo.utils.errors import NgrpoError

KV_CACHES = ("auto", "static", "dynamic")
CUDA_GRAPHS = ("auto", "on", "off")


@dataclass
class EngineOptions:
    """How the engine decodes; every choice samples the same tokens (up to float rounding)."""

    kv_cache: str = "auto"  # static | dynamic | auto (static when the architecture is covered)
    cuda_graphs: str = "auto"  # on | off | auto (on for the static decoder on CUDA)
    compact: bool = True  # finished rows leave the static decoder's batch
    shared_prefill: bool = True  # the n samples of a prompt share one prefill (static decoder)
    precision: str = "learner"  # learner | compute: how the static decoder rounds (bf16)

    def validate(self) -> None:
        if self.kv_cache not in KV_CACHES:
            raise NgrpoError(
                f"rollout.kv_cache must be one of {', '.join(KV_CACHES)}, got {self.kv_cache!r}"
            )
        if self.cuda_graphs not in CUDA_GRAPHS:
            raise NgrpoError(
                f"rollout.cuda_graphs must be one of {', '.join(CUDA_GRAPHS)}, "
                f"got {self.cuda_graphs!r}"
            )
        if self.precision not in PRECISIONS:
            raise NgrpoError(
                f"rollout.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )


def decoder_kind(model, options: EngineOptions, device) -> tuple[str, bool]:
    """(static | dynamic, CUDA graphs on) as `options` ask, or an `NgrpoError` saying why that
    cannot run here."""
    reason = static_unsupported(model)
    kind = options.kv_cache
    if kind == "auto":
        kind = "dynamic" if reason else "static"
    if kind == "static" and reason:
        raise NgrpoError(f"rollout.kv_cache=static is not available for this model: {reason}")
    if options.cuda_graphs == "on" and (device.type != "cuda" or kind != "static"):
        raise NgrpoError(
            "rollout.cuda_graphs=on needs a CUDA device and the static KV cache "
            f"(device {device.type}, kv_cache {kind}); use auto or off"
        )
    on_cuda = device.type == "cuda"
    graphs = options.cuda_graphs == "on" or (options.cuda_graphs == "auto" and on_cuda)
    return kind, graphs and kind == "static"


def make_decoder(model, options: EngineOptions, rows: int, max_len: int, device):
    """A fresh decoder for one call (see `DecoderPool` for one kept across calls)."""
    kind, graphs = decoder_kind(model, options, device)
    if kind == "dynamic":
        return DynamicDecoder(model, options.precision)
    return StaticDecoder(model, rows, max_len, cuda_graphs=graphs, precision=options.precision)


class DecoderPool:
    """Keeps the static decoder of one `generate` call for the next: its KV cache, compute-dtype
    weight copies and captured CUDA graphs,
    so that a training run pays allocation and capture once per shape, not once per step. One
    decoder is kept; a call it cannot serve (more rows or positions than it holds, another model,
    device, autocast dtype or options) replaces it. The kept decoder's memory stays allocated
    between calls (`nbytes`); `release()` frees it. The dynamic decoder is never kept.

    Whoever changes the model's weights calls `weights_changed()` (the trainer does after every
    update): the kept decoder's weight copies are then copied again, in place. The parameters'
    version counter is not relied on (fused AdamW does not bump it; `ngrpo.rollout.weights`)."""

    def __init__(self) -> None:
        self.decoder: StaticDecoder | None = None
        self.key: tuple | None = None
        self.reused = 0  # calls served by the kept decoder

    def get(self, model, options: EngineOptions, rows: int, max_len: int, device):
        kind, graphs = decoder_kind(model, options, device)
        if kind == "dynamic":
            return DynamicDecoder(model, options.precision)
        autocast = torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type) if autocast else None
        key = (id(model), str(device), dtype, graphs, options.precision)
        kept = self.decoder
        if kept is not None and key == self.key and rows <= kept.capacity and (
            max_len <= kept.max_len
        ):  # fmt: skip
            kept.begin_call()
            self.reused += 1
            return kept
        # the kept decoder (KV cache, weight copies, graphs) is freed before its successor is
        # allocated: no local reference may keep both alive at the peak
        del kept
        self.release()
        self.decoder = StaticDecoder(
            model, rows, max_len, cuda_graphs=graphs, precision=options.precision
        )
        self.key = key
        return self.decoder

    def weights_changed(self) -> None:
        """The model's weights were written (an optimizer step, a rollout-copy refresh): refresh
        every weight copy of the kept decoder now, in place (captured graphs stay valid)."""
        if self.decoder is not None:
            self.decoder.refresh_weights(force=True)

    def release(self) -> None:
        """Free the kept decoder (its graphs first, then its buffers)."""
        if self.decoder is not None:
            self.decoder.graphs.clear()
        self.decoder, self.key = None, None

    @property
    def nbytes(self) -> int:
        return 0 if self.decoder is None else self.decoder.nbytes


def batch_target(live: int, rows: int, total: int, graphs: bool) -> int:
    """Rows the decoder should keep for `live` rows still decoding (`rows` now, `total` at most):
    the next power of two with CUDA graphs (few captured sizes), else `live` once at most 3/4 of
    the batch is live (each compaction copies the cache, so they are spaced geometrically)."""
    if graphs:
        return min(total, 1 << (live - 1).bit_length())
    return live if 4 * live <= 3 * rows else rows


def compact(decoder, slot_rows, finished, live: int, target: int):
    """Keep the live rows in the decoder's first `live` slots, padded to `target` with copies of
    the last one; returns the new slot -> row map (padding slots map to the spare row N)."""
    n = finished.shape[0]
    finished_ext = torch.cat([finished, finished.new_ones(1)])  # (N + 1,) the spare row is done
    live_slots = (~finished_ext[slot_rows]).nonzero().squeeze(1)  # (live,)
    pad = target - live
    keep = torch.cat([live_slots, live_slots[-1:].expand(pad)])  # (target,)
    decoder.compact(keep)
    return torch.cat([slot_rows[live_slots], slot_rows.new_full((pad,), n)])  # (target,)
