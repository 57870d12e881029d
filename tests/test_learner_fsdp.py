"""Two processes with 8 and 48 loss tokens and 1 and 2 micro-batches: after `update_policy` the
weights equal one process's update on both batches (global token-mean normaliser), under DDP and
FSDP (where the process with fewer micro-batches runs a zero-gradient one to keep the all-gathers
paired). Checked in tests/dp_learner_check.py (torchrun, gloo)."""

from __future__ import annotations

import pytest
from launch import run, torchrun


@pytest.mark.numerics
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_update_as_one(strategy):
    done = run(torchrun("dp_learner_check.py", strategy), timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "rank 0: ok, 1 micro-batches" in done.stdout
    assert "rank 1: ok, 2 micro-batches" in done.stdout
