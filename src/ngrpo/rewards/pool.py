"""Worker processes that run math-verify under a hard, per-answer deadline.

Why processes: math-verify's own timeout is `signal.alarm`, which only works in the main thread of
the main interpreter, and sympy can spin for minutes (`10^{10^{10^{10}}}`) or allocate without
bound. Each answer is compared in a worker process; when the deadline passes the worker is killed
(SIGKILL) and replaced, and the answer counts as incorrect. This works from any thread of any
process, and several threads may share one pool (each call checks idle workers out of a queue).

Workers start through the `forkserver` method with math-verify preloaded and warmed up
(`ngrpo.rewards._warm`), so a replacement costs a fork (milliseconds), not a fresh interpreter;
`spawn` is used where forkserver does not exist. A worker also caps its address space
(`WORKER_MEMORY_BYTES`) so a runaway comparison fails with MemoryError instead of exhausting the
machine. A replacement's start-up is waited for when it is next used, never inside the call that
timed out, and a deadline starts only once a worker is ready. Workers ignore the stop signals
(`ignore_stop_signals`): the trainer decides what a stop does to the step in progress.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from multiprocessing.connection import Connection, wait

log = logging.getLogger(__name__)

TIMEOUT_S = 1.0
STARTUP_TIMEOUT_S = 120.0
WORKER_MEMORY_BYTES = 4 * 1024**3
_PRELOAD = [
    "ngrpo.rewards.pool", "ngrpo.rewards.equivalence", "math_verify", "sympy",
    "ngrpo.rewards._warm",
]  # fmt: skip


def ignore_stop_signals() -> None:
    """In a worker: ignore the stop signals (SIGINT, SIGTERM, SIGUSR1: `ngrpo.trainer.stop`). A
    terminal's Ctrl-C reaches the whole process group and a scheduler signals every process of a
    job (Slurm's `--signal=USR1@90` too, whose default action would kill a worker), but the
    trainer decides what its workers do when it stops; it ends them itself, and an idle worker
    whose trainer is gone exits at its pipe's end."""
    for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
        if signum is not None:
            signal.signal(signum, signal.SIG_IGN)


def cap_memory(limit: str, max_bytes: int) -> None:
    """In a worker: cap `resource.<limit>` (`RLIMIT_AS`, `RLIMIT_DATA`) at `max_bytes` (at most
    the hard limit already set); allocations past it raise MemoryError. No-op where the
    platform has no such limit."""
    try:
        import resource

        kind = getattr(resource, limit)
        hard = resource.getrlimit(kind)[1]
        if hard != resource.RLIM_INFINITY:
            max_bytes = min(max_bytes, hard)
        resource.setrlimit(kind, (max_bytes, hard))
    except (ImportError, AttributeError, ValueError, OSError):
        pass


def _serve(conn: Connection) -> None:
    """Worker main loop: receive (pred, gold) pairs, answer True / False; never evaluates input."""
    ignore_stop_signals()
    cap_memory("RLIMIT_AS", WORKER_MEMORY_BYTES)
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    from ngrpo.rewards.equivalence import math_equal

    math_equal("1", "1")  # warm the parser before declaring readiness
    conn.send("ready")
    while True:
        try:
            pred, gold = conn.recv()
        except (EOFError, OSError):
            return
        try:
            verdict = math_equal(pred, gold)
        except BaseException:  # noqa: BLE001 - any failure to compare means "not equal"
            verdict = False
        conn.send(verdict)


def _context():
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, ctx) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.ready = False

    def wait_ready(self) -> bool:
        if not self.ready and self.conn.poll(STARTUP_TIMEOUT_S):
            try:
                self.ready = self.conn.recv() == "ready"
            except (EOFError, OSError):
                self.ready = False
        return self.ready

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class GradingPool:
    """`num_workers` math-verify processes; `check(pairs)` compares under a per-pair deadline."""

    def __init__(self, num_workers: int | None = None, timeout_s: float = TIMEOUT_S) -> None:
        self.num_workers = num_workers or max(1, min(4, os.cpu_count() or 1))
        self.timeout_s = timeout_s
        self._ctx = _context()
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._closed = False
        for _ in range(self.num_workers):
            self._idle.put(_Worker(self._ctx))

    def check(self, pairs: list[tuple[str, str]]) -> list[bool | None]:
        """math-verify verdict per (pred, gold) pair: True, False, or None when it timed out."""
        if self._closed:
            raise RuntimeError("GradingPool is closed")
        if not pairs:
            return []
        workers = [self._idle.get()]
        while len(workers) < len(pairs):
            try:
                workers.append(self._idle.get_nowait())
            except queue.Empty:
                break
        try:
            return self._run(pairs, workers)
        finally:
            for worker in workers:
                self._idle.put(worker)

    def _replace(self, workers: list[_Worker], slot: int) -> None:
        workers[slot].kill()
        workers[slot] = _Worker(self._ctx)

    def _run(self, pairs: list[tuple[str, str]], workers: list[_Worker]) -> list[bool | None]:
        results: list[bool | None] = [None] * len(pairs)
        todo = list(range(len(pairs)))[::-1]  # popped from the end: in order
        free = list(range(len(workers)))
        busy: dict[Connection, tuple[int, int, float]] = {}  # conn -> (slot, pair index, deadline)
        while todo or busy:
            while todo and free:
                slot = free.pop()
                if not workers[slot].wait_ready():
                    log.warning("grading worker failed to start; replacing it")
                    self._replace(workers, slot)
                    free.append(slot)
                    if not workers[slot].wait_ready():
                        raise RuntimeError("grading worker processes cannot start")
                    continue
                index = todo.pop()
                workers[slot].conn.send(pairs[index])
                busy[workers[slot].conn] = (slot, index, time.monotonic() + self.timeout_s)
            next_deadline = min(deadline for _, _, deadline in busy.values())
            for conn in wait(list(busy), timeout=max(0.0, next_deadline - time.monotonic())):
                slot, index, _ = busy.pop(conn)
                try:
                    results[index] = bool(conn.recv())
                except (EOFError, OSError):  # the worker died (e.g. out of memory)
                    results[index] = False
                    self._replace(workers, slot)
                free.append(slot)
            now = time.monotonic()
            for conn, (slot, index, deadline) in list(busy.items()):
                if now >= deadline:
                    del busy[conn]
                    log.info("grading timed out (%.1f s): %.80r", self.timeout_s, pairs[index][0])
                    self._replace(workers, slot)
                    free.append(slot)
        return results

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                return

    def __enter__(self) -> GradingPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_DEFAULT_POOL: GradingPool | None = None
_DEFAULT_LOCK = threading.Lock()


def default_pool() -> GradingPool:
    """The process-wide pool used when no pool is passed (started on first use, closed at exit)."""
    global _DEFAULT_POOL
    with _DEFAULT_LOCK:
        if _DEFAULT_POOL is None:
            _DEFAULT_POOL = GradingPool()
            atexit.register(_DEFAULT_POOL.close)
        return _DEFAULT_POOL
