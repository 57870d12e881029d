"""Starting the multi-process checks: `ngrpo` in one process or a check script under torchrun
(`--standalone`, one CPU thread per process), and reading the runs' checkpointed weights back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from ngrpo.trainer import checkpoint_dirs

HERE = Path(__file__).parent


def torchrun(script: str | Path, *args: str, processes: int = 2) -> list[str]:
    """The command line that starts `tests/SCRIPT ARGS` on `processes` local processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(processes), str(HERE / script), *args]  # fmt: skip


def run(command: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess:
    """`command` to its end, one CPU thread per process, with `env` added to the environment."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def run_ngrpo(
    args: list[str], processes: int, check: str, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """`ngrpo ARGS` in one process, or through the torchrun check script `check` (which runs
    `ngrpo ARGS` and checks inside). Fails the test unless it succeeds; with `env` added it may
    fail, and the caller checks."""
    if processes == 1:
        command = [sys.executable, "-m", "ngrpo", *args]
    else:
        command = torchrun(check, *args, processes=processes)
    done = run(command, timeout, **env)
    assert env or done.returncode == 0, done.stderr[-3000:]
    return done


def weights_at(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step-{step:06d}" / "model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def cut_after(source: Path, target: Path, keep: int) -> Path:
    """A copy of a run directory with checkpoints after step `keep` removed (as if killed)."""
    shutil.copytree(source, target)
    for ckpt in checkpoint_dirs(target):
        if int(ckpt.name.split("-")[1]) > keep:
            shutil.rmtree(ckpt)
    return target
