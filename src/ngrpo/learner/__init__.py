"""The learner: GRPO / N-GRPO updates on recorded rollouts.

- `update`: `update_policy`, one step's epochs of mini-batches and micro-batches (the loss is
  `ngrpo.method.losses.grpo_loss`);
- `batching`: `LearnerParams` and how a step's rollouts are cut (mini-batches, micro-batches
  trimmed to their longest row, the loss mask, FSDP padding);
- `scored`: log-probabilities without gradients over those micro-batches: the KL reference's and
  the recomputed π_old;
- `policy`: the policy module the learner scores through (soft inputs -> embed -> body -> head),
  which data-parallel wrappers and FSDP2 wrap whole;
- `scoring`: per-token log-probabilities and entropy of recorded sequences without full logits.
"""
