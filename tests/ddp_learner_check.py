"""Two processes (torchrun, gloo) run `update_policy` with token-budget micro-batches such that
rank 0 packs its rows into ONE micro-batch and rank 1 needs TWO: no deadlock, and afterwards both
hold bit-identical, changed weights (the gradients were all-reduced). Used by
tests/test_learner_ddp.py:

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_learner_check.py
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from accelerate import Accelerator
from collective_devices import install  # tests/ is the script's directory

from ngrpo.bench.learner import synthetic_rollouts, vocab_model
from ngrpo.learner.policy import SoftInputPolicy
from ngrpo.learner.update import LearnerParams, micro_batches, update_policy

PROMPT, LENGTH, BUDGET = 8, 24, 30


def main() -> int:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    model = vocab_model(300).train()  # same seed: same weights on every process
    start = torch.cat([p.detach().flatten() for p in model.parameters()])
    batch = synthetic_rollouts(model, 2, PROMPT, LENGTH, seed=rank)
    if rank == 0:  # short rows: 2 × (8 + 4) ≤ 30, one micro-batch
        batch.response_mask[:, 4:] = 0
    counts = micro_batches(batch.prompt_mask.sum(-1), batch.response_mask.sum(-1), 2, BUDGET)
    if len(counts) != (1 if rank == 0 else 2):
        raise SystemExit(f"rank {rank}: setup gives {len(counts)} micro-batches")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    wrapped, optimizer = accelerator.prepare(SoftInputPolicy(model), optimizer)
    params = LearnerParams(group_size=2, mini_batch_groups=1, micro_batch_size=2,
                           max_tokens_per_micro_batch=BUDGET)  # fmt: skip
    metrics = update_policy(wrapped, optimizer, None, batch, torch.tensor([1.0, -1.0]), params,
                            accelerator=accelerator)  # fmt: skip
    if metrics["train/optimizer_steps"] != 1.0:
        raise SystemExit(f"rank {rank}: no optimizer step ({metrics})")
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])  # (P,)
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if not all(torch.equal(gathered[0], other) for other in gathered):
        raise SystemExit("weights differ across processes after the update")
    if not (flat - start).abs().max() > 0:
        raise SystemExit("the update changed nothing")
    print(f"rank {rank}: ok, {len(counts)} micro-batches", flush=True)
    return 0


if __name__ == "__main__":
    install()  # every collective's tensors on the process group's device
    sys.exit(main())
