"""Safe points of a training step: where a stop request may drop the step in progress.

A step changes nothing that a checkpoint holds until its update's first optimizer step: the
rollout reads the weights, rewards and reference / π_old scoring write nothing that is saved; only
the data position and the random states move (`StepStart` takes them when the step begins and
puts them back). A stop request (`ngrpo.trainer.stop`) there abandons the step: the checkpoint
written is the state at the step's start, and `--resume` redoes the step exactly as an
uninterrupted run does it. After the first optimizer step the step runs to its end, as before.

Two kinds of points (`SafePoints`, passed to `_train_step` and on to `update_policy`):
- `region(phase)`: a block the signal handler leaves at once, raising `StepAbandoned`; in one
  process every phase up to the first optimizer step, under several processes only those that run
  no collective (the rollout and its rewards): a process leaving an FSDP forward or a DDP backward
  early would leave the others waiting in it;
- `check(phase)`: a point every process reaches in the same order (after each rollout round, after
  reference and π_old scoring, before the first optimizer step): the flag is all-reduced there, so
  every process abandons at the same point, also when the signal reached only some of them.
A process that left a `region` on its own signal has skipped the rest of it, but no collective
(none runs inside a region), so its next collective is the one all-reduce it makes then
(`settle`), which meets the other processes' next `check`: they abandon there too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from ngrpo.trainer.checkpoints import _rng_state, _set_rng_state
from ngrpo.trainer.stop import GracefulStop, StepAbandoned

# what the `stopped:` line calls each phase a step can be abandoned in
PHASES = {
    "rollout": "the rollout",
    "rewards": "the rewards",
    "reference": "reference scoring",
    "old_logprobs": "π_old scoring",
    "learner": "the update, before its first optimizer step",
}


class SafePoints:
    """The safe points of one run's steps (see the module)."""

    def __init__(self, stop: GracefulStop, accelerator) -> None:
        self.stop, self.accelerator = stop, accelerator
        self.single = accelerator.num_processes == 1

    @contextlib.contextmanager
    def region(self, phase: str, collectives: bool = False) -> Iterator[None]:
        """A block a stop request leaves at once (`collectives`: it may run one, so under
        several processes only the `check` after it can abandon the step)."""
        if collectives and not self.single:
            yield
            return
        with self.stop.abandonable(phase):
            yield

    def check(self, phase: str) -> None:
        """Raise `StepAbandoned(phase)` when any process was asked to stop (one all-reduce
        under several processes: every process must call this at the same point)."""
        if self.stop.requested(self.accelerator):
            raise StepAbandoned(phase, agreed=True)

    def settle(self, abandoned: StepAbandoned) -> None:
        """After leaving a `region` on this process's own signal: the all-reduce that meets the
        other processes' next `check`, so that they abandon the step too."""
        if not abandoned.agreed and not self.single:
            self.stop.requested(self.accelerator)


class _NoStop:
    """The safe points of a step no stop request can reach (`ngrpo bench`, direct calls)."""

    def region(self, phase: str, collectives: bool = False) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def check(self, phase: str) -> None:
        pass


NO_STOP = _NoStop()


@dataclass
class StepStart:
    """What a step moves before its first optimizer step, taken when it begins: the data
    position, the random states and the learner settings (`train.oom_retry` may lower the token
    budget inside the step)."""

    sampler: dict
    rng: dict
    params: object

    @classmethod
    def take(cls, run) -> StepStart:
        return cls(run.sampler.state_dict(), _rng_state(), run.params)

    def restore(self, run) -> None:
        run.sampler.load_state_dict(self.sampler)
        _set_rng_state(self.rng)
        run.params = self.params
