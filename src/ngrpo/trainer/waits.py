"""Waiting for work some processes do while others idle (evaluation shares, rank 0's `best/` and
checkpoint files), without the process group's collective timeout.

Under several processes rank 0 alone writes files while the others wait, and the evaluation's
samples are gathered (a process may finish its share long before another). A plain
barrier on the training process group is a collective under its timeout (NCCL's default is 10
minutes, gloo's 30): an evaluation of a large benchmark or a slow checkpoint write outlasts it and
the watchdog ends the job. So the trainer waits on a separate gloo group made for that purpose
(`wait_group`, CPU only: NCCL's watchdog never sees it) whose timeout is `MAIN_WORK_TIMEOUT`. A
rank 0 that fails ends the job through the launcher (torchrun stops the other workers), so the
long timeout only bounds a rank 0 that hangs.
"""

from __future__ import annotations

from datetime import timedelta

import torch.distributed as dist

MAIN_WORK_TIMEOUT = timedelta(hours=24)
"""How long the processes wait for each other's evaluation shares or rank 0's writes."""


def wait_group(world: int):
    """The gloo group the trainer waits on (every process calls this once, at setup); None in a
    single process."""
    if world == 1 or not dist.is_initialized():
        return None
    return dist.new_group(backend="gloo", timeout=MAIN_WORK_TIMEOUT)


def wait_for_main(accelerator, group) -> None:
    """Every process waits here until all arrive, rank 0 from its evaluation or file writes (on
    `group`, see the module docstring; `accelerator.wait_for_everyone()` without one)."""
    if group is None:
        accelerator.wait_for_everyone()
        return
    dist.barrier(group=group)
