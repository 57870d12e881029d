"""Sharded data parallelism (`train.strategy: fsdp`, FSDP2) and what data parallelism shares.

- `data_parallel`: the global loss normaliser and world-size-invariant rollout seeds (pure);
- `strategy`: `device_mesh` and `shard_policy`, `FsdpStrategy` (the learner's backward / no_sync /
  clipping / reductions), `RolloutCopy` (full parameters for the rollout, evaluation and neighbour
  index);
- `checkpoint`: sharded checkpoints (Hugging Face directory + DCP optimizer state), cross-loading
  with 1-process checkpoints, the restricted reader of DCP metadata.
"""

from ngrpo.sharding.strategy import FsdpStrategy, RolloutCopy, device_mesh, shard_policy

__all__ = ["FsdpStrategy", "RolloutCopy", "device_mesh", "shard_policy"]
