"""Rewards: answer extraction, safe time-bounded equivalence, multiple choice, a registry by name.

    from ngrpo.rewards import REWARD_FUNCTIONS, grade_batch
    REWARD_FUNCTIONS["math"]("<think> ... </think> \\boxed{1/2}", "0.5")  # -> 1.0
    grade_batch(responses, golds, kind="math")  # -> list[Grade]; math-verify in a process pool

Modules: `extract` (which text is the answer), `equivalence` (quick check, screening, math-verify),
`pool` (worker processes with hard deadlines), `grader` (putting them together, the registry),
`classes` (equivalence classes for maj@n); training rewards: `specs` (the strings that name a
reward), `user` (a user function in a worker process), `functions` (the weighted reward set).
"""

from ngrpo.rewards.equivalence import GoldAnswer, normalize_gold
from ngrpo.rewards.extract import extract_answer, extract_choice, final_segment, last_boxed
from ngrpo.rewards.grader import (
    GRADERS,
    REWARD_FUNCTIONS,
    Grade,
    batch_rewards,
    get_grader,
    grade,
    grade_batch,
    reward_for,
)
from ngrpo.rewards.pool import GradingPool, default_pool

__all__ = [
    "GRADERS",
    "REWARD_FUNCTIONS",
    "GoldAnswer",
    "Grade",
    "GradingPool",
    "batch_rewards",
    "default_pool",
    "extract_answer",
    "extract_choice",
    "final_segment",
    "get_grader",
    "grade",
    "grade_batch",
    "last_boxed",
    "normalize_gold",
    "reward_for",
]
