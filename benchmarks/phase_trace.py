"""`ngrpo train` that writes when each phase of a step starts and ends, for stop_latency.py.

    TRACE=FILE python benchmarks/phase_trace.py train --config ... KEY=VALUE ...

Each line of FILE: `<time.monotonic()> <start|end> <phase>`, flushed at once; phases: `step` (the
whole `_train_step`), `rollout` (`ngrpo.rollout.generate`), `rewards` (`RewardSet.compute`),
`reference` (`reference_logprobs`), `mini-batch` (`_accumulate`: one per mini-batch, the first
before the update's first optimizer step). It wraps functions by name only, so the same script
traces the code before and after a change (whichever `ngrpo` PYTHONPATH selects).
"""

from __future__ import annotations

import os
import sys
import time

import ngrpo.learner.update
import ngrpo.rewards.functions
import ngrpo.rollout
import ngrpo.trainer.loop
from ngrpo.cli import main

_TRACE = open(os.environ["TRACE"], "a", buffering=1, encoding="utf-8")  # noqa: SIM115


def _traced(real, phase: str):
    def traced(*args, **kwargs):
        _TRACE.write(f"{time.monotonic():.6f} start {phase}\n")
        try:
            return real(*args, **kwargs)
        finally:
            _TRACE.write(f"{time.monotonic():.6f} end {phase}\n")

    return traced


TARGETS = [
    (ngrpo.trainer.loop, "_train_step", "step"),
    (ngrpo.rollout, "generate", "rollout"),
    (ngrpo.rewards.functions.RewardSet, "compute", "rewards"),
    (ngrpo.learner.update, "reference_logprobs", "reference"),
    (ngrpo.learner.update, "_accumulate", "mini-batch"),
]

if __name__ == "__main__":
    for owner, name, phase in TARGETS:
        setattr(owner, name, _traced(getattr(owner, name), phase))
    sys.exit(main(sys.argv[1:]))
