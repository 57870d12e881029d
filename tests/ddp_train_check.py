"""`ngrpo train` under a launcher (torchrun), checking after every step that all processes hold
bit-identical weights (gradients were synchronised). Used by tests/test_trainer.py:

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_train_check.py train ...
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

import ngrpo.trainer.loop
from ngrpo.cli import main

_train_step = ngrpo.trainer.loop._train_step


def _checked_step(run, *args) -> dict[str, float]:
    metrics = _train_step(run, *args)
    flat = torch.cat([p.detach().flatten() for p in run.policy.parameters()])  # (P,)
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if not all(torch.equal(gathered[0], other) for other in gathered):
        raise SystemExit("weights differ across processes after a training step")
    return metrics


if __name__ == "__main__":
    ngrpo.trainer.loop._train_step = _checked_step
    sys.exit(main(sys.argv[1:]))
