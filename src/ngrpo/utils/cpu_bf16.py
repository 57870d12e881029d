"""Whether bf16 on this CPU runs at a usable speed.

A CPU without native bf16 arithmetic (AVX512-BF16 or AMX) runs a bf16 matrix product through
conversions: measured on an AVX2 host, 0.8 GFLOPS against 77 GFLOPS in fp32 (one thread, 256 ×
1536 by 1536 × 8960), so a CPU run with `model.dtype=bfloat16` is about 100 times slower than in
fp32, silently. `warn_if_slow_bf16` times one small product in each dtype at the start of a run
(a few milliseconds where bf16 is native, ~0.1 s where it is not) and logs one warning with the
measured ratio and the setting to change.
"""

from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger(__name__)

SLOW_RATIO = 4.0  # warn when a bf16 product takes this many times as long as in fp32
SHAPE = (128, 512, 512)  # (m, k, n) of the timed product: 67 MFLOP


def _best_time(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    a @ b  # warm-up (one-time kernel selection, first-touch allocation)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-9)


def bf16_slowdown(repeats: int = 3) -> float:
    """Time of one bf16 matrix product of `SHAPE` on the CPU over the same in fp32 (best of
    `repeats` each, with this process's threads): about 1 (or below) with native bf16, tens
    to a hundred without."""
    m, k, n = SHAPE
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    fp32 = _best_time(a, b, repeats)
    return _best_time(a.bfloat16(), b.bfloat16(), repeats) / fp32


def warn_if_slow_bf16(device: str, dtype: torch.dtype) -> float | None:
    """When the compute dtype is bf16 on the CPU: `bf16_slowdown()`, and one warning when it is
    `SLOW_RATIO` or more. None (nothing measured) for any other device or dtype."""
    if dtype != torch.bfloat16 or not str(device).startswith("cpu"):
        return None
    ratio = bf16_slowdown()
    if ratio >= SLOW_RATIO:
        log.warning(
            "model.dtype=bfloat16 on a CPU without native bf16 (AVX512-BF16 / AMX): a bf16 matrix "
            "product took %.0f× as long as in fp32 here, so this run will be about that much "
            "slower; set model.dtype=float32 (or auto, which is float32 on a CPU)", ratio,
        )  # fmt: skip
    return ratio
