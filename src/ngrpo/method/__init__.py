"""The method: N-GRPO and GRPO as pure functions on tensors (DESIGN section 2).

No model loading, no configuration files, no loops: plain functions and small records that the
rollout engine and the learner compose.

- `soft_inputs`: the soft-input record and the one `embed` both rollout and learner call;
- `neighbors`: nearest tokens in an embedding table (brute-force oracle and cached index);
- `exploration`: the strategies (a registry, one small function each) and the mixing gate;
- `losses`: advantages, the clipped surrogate, KL estimators and loss aggregation.
"""
