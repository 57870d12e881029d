"""Peak memory of this process over a stretch of training (the `memory/peak_bytes` metric).

CUDA: `torch.cuda.max_memory_allocated` (tensors only: no CUDA context, no allocator cache),
reset with `torch.cuda.reset_peak_memory_stats`. CPU: the kernel's peak resident set of the
process (VmHWM in /proc/self/status), reset by writing 5 to /proc/self/clear_refs: everything
the process holds, the Python runtime and libraries included (~0.4 GB), and freed memory that
malloc keeps for reuse. Where /proc is missing (not Linux) the CPU peak is the lifetime peak of
`resource.getrusage` (never reset) and the metric says so in its docs only.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak(device: torch.device) -> None:
    """Start a new peak-measurement window for `device` (CUDA) or the process (CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif _CLEAR_REFS.exists():
        # not permitted in some sandboxes: the peak since the last reset is reported then
        with contextlib.suppress(OSError):
            _CLEAR_REFS.write_text("5")  # VmHWM := VmRSS


def status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status (`VmRSS`, `VmHWM`, ...) in bytes; None without it."""
    if _STATUS.exists():
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def peak_bytes(device: torch.device) -> int:
    """The most memory held since the last `reset_peak` (see the module docstring)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = status_bytes("VmHWM")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
