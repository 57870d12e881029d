"""Two processes with 8 and 48 loss tokens and 1 and 2 micro-batches: after `update_policy` the
weights equal one process's update on both batches (global token-mean normaliser), under DDP and
FSDP (where the process with fewer micro-batches runs a zero-gradient one to keep the all-gathers
paired). Checked in tests/dp_learner_check.py (torchrun, gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.numerics
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_update_as_one(strategy):
    script = Path(__file__).with_name("dp_learner_check.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(script), strategy]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "rank 0: ok, 1 micro-batches" in done.stdout
    assert "rank 1: ok, 2 micro-batches" in done.stdout
