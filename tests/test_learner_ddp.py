"""Token-budget micro-batches under data parallelism: processes with different numbers of
micro-batches still synchronise exactly once per mini-batch (checked in
tests/ddp_learner_check.py, two CPU processes over gloo)."""

from __future__ import annotations

import subprocess

from launch import run, torchrun


def _two_processes(script: str) -> subprocess.CompletedProcess:
    """`tests/SCRIPT` under torchrun with two processes (one CPU thread each)."""
    return run(torchrun(script), timeout=240)


def test_processes_with_different_micro_batch_counts_stay_in_step():
    done = _two_processes("ddp_learner_check.py")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0: ok, 1 micro-batches" in done.stdout
    assert "rank 1: ok, 2 micro-batches" in done.stdout


def test_ratio_extremes_and_weighted_means_combine_over_two_processes():
    done = _two_processes("ddp_metrics_check.py")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "rank 0: ok" in done.stdout and "rank 1: ok" in done.stdout
