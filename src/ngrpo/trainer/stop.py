"""Stopping a run on request: SIGTERM (schedulers, preemption), SIGUSR1 (Slurm's early warning,
`#SBATCH --signal=USR1@90`) and SIGINT (Ctrl-C).

`GracefulStop` installs handlers for these signals while `train()` runs and puts the previous
handlers back when it returns (a library must not leave handlers behind); outside the main
thread, where Python cannot install handlers, it does nothing. What a signal does:
- the first one sets a flag (and logs). Inside an `abandonable(phase)` block (the parts of a step
  that change nothing a checkpoint holds: the rollout, rewards, reference scoring, the update
  before its first optimizer step) it also raises `StepAbandoned` at once; elsewhere the step
  reaches its next safe point (`ngrpo.trainer.safe_point`) or its end. Either way a complete
  checkpoint is written and `train()` raises `TrainingStopped` (the CLI exits with code 75;
  `--resume` continues exactly, redoing an abandoned step);
- under several processes `requested(accelerator)` all-reduces the flag at each safe point, so
  every process stops at the same point, also when the signal reached only some of them;
- a second signal raises `Interrupted` at once (the CLI exits with 128 + the signal's number):
  no checkpoint of the current step, the previous complete one intact (checkpoints are written
  atomically). Signals within `DUPLICATE_S` of the first count as the first: a launcher
  forwards the signal it got to workers that often got it already (torchrun forwards SIGINT /
  SIGTERM to its workers, which a terminal's Ctrl-C or a scheduler's SIGTERM also reached).
Python runs the handlers between bytecodes of the main thread, so "at once" means once the
operation in progress (a kernel, a collective) returns.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator

from ngrpo.utils.errors import Interrupted

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT, *([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else []))
DUPLICATE_S = 1.0  # a signal this soon after the first is the same request, delivered twice


class StepAbandoned(BaseException):
    """A stop request inside a step, at a point where nothing a checkpoint holds has changed yet.

    A `BaseException` (as `KeyboardInterrupt`), so that code catching `Exception` (a reward
    function's error policy, an out-of-memory check) lets it through. `agreed`: whether every
    process already knows (it came from an all-reduce at a safe point), or only this one (a
    signal inside an `abandonable` block)."""

    def __init__(self, phase: str, agreed: bool) -> None:
        super().__init__(phase)
        self.phase, self.agreed = phase, agreed


class GracefulStop:
    """A context manager holding the stop request of one `train()` call (see the module)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None  # the first stop signal received
        self.received_at = 0.0  # its `time.monotonic()`
        self._previous: dict[int, object] = {}
        self._phase: str | None = None  # inside `abandonable(phase)`: a signal raises at once

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            # None: a handler installed outside Python, which cannot be put back; the default
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self.signal_name is None:
            self.signal_name, self.received_at = name, now
            # Handlers run in the main thread between bytecodes and logging's locks are
            # re-entrant, so logging here cannot deadlock.
            log.warning(
                "%s received: stopping at the next safe point with a checkpoint (another "
                "signal exits at once, without one)", name,
            )  # fmt: skip
            if self._phase is not None:
                raise StepAbandoned(self._phase, agreed=False)
            return
        if now - self.received_at < DUPLICATE_S:
            return  # the same request, delivered twice (launcher and terminal / scheduler)
        self.__exit__()
        raise Interrupted(signum)

    @contextlib.contextmanager
    def abandonable(self, phase: str) -> Iterator[None]:
        """A block that a stop request may leave at any bytecode, raising `StepAbandoned(phase)`
        (at once when one came before it): it must change nothing a checkpoint holds, and, under
        several processes, run no collective (another process would wait for it forever)."""
        if self.signal_name is not None:
            raise StepAbandoned(phase, agreed=False)
        outer, self._phase = self._phase, phase
        try:
            yield
        finally:
            self._phase = outer

    def requested(self, accelerator) -> bool:
        """Whether any process was asked to stop: one all-reduce under several processes (call
        it on every process at the same point: between steps, at a step's safe points)."""
        from ngrpo.learner.update import _agreed

        return not _agreed(self.signal_name is None, accelerator, accelerator.device)
