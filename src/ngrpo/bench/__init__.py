"""Benchmarks behind `ngrpo bench`: plain functions returning JSON-ready dicts.

- `rollout`: the rollout engine vs `model.generate` on a model directory, and the neighbour lookup;
- `rollout_scale`: the rollout engine at a real model's shape (random weights, no hub);
- `learner`: one learner update at a real shape (random weights), and soft inputs vs token ids.
"""
