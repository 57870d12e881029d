"""Timing for the benchmarks: device synchronisation and wall-clock medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op elsewhere. Every bench timer calls it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    sync_device(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    sync_device(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    return statistics.median(timed(fn, device)[0] for _ in range(repeats))
