"""Benchmarks behind `ngrpo bench`: plain functions returning JSON-ready dicts, one module each.

- `rollout`: the rollout engine vs `model.generate` on a model directory, and the neighbour lookup;
- `rollout_scale`: the rollout engine at a real model's shape (random weights, no hub);
- `learner`: the learner benchmark: soft inputs vs token ids on a model directory, and one update
  at a real shape (random weights);
- `timing`: device synchronisation and medians, shared by the three.
"""
