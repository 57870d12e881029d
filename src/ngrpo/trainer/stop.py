"""Stopping a run on request: SIGTERM (schedulers, preemption) and SIGINT (Ctrl-C).

`GracefulStop` installs handlers for both signals while `train()` runs and puts the previous
handlers back when it returns (a library must not leave handlers behind); outside the main
thread, where Python cannot install handlers, it does nothing. What a signal does:
- the first one only sets a flag (and logs); the loop checks it between steps, so the step in
  progress finishes, a complete checkpoint of it is written and `train()` raises
  `TrainingStopped` (the CLI exits with code 75; `--resume` continues exactly);
- under several processes `requested(accelerator)` all-reduces the flag once per step, so every
  process stops after the same step, also when the signal reached only some of them;
- a second signal raises `Interrupted` at once (the CLI exits with 128 + the signal's number):
  no checkpoint of the current step, the previous complete one intact (checkpoints are written
  atomically). Signals within `DUPLICATE_S` of the first count as the first: a launcher
  forwards the signal it got to workers that often got it already (torchrun forwards SIGINT /
  SIGTERM to its workers, which a terminal's Ctrl-C or a scheduler's SIGTERM also reached).
Python runs the handlers between bytecodes of the main thread, so "at once" means once the
operation in progress (a kernel, a collective) returns.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from ngrpo.utils.errors import Interrupted

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
DUPLICATE_S = 1.0  # a signal this soon after the first is the same request, delivered twice


class GracefulStop:
    """A context manager holding the stop request of one `train()` call (see the module)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None  # the first stop signal received
        self._received_at = 0.0
        self._previous: dict[int, object] = {}

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
            self.signal_name, self._received_at = name, now
            # Handlers run in the main thread between bytecodes and logging's locks are
            # re-entrant, so logging here cannot deadlock.
            log.warning(
                "%s received: stopping after the current step with a checkpoint (another "
                "signal exits at once, without one)", name,
            )  # fmt: skip
            return
        if now - self._received_at < DUPLICATE_S:
            return  # the same request, delivered twice (launcher and terminal / scheduler)
        self.__exit__()
        raise Interrupted(signum)

    def requested(self, accelerator) -> bool:
        """Whether any process was asked to stop: one all-reduce under several processes (call
        it on every process at the same point: between steps)."""
        from ngrpo.learner.update import _agreed

        return not _agreed(self.signal_name is None, accelerator, accelerator.device)
