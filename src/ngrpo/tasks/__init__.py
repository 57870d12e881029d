"""Embedded tasks. `arith` is the default: see `ngrpo.tasks.arith`."""

from ngrpo.tasks.arith import EVAL_SPLITS, SPLITS, Problem, generate, split_names

__all__ = ["EVAL_SPLITS", "SPLITS", "Problem", "generate", "split_names"]
