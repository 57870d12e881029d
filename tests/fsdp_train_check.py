"""`ngrpo train` under torchrun with `train.strategy=fsdp`, checking after every step, on every
process, that the rollout copy holds exactly the sharded policy's full parameters and that the
replay invariant held (`actor/replay_logp_err` ≤ 1e-4 on this process, before the metrics are
averaged). With `KILL_IN_SAVE=N` in the environment every process kills itself (SIGKILL) inside
the N-th checkpoint save, right after its optimizer shards are written to the staging directory.
Used by tests/test_trainer_fsdp.py:

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_train_check.py train ...
"""

from __future__ import annotations

import os
import signal
import sys

import torch
import torch.distributed.checkpoint
from collective_devices import install  # tests/ is the script's directory

import ngrpo.learner.update
import ngrpo.trainer.loop
import ngrpo.trainer.step
from ngrpo.cli import main

_train_step = ngrpo.trainer.loop._train_step
_update_policy = ngrpo.trainer.step.update_policy


def _checked_update(*args, **kwargs) -> dict[str, float]:
    metrics = _update_policy(*args, **kwargs)
    err = metrics[ngrpo.learner.update.REPLAY_ERR]
    if not err <= 1e-4:
        raise SystemExit(f"replay invariant broken under FSDP: {err}")
    return metrics


def _checked_step(run, *args) -> dict[str, float]:
    if not run.sharded:
        raise SystemExit("train.strategy=fsdp did not shard the policy")
    if run.ref_model is not None:
        from torch.distributed.fsdp import FSDPModule

        if not isinstance(run.ref_model, FSDPModule):
            raise SystemExit("train.strategy=fsdp did not shard the KL reference")
    metrics = _train_step(run, *args)
    copy = dict(run.policy.named_parameters())
    for name, param in run.model.named_parameters():
        full = param.detach().full_tensor()
        if not torch.equal(copy[name.removeprefix("model.")], full.to(torch.float32)):
            raise SystemExit(f"the rollout copy of {name} is stale after a step")
    return metrics


def _killed_in_save(count: int):
    """`torch.distributed.checkpoint.save` that kills this process once its `count`-th call has
    written the optimizer shards (the checkpoint directory is not in place yet)."""
    real, calls = torch.distributed.checkpoint.save, []

    def save(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == count:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    return save


if __name__ == "__main__":
    install()  # every collective's tensors on the process group's device
    ngrpo.trainer.loop._train_step = _checked_step
    ngrpo.trainer.step.update_policy = _checked_update
    if "KILL_IN_SAVE" in os.environ:
        torch.distributed.checkpoint.save = _killed_in_save(int(os.environ["KILL_IN_SAVE"]))
    sys.exit(main(sys.argv[1:]))
