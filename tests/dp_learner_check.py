"""Two processes (torchrun, gloo) run `update_policy` on batches of very different token counts
with token-budget micro-batches (rank 0: ONE micro-batch, rank 1: TWO), under `ddp` or `fsdp`
(argv[1]); afterwards the full weights equal ONE process's update on both batches together
(within 1e-5): the global token-mean normaliser, and under FSDP the padding micro-batch that keeps
the parameter all-gathers paired. Used by tests/test_learner_fsdp.py:

    python -m torch.distributed.run --nproc_per_node 2 tests/dp_learner_check.py fsdp
"""

from __future__ import annotations

import copy
import sys

import torch
from accelerate import Accelerator
from collective_devices import install  # tests/ is the script's directory

from ngrpo.bench.learner import synthetic_rollouts, vocab_model
from ngrpo.learner.policy import SoftInputPolicy
from ngrpo.learner.update import LearnerParams, micro_batches, update_policy
from ngrpo.rollout.batch import concat_batches
from ngrpo.sharding import FsdpStrategy, device_mesh, shard_policy

PROMPT, LENGTH, BUDGET = 8, 24, 30


def _batch(model, rank: int):
    batch = synthetic_rollouts(model, 2, PROMPT, LENGTH, seed=rank)
    if rank == 0:  # short rows: 2 × (8 + 4) ≤ 30, one micro-batch; 8 tokens against 48
        batch.response_mask[:, 4:] = 0
    return batch


def main(strategy: str) -> int:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    model = vocab_model(300).train()  # same seed: same weights on every process
    reference = copy.deepcopy(model)
    batches = [_batch(model, r) for r in (0, 1)]
    batch = batches[rank]
    counts = micro_batches(batch.prompt_mask.sum(-1), batch.response_mask.sum(-1), 2, BUDGET)
    if len(counts) != (1 if rank == 0 else 2):
        raise SystemExit(f"rank {rank}: setup gives {len(counts)} micro-batches")
    module = SoftInputPolicy(model)
    params = LearnerParams(group_size=2, mini_batch_groups=1, micro_batch_size=2,
                           max_tokens_per_micro_batch=BUDGET, max_grad_norm=None)  # fmt: skip
    if strategy == "fsdp":
        shard_policy(module, torch.float32, device_mesh(2, "cpu"))
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        wrapped, runner = module, FsdpStrategy(accelerator)
    else:
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        wrapped, optimizer = accelerator.prepare(module, optimizer)
        runner = accelerator
    metrics = update_policy(wrapped, optimizer, None, batch, torch.tensor([1.0, -1.0]), params,
                            accelerator=runner)  # fmt: skip
    if metrics["train/optimizer_steps"] != 1.0:
        raise SystemExit(f"rank {rank}: no optimizer step ({metrics})")
    full = {n: p.detach() for n, p in module.named_parameters()}
    if strategy == "fsdp":
        full = {n: p.full_tensor() for n, p in full.items()}
    # one process, both batches in one mini-batch
    together = concat_batches(batches, pad_token_id=0)
    one = torch.optim.SGD(reference.parameters(), lr=0.1)
    update_policy(reference, one, None, together, torch.tensor([1.0, -1.0, 1.0, -1.0]),
                  LearnerParams(group_size=2, mini_batch_groups=2, micro_batch_size=4,
                                max_grad_norm=None))  # fmt: skip
    moved = 0.0
    for name, param in reference.named_parameters():
        got = full["model." + name]
        if not torch.allclose(got, param.detach(), rtol=0, atol=1e-5):
            raise SystemExit(f"rank {rank}: {name} differs from the 1-process update by "
                             f"{float((got - param).abs().max()):.2e}")  # fmt: skip
        moved = max(moved, float((got - vocab_model(300).get_parameter(name)).abs().max()))
    if not moved > 1e-4:
        raise SystemExit("the update changed nothing")
    print(f"rank {rank}: ok, {len(counts)} micro-batches", flush=True)
    return 0


if __name__ == "__main__":
    install()  # every collective's tensors on the process group's device
    sys.exit(main(sys.argv[1]))
