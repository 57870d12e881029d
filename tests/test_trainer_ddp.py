"""A two-process CPU training run (torchrun, gloo) of `ngrpo train`: world size, finite losses,
synchronised weights, rank-0-only files, no deadlock at evaluation or checkpoints; a stop signal
to one process stops both at the same safe point."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from ngrpo.data import load_benchmark
from ngrpo.tracking.completions import read_completions
from ngrpo.trainer import checkpoint_dirs, read_metrics

SCRIPT = Path(__file__).with_name("ddp_train_check.py")
SLOWED = Path(__file__).with_name("slow_phase_check.py")


def test_two_process_cpu_run(base_model_dir, tmp_path):
    """torchrun with 2 processes (gloo): world size 2, finite losses, identical weights on both
    processes after every step (checked inside by tests/ddp_train_check.py), evaluation shared by
    both processes and checkpoints on rank 0 without deadlock, also when rank 0's share of the
    first evaluation and its first save outlast the process group's collective timeout
    (shortened to 20 s: NCCL's 10 minutes)."""
    out = tmp_path / "ddp"
    overrides = [
        f"model.path={base_model_dir}", f"output_dir={out}", "train.steps=2",
        "train.prompts_per_step=2", "train.mini_batch_prompts=2", "rollout.num_generations=2",
        "rollout.max_completion_length=16", "train.entropy_coef=0.01", "exploration.mix_rate=0.3",
        "eval.every=1", "eval.at_start=true", "eval.limit=2", "eval.n=1", "eval.max_new_tokens=8",
        "eval.batch_size=1",  # one problem per chunk: each process decodes one of the two
        "data.eval_sets=arith-id", "logging.save_every=1",
    ]  # fmt: skip
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
        "2", str(SCRIPT), "train", "--config", "tiny_ngrpo", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PG_TIMEOUT_S": "20", "SLOW_RANK0_S": "25"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = read_metrics(out)  # written by rank 0 alone: no line twice
    assert [(r["step"], r["type"]) for r in lines] == [
        (0, "eval"), (1, "train"), (1, "eval"), (2, "train"), (2, "eval"),
    ]  # fmt: skip
    rows = [r for r in lines if r["type"] == "train"]
    assert all(r["train/world_size"] == 2.0 for r in rows)
    assert all(r["memory/peak_bytes"] > 10**8 for r in rows)  # the larger process's peak RSS
    assert all(math.isfinite(r["loss/pg"]) and math.isfinite(r["loss/total"]) for r in rows)
    assert rows[0]["rollout/tokens"] > 0 and any(r["actor/grad_norm"] > 0 for r in rows)
    assert [p.name for p in checkpoint_dirs(out)] == ["step-000001", "step-000002"]
    # the evaluations gathered both processes' shares (a problem without its samples fails the
    # summary): the start evaluation's completion file holds both problems
    evaluated = read_completions(out / "completions" / "eval-step-000000.jsonl")
    assert sorted(r["group"] for r in evaluated) == sorted(
        e.id for e in load_benchmark("arith-id", limit=2).examples
    )
    # the last step's completion file holds both processes' rollouts: its groups and the mixed
    # positions the step's (summed) metrics count
    written = read_completions(out / "completions" / "step-000002.jsonl")
    assert sorted((r["group"], r["sample"]) for r in written) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sum(len(r["mixed"]) for r in written) == rows[-1]["rollout/mixed_tokens"]


def _child_of_rank(launcher: int, rank: int) -> int:
    """The pid of the launcher's worker process of `rank` (read from /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # a process that ended meanwhile
        if parent == launcher and f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    raise AssertionError(f"no worker of rank {rank} under process {launcher}")


def test_a_signal_to_one_process_stops_both_at_the_same_safe_point(base_model_dir, tmp_path):
    """SIGTERM to rank 1 alone (a scheduler's signal that reached one node) while it is inside
    step 2's rollout (held there for 120 s by tests/slow_phase_check.py): rank 1 leaves it at
    once, rank 0 learns of it at the safe point after its rollout and rewards (the flag is
    all-reduced there), so both drop step 2 before any optimizer step, within seconds; rank 0
    writes step 1's checkpoint (save_every is 0: the stop wrote it) and both exit with 75.
    (That `--resume` redoes the step exactly is tested in one process, test_stop.py.)"""
    out = tmp_path / "ddp_stop"
    marker = tmp_path / "slow"
    overrides = [
        f"model.path={base_model_dir}", f"output_dir={out}", "train.steps=4",
        "train.prompts_per_step=2", "train.mini_batch_prompts=2", "rollout.num_generations=2",
        "rollout.max_completion_length=16", "train.entropy_coef=0.01", "eval.every=0",
        "eval.at_start=false", "logging.save_every=0",
    ]  # fmt: skip
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
              "2", str(SLOWED), "train"]  # fmt: skip
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "SLOW_PHASE": "rollout", "SLOW_CALL": "2",
        "SLOW_S": "120", "SLOW_RANKS": "1", "SLOW_MARKER": str(marker),
    }  # fmt: skip
    process = subprocess.Popen(
        [*launch, "--config", "tiny_ngrpo", *overrides], stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not marker.with_suffix(".1").exists():  # rank 1 is inside step 2's rollout
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "rank 1 did not reach step 2's rollout"
        time.sleep(0.05)
    signalled = time.monotonic()
    os.kill(_child_of_rank(process.pid, 1), signal.SIGTERM)
    stderr = process.communicate(timeout=240)[1]
    assert time.monotonic() - signalled < 60, "the stop waited for rank 1's rollout"
    lines = sorted(line for line in stderr.splitlines() if line.startswith("stopped: "))
    assert len(lines) == 2, stderr[-3000:]
    assert lines[0].startswith(
        "stopped: during step 2 of 4, in the rewards (a signal to another process); checkpoint "
    ), lines  # rank 0, at its safe point
    assert lines[1].startswith("stopped: during step 2 of 4, in the rollout (SIGTERM, "), lines
    assert re.search(r"exitcode\s*:\s*75", stderr)  # torchrun's report of a worker's exit
    assert [p.name for p in checkpoint_dirs(out)] == ["step-000001"]
    assert [r["step"] for r in read_metrics(out)] == [1]
