"""Peak memory of this process over a stretch of training (the `memory/peak_bytes` metric).

CUDA: `torch.cuda.max_memory_allocated` (tensors only: no CUDA context, no allocator cache),
reset with `torch.cuda.reset_peak_memory_stats`. CPU: the kernel's peak resident set of the
process (VmHWM in /proc/self/status), reset by writing 5 to /proc/self/clear_refs: everything
the process holds, the Python runtime and libraries included (~0.4 GB), and freed memory that
malloc keeps for reuse. Where /proc is missing (not Linux) the CPU peak is the lifetime peak of
`resource.getrusage` (never reset) and the metric says so in its docs only.

`PeakMemory` measures one block exactly, for the benchmarks (`ngrpo bench learner`): the peak
above what was held at its start, with glibc told to return freed blocks from 128 KiB up to the
kernel so that the CPU resident set follows live tensors.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path

import torch

from ngrpo.utils.errors import NgrpoError

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


# ------------------------------------------------------- the peak of one block (benchmarks)


def _rss_status(field: str) -> int:
    value = status_bytes(field)
    if value is None:
        raise NgrpoError(f"/proc/self/status has no {field}")
    return value


def _glibc():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = None if name is None else ctypes.CDLL(name)
    return libc if libc is not None and getattr(libc, "mallopt", None) is not None else None


def _follow_live_memory() -> bool:
    """Make the process's RSS follow its live allocations (glibc only): blocks from 128 KiB up
    are mapped and unmapped on their own (`mallopt` M_MMAP_THRESHOLD, fixed, and
    M_TRIM_THRESHOLD), so freed tensors leave the resident set instead of lingering in malloc's
    heap, where later allocations would reuse them unseen. Returns whether it applied."""
    libc = _glibc()
    if libc is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 128 * 1024)) and bool(
        libc.mallopt(m_trim_threshold, 128 * 1024)
    )


def _release_free_heap() -> None:
    """glibc `malloc_trim(0)`: return freed heap pages to the kernel before a measurement."""
    libc = _glibc()
    if libc is not None and getattr(libc, "malloc_trim", None) is not None:
        libc.malloc_trim(0)


class PeakMemory:
    """Peak memory of a block above what was held at its start (CUDA allocator or CPU VmHWM)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type != "cuda" and not Path("/proc/self/clear_refs").exists():
            raise NgrpoError("peak memory on CPU needs Linux /proc/self/clear_refs")
        self.method = "torch.cuda.max_memory_allocated"
        if device.type != "cuda":
            follows = _follow_live_memory()
            self.method = ("VmHWM after /proc/self/clear_refs (peak RSS)"
                           + (", glibc mmap threshold 128 KiB" if follows else ""))  # fmt: skip

    def held(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return _rss_status("VmRSS")

    def start(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _release_free_heap()
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        return self.held()

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        return _rss_status("VmHWM")
