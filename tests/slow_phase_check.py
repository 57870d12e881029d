"""`ngrpo train` (or, under torchrun, each worker) with one call of one phase made slow, so that a
test can signal the run while it is inside that phase. Used by tests/test_stop.py and
tests/test_trainer_ddp.py:

    SLOW_PHASE=rollout SLOW_CALL=2 SLOW_S=60 SLOW_MARKER=F python tests/slow_phase_check.py train

SLOW_PHASE: `evaluation` (`ngrpo.evaluation.sample_examples`: one call per evaluation set and
evaluation), `rollout` (`ngrpo.rollout.generate`: one call per step here), `reference`
(`ngrpo.learner.update.reference_logprobs`: one per step) or `learner`
(`ngrpo.learner.update._accumulate`: one per mini-batch). The SLOW_CALL-th call (from 1) first
writes SLOW_MARKER (suffixed with the rank under torchrun), then sleeps SLOW_S seconds (a signal
handler that raises leaves the sleep at once), then runs the real call. SLOW_RANKS (default:
every rank): the comma-separated ranks slowed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import ngrpo.evaluation
import ngrpo.learner.update
import ngrpo.rollout
from ngrpo.cli import main

TARGETS = {
    "evaluation": (ngrpo.evaluation, "sample_examples"),
    "rollout": (ngrpo.rollout, "generate"),
    "reference": (ngrpo.learner.update, "reference_logprobs"),
    "learner": (ngrpo.learner.update, "_accumulate"),
}


def _slowed(real, call: int, seconds: float, marker: Path):
    calls = [0]

    def slow(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            marker.touch()
            time.sleep(seconds)
        return real(*args, **kwargs)

    return slow


if __name__ == "__main__":
    rank = os.environ.get("RANK")
    ranks = os.environ.get("SLOW_RANKS")
    if ranks is None or rank in ranks.split(","):
        module, name = TARGETS[os.environ["SLOW_PHASE"]]
        marker = os.environ["SLOW_MARKER"] + (f".{rank}" if rank is not None else "")
        slow = _slowed(getattr(module, name), int(os.environ["SLOW_CALL"]),
                       float(os.environ["SLOW_S"]), Path(marker))  # fmt: skip
        setattr(module, name, slow)
    sys.exit(main(sys.argv[1:]))
