"""`ngrpo train` under a launcher (torchrun), checking after every step that all processes hold
bit-identical weights (gradients were synchronised), with every collective's tensors on the
process group's device (tests/collective_devices.py). With `PG_TIMEOUT_S` in the environment the
process group's collective timeout is that short, and with `SLOW_RANK0_S` rank 0's first
evaluation and first checkpoint save each take that much longer (the others must wait them out).
Used by tests/test_trainer_ddp.py:

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_train_check.py train ...
"""

from __future__ import annotations

import datetime
import os
import sys
import time

import torch
import torch.distributed as dist
from collective_devices import install  # tests/ is the script's directory

import ngrpo.trainer.loop
from ngrpo.cli import main

_train_step = ngrpo.trainer.loop._train_step


def _short_timeout(init, seconds: float):
    def init_process_group(*args, **kwargs):
        return init(*args, **{**kwargs, "timeout": datetime.timedelta(seconds=seconds)})

    return init_process_group


def _slow_once(work, seconds: float):
    """`work` that sleeps `seconds` first on its first call on rank 0."""
    calls = []

    def slow(*args, **kwargs):
        if not calls and dist.get_rank() == 0:
            time.sleep(seconds)
        calls.append(1)
        return work(*args, **kwargs)

    return slow


def _checked_step(run, *args) -> dict[str, float]:
    metrics = _train_step(run, *args)
    flat = torch.cat([p.detach().flatten() for p in run.policy.parameters()])  # (P,)
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if not all(torch.equal(gathered[0], other) for other in gathered):
        raise SystemExit("weights differ across processes after a training step")
    return metrics


if __name__ == "__main__":
    install()  # every collective's tensors on the process group's device
    ngrpo.trainer.loop._train_step = _checked_step
    if "PG_TIMEOUT_S" in os.environ:
        dist.init_process_group = _short_timeout(dist.init_process_group,
                                                 float(os.environ["PG_TIMEOUT_S"]))  # fmt: skip
    if "SLOW_RANK0_S" in os.environ:
        slow = float(os.environ["SLOW_RANK0_S"])
        ngrpo.trainer.loop._evaluate = _slow_once(ngrpo.trainer.loop._evaluate, slow)
        ngrpo.trainer.loop.save_checkpoint = _slow_once(ngrpo.trainer.loop.save_checkpoint, slow)
    sys.exit(main(sys.argv[1:]))
