"""Out-of-memory errors that say where they happened.

`with oom_phase("learner", "micro-batch 2 of 4: ...", rows=8, tokens=4096):` turns an
out-of-memory error raised inside the block into `PhaseOutOfMemory`, which carries the phase,
a description of the work (the batch shape) and, for batched work, its rows and tokens; the
trainer renders it as one `error:` line with the device's memory and `ngrpo plan`'s estimate
(`ngrpo.trainer.oom`), or retries a learner micro-batch with a smaller token budget
(`train.oom_retry`). Out of memory is, here (`is_out_of_memory`):
- `torch.OutOfMemoryError` (CUDA's, `torch.cuda.OutOfMemoryError`, is the same class);
- `MemoryError` (Python on the host);
- the `RuntimeError` of torch's CPU allocator (`DefaultCPUAllocator: can't allocate memory`),
  which torch raises as a plain RuntimeError, told apart by its message.
The Linux OOM killer ends a process with SIGKILL instead: nothing can be reported then.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_CPU_ALLOCATOR = "can't allocate memory"  # torch's DefaultCPUAllocator, a plain RuntimeError
_TRIED = re.compile(r"(?:Tried to allocate|you tried to allocate) ([\d.]+ ?[KMGT]?i?B|\d+ bytes)")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` is an allocation failure (device or host; see the module docstring)."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and _CPU_ALLOCATOR in str(err)


class PhaseOutOfMemory(Exception):
    """Out of memory in a named phase of a training step (rollout, reference, learner,
    optimizer, evaluation); `shape` describes the work, `rows` / `tokens` size a batch."""

    def __init__(
        self, phase: str, shape: str, rows: int | None, tokens: int | None, cause: BaseException
    ) -> None:
        self.phase, self.shape, self.rows, self.tokens = phase, shape, rows, tokens
        found = _TRIED.search(str(cause))
        self.requested = found.group(1) if found else None  # "2.00 GiB", as torch wrote it
        super().__init__(f"out of memory in the {phase} ({shape})")


@contextmanager
def oom_phase(
    phase: str, shape: str, rows: int | None = None, tokens: int | None = None
) -> Iterator[None]:
    """Raise `PhaseOutOfMemory` for an out-of-memory error inside the block."""
    try:
        yield
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        raise PhaseOutOfMemory(phase, shape, rows, tokens, err) from err
