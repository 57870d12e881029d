"""A two-"node" CPU training run: two `torchrun --nnodes 2 --nproc_per_node 1` launchers on this
machine meet at a c10d rendezvous on localhost (gloo), as two machines of a cluster would, and
train DDP into one shared output directory. The result equals a one-process run of the same
global batch, and its checkpoint resumes exactly in one process (another node count). The
commands are the ones docs/guides/multi-node.md shows."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from launch import max_diff, weights_at

from ngrpo.trainer import checkpoint_dirs, read_metrics

CHECK = Path(__file__).with_name("ddp_train_check.py")  # weights equal on every process, per step
# Two optimizer steps per training step; generation_batch_size = one prompt's group, so one and
# two processes generate the same batches with the same seeds (the DDP and FSDP tests' setting).
COMMON = [
    "--config", "tiny_ngrpo", "train.prompts_per_step=4", "train.mini_batch_prompts=2",
    "rollout.num_generations=4", "rollout.max_completion_length=24",
    "rollout.generation_batch_size=4", "train.micro_batch_size=2", "train.entropy_coef=0.01",
    "eval.at_start=false", "eval.every=0", "logging.save_every=1", "logging.keep_last=3",
]  # fmt: skip
TIMEOUT_S = 300
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_process(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "ngrpo", *args], capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=ENV)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def _two_nodes(args: list[str]) -> None:
    """Two launchers, one per "node", each starting one worker; the c10d rendezvous on a free
    localhost port assigns the ranks. Both must finish within the timeout."""
    port = _free_port()
    launchers = []
    for node in range(2):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
            "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"localhost:{port}",
            "--rdzv_id", "ngrpo-two-nodes", "--rdzv_conf", "join_timeout=120",
            "--local_addr", "127.0.0.1", str(CHECK), *args,
        ]  # fmt: skip
        launchers.append(subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True, env=ENV,
                                          start_new_session=True))  # fmt: skip
        del node
    try:
        errors = [p.communicate(timeout=TIMEOUT_S)[1] for p in launchers]
    finally:
        for p in launchers:
            if p.poll() is None:  # a launcher that hangs: end its whole process group
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, err in zip(launchers, errors, strict=True):
        assert p.returncode == 0, err[-3000:]


@pytest.mark.numerics
def test_two_nodes_equal_one_process_and_resume_in_one(base_model_dir, tmp_path):
    """Same global batch on 1 process and on 2 nodes × 1 process: weights within 1e-5 (fp32;
    the gradients are averaged in another summation order), rewards and token counts exactly;
    the 2-node step-1 checkpoint resumed in one process gives the one-process step 2."""
    model = f"model.path={base_model_dir}"
    single, nodes = tmp_path / "single", tmp_path / "nodes"
    _one_process(["train", *COMMON, model, "train.steps=2", f"output_dir={single}"])
    _two_nodes(["train", *COMMON, model, "train.steps=2", f"output_dir={nodes}"])

    assert max_diff(weights_at(nodes, 2), weights_at(single, 2)) < 1e-5
    assert max_diff(weights_at(nodes, 2), weights_at(single, 1)) > 1e-5  # training moved them
    one = [r for r in read_metrics(single) if r["type"] == "train"]
    two = [r for r in read_metrics(nodes) if r["type"] == "train"]  # rank 0 alone writes
    assert [r["train/world_size"] for r in two] == [2.0, 2.0]
    for a, b in zip(one, two, strict=True):
        assert a["reward/mean"] == b["reward/mean"]
        assert a["rollout/tokens"] == b["rollout/tokens"]
        assert abs(a["loss/pg"] - b["loss/pg"]) < 1e-5

    # Another node count: the 2-node checkpoint of step 1, resumed by one process.
    resumed = tmp_path / "resumed"
    shutil.copytree(nodes, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000002")
    _one_process(["train", "--resume", str(resumed), "train.steps=2"])
    assert [p.name for p in checkpoint_dirs(resumed)] == ["step-000001", "step-000002"]
    assert max_diff(weights_at(resumed, 2), weights_at(single, 2)) < 1e-5
    assert [r["train/world_size"] for r in read_metrics(resumed) if r["type"] == "train"] == [
        2.0, 1.0,
    ]  # fmt: skip
