"""A two-process CPU training run (torchrun, gloo) of `ngrpo train`: world size, finite losses,
synchronised weights, rank-0-only files, no deadlock at evaluation or checkpoints."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from ngrpo.trainer import checkpoint_dirs, read_metrics


def test_two_process_cpu_run(base_model_dir, tmp_path):
    """torchrun with 2 processes (gloo): world size 2, finite losses, identical weights on both
    processes after every step (checked inside by tests/ddp_train_check.py), eval and
    checkpoints on rank 0 without deadlock."""
    out = tmp_path / "ddp"
    overrides = [
        f"model.path={base_model_dir}", f"output_dir={out}", "train.steps=2",
        "train.prompts_per_step=2", "train.mini_batch_prompts=2", "rollout.num_generations=2",
        "rollout.max_completion_length=16", "train.entropy_coef=0.01", "exploration.mix_rate=0.3",
        "eval.every=1", "eval.at_start=true", "eval.limit=2", "eval.n=1", "eval.max_new_tokens=8",
        "data.eval_sets=arith-id", "logging.save_every=1",
    ]  # fmt: skip
    script = Path(__file__).with_name("ddp_train_check.py")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
        "2", str(script), "train", "--config", "tiny_ngrpo", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
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
