"""User reward functions in a worker process, under the same kind of hard deadline as the grader.

A user function (`module:function`, `path/to/file.py:function`, or a Python callable passed to
`ngrpo.train`) runs in its own process, started through the same `forkserver` context as the
grading pool (`ngrpo.rewards.pool`). Each call has a deadline of `timeout_s` seconds per completion
(the built-in grader's per-answer bound, `pool.TIMEOUT_S`, by default); when it passes, the worker
is killed (SIGKILL) and a fresh one is started for the next call, so a function that hangs or spins
never stalls training and a crash (segfault, `os._exit`) is reported instead of taking the trainer
down.

Memory: a worker caps its writable memory at `memory_bytes` (`train.reward_memory_gb`, 8 GB by
default) with `RLIMIT_DATA`, so a function that allocates without bound gets a MemoryError, which
is reported as an error naming it, instead of taking the host down. `RLIMIT_DATA` rather than the
grading pool's `RLIMIT_AS`: a reward may legitimately load a model, and CUDA reserves tens of GB of
address space it never touches (measured on an H200: CUDA fails to start under an 8 GiB
`RLIMIT_AS`, and starts under an 8 GiB `RLIMIT_DATA`, the process then holding 1.4 GB of data
and 18 GB of address space). Memory on a GPU is not capped.

A function that raises is reported with its exception, the file and line where it was raised
inside the function's own file, and a pointer to `--log-level DEBUG`, which logs the whole
traceback from the worker.

Signals: a worker ignores SIGINT, SIGTERM and SIGUSR1 (as the grading workers do,
`pool.ignore_stop_signals`): a stop request (`ngrpo.trainer.stop`) is the trainer's to handle (it
drops a step whose rewards are being computed); the trainer ends its workers itself.

The function is named to the worker by its spec string (imported there) or sent pickled (a Python
callable: by reference, so it must be defined at the top level of a module or of a script guarded by
`if __name__ == "__main__":`, as for any multiprocessing code). A lambda or closure cannot be sent
and is refused with an error that says so.
"""

from __future__ import annotations

import logging
import pickle
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from ngrpo.rewards.pool import (
    STARTUP_TIMEOUT_S,
    TIMEOUT_S,
    _context,
    cap_memory,
    ignore_stop_signals,
)
from ngrpo.rewards.specs import import_function
from ngrpo.utils.errors import NgrpoError

log = logging.getLogger(__name__)

MEMORY_BYTES = 8 * 10**9  # `train.reward_memory_gb`'s default


class RewardCallError(Exception):
    """A user reward call failed (raised, timed out, died); the message names the function."""


def _serve(conn: Connection, target: str | bytes, memory_bytes: int | None) -> None:
    """Worker main loop: resolve the function, then answer ("ok", value) / ("error", text) /
    ("memory", text) for a MemoryError."""
    ignore_stop_signals()
    if memory_bytes is not None:
        cap_memory("RLIMIT_DATA", memory_bytes)
    try:
        fn = pickle.loads(target) if isinstance(target, bytes) else import_function(target)
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", f"cannot load it in a worker process: {type(err).__name__}: {err}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            args, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", fn(*args, **kwargs))
            conn.send(reply)
        except BaseException as err:  # noqa: BLE001 - any failure is the user's function's
            status = "memory" if isinstance(err, MemoryError) else "error"
            try:
                conn.send((status, _failure(fn, err)))
            except (EOFError, OSError):
                return


def _failure(fn: Callable, err: BaseException) -> dict[str, str]:
    """What the parent reports of an exception in `fn`: its message, where it was raised (the
    deepest frame in `fn`'s own file, `file:line in function`; else the deepest frame below this
    worker) and the full traceback (logged at DEBUG)."""
    frames = traceback.extract_tb(err.__traceback__)[1:]  # [0] is `_serve`'s call
    own_file = getattr(getattr(fn, "__code__", None), "co_filename", None)
    inside = [f for f in frames if f.filename == own_file] or frames
    where = f"{inside[-1].filename}:{inside[-1].lineno} in {inside[-1].name}" if inside else ""
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return {"message": f"{type(err).__name__}: {err}", "where": where, "traceback": text}


def picklable_target(fn: Callable) -> bytes:
    """`fn` pickled by reference, or an `NgrpoError` saying why it cannot be sent to a worker."""
    name = getattr(fn, "__qualname__", repr(fn))
    if "<lambda>" in name or "<locals>" in name:
        raise NgrpoError(
            f"reward function {name} is a lambda or a nested function, which cannot run in a "
            "worker process; define it at the top level of a module or file"
        )
    try:
        return pickle.dumps(fn)
    except Exception as err:  # noqa: BLE001 - pickling raises many types
        raise NgrpoError(
            f"reward function {name} cannot be sent to a worker process ({err}); define it at "
            "the top level of a module or file"
        ) from err


class UserRewardWorker:
    """One worker process for one user function; restarted after a timeout or a crash."""

    def __init__(
        self, name: str, target: str | bytes, timeout_s: float = TIMEOUT_S,
        memory_bytes: int | None = MEMORY_BYTES,
    ) -> None:  # fmt: skip
        self.name, self.target, self.timeout_s = name, target, timeout_s
        self.memory_bytes = memory_bytes
        self._ctx = _context()
        self._conn: Connection | None = None
        self._process = None

    def _start(self) -> None:
        self._conn, child = self._ctx.Pipe()
        self._process = self._ctx.Process(
            target=_serve,
            args=(child, self.target, self.memory_bytes),
            daemon=True,
            name=f"reward-{self.name}",
        )
        self._process.start()
        child.close()
        if not self._conn.poll(STARTUP_TIMEOUT_S):
            self.close()
            raise NgrpoError(f"reward function {self.name}: worker did not start")
        try:
            status, detail = self._conn.recv()
        except (EOFError, OSError):
            status, detail = (
                "error",
                (
                    "the worker process died while loading it (a script that calls ngrpo.train "
                    'must do so under `if __name__ == "__main__":`, as for any multiprocessing '
                    "code)"
                ),
            )
        if status != "ready":
            self.close()
            raise NgrpoError(f"reward function {self.name}: {detail}")

    def start(self) -> None:
        """Start the worker now (so that loading errors surface before training)."""
        if self._process is None or not self._process.is_alive():
            self._start()

    def call(self, args: tuple, kwargs: dict[str, Any], num_items: int) -> Any:
        """`fn(*args, **kwargs)` in the worker within `timeout_s × num_items` seconds."""
        self.start()
        assert self._conn is not None
        deadline = self.timeout_s * max(1, num_items)
        try:
            self._conn.send((args, kwargs))
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            raise RewardCallError(f"its arguments cannot be sent to the worker: {err}") from err
        started = time.monotonic()
        if not self._conn.poll(deadline):
            self.close()
            raise RewardCallError(
                f"timed out after {deadline:.3g} s ({self.timeout_s:.3g} s per completion × "
                f"{num_items}); the worker was killed"
            )
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError):
            code = None
            if self._process is not None:
                self._process.join(timeout=5)
                code = self._process.exitcode
            self.close()
            hint = self._cap_hint() if code is not None and code < 0 else ""
            raise RewardCallError(f"the worker process died (exit code {code}){hint}") from None
        log.debug("reward %s: %.3f s", self.name, time.monotonic() - started)
        if status == "ok":
            return value
        log.debug("reward function %s failed in its worker:\n%s", self.name, value["traceback"])
        if status == "memory":
            raise RewardCallError(
                f"ran out of memory ({value['message'].rstrip(': ')}){self._cap_hint()}"
            )
        where = f" at {value['where']}" if value["where"] else ""
        hint = "" if log.isEnabledFor(logging.DEBUG) else (
            "; --log-level DEBUG shows the full traceback")  # fmt: skip
        raise RewardCallError(f"raised {value['message']}{where}{hint}")

    def _cap_hint(self) -> str:
        """The worker's memory cap, for messages about memory (a killed worker may have hit it)."""
        if self.memory_bytes is None:
            return ""
        return (f"; its memory cap is {self.memory_bytes / 1e9:.3g} GB (train.reward_memory_gb; "
                "null removes the cap)")  # fmt: skip

    def close(self) -> None:
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(timeout=5)
            self._process = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
