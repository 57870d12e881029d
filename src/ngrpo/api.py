"""The Python API: train and evaluate from code, with your own reward functions.

    from ngrpo import TrainConfig, evaluate, train

    def short(completions, **kwargs):  # TRL's reward signature; dataset columns as keyword lists
        return [1.0 if len(c.split()) < 30 else 0.0 for c in completions]

    run_dir = train("tiny_grpo", overrides=["train.steps=5"], reward_funcs=["math", short],
                    reward_weights=[1.0, 0.2])
    result = evaluate(run_dir / "checkpoints" / "step-000005", "arith-id", n=4, limit=50)
    print(result.summary["pass@k"]["1"])

Everything here is a thin layer over the modules that do the work (`ngrpo.config`,
`ngrpo.trainer`, `ngrpo.evaluation`, `ngrpo.rewards`); these names are the stable surface and are
re-exported by `ngrpo` itself. Errors a user can fix raise `ngrpo.NgrpoError`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ngrpo.config import TrainConfig, apply_overrides, load_config, validate_config
from ngrpo.data import Example, load_benchmark
from ngrpo.evaluation import EvalResult
from ngrpo.trainer import Progress, read_metrics
from ngrpo.utils.errors import NgrpoError

RewardFunc = Callable[..., list[float | None]]

__all__ = ["RewardFunc", "evaluate", "read_metrics", "train"]


def _reward_pairs(
    reward_funcs: RewardFunc | str | Sequence[RewardFunc | str],
    reward_weights: Sequence[float] | None,
) -> list[tuple[RewardFunc | str, float]]:
    funcs = (
        [reward_funcs]
        if callable(reward_funcs) or isinstance(reward_funcs, str)
        else list(reward_funcs)
    )
    weights = [1.0] * len(funcs) if reward_weights is None else [float(w) for w in reward_weights]
    if len(weights) != len(funcs):
        raise NgrpoError(f"{len(funcs)} reward functions but {len(weights)} reward_weights")
    return list(zip(funcs, weights, strict=True))


def train(
    config: TrainConfig | str | os.PathLike | Mapping[str, Any] | None = None,
    *,
    overrides: Sequence[str] = (),
    reward_funcs: RewardFunc | str | Sequence[RewardFunc | str] | None = None,
    reward_weights: Sequence[float] | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Train (or resume) a run; returns its directory (`metrics.jsonl`, `checkpoints/`, ...).

    `config`: a `TrainConfig`, a YAML file, a shipped config name (`tiny_ngrpo`), a mapping of
    settings, or None for the defaults; `overrides` are `key.sub=value` strings applied on top.
    `reward_funcs` (as TRL's `GRPOTrainer`): a callable, a spec string (`math`, `module:function`,
    `file.py:function`) or a list of them, weighted by `reward_weights` (default 1.0 each); they
    replace `train.reward(s)` and are recorded in the run's config.yaml as specs. Callables must
    be defined at the top level of a module (or of a script under `if __name__ == "__main__":`):
    they run in a worker process with a deadline.
    """
    from ngrpo.rewards.specs import absolute_spec, spec_of
    from ngrpo.trainer import train as run_training

    if isinstance(config, TrainConfig):
        cfg = validate_config(apply_overrides(copy.deepcopy(config), overrides))  # caller's kept
    else:
        cfg = load_config(config, overrides)
    pairs = None
    if reward_funcs is not None:
        pairs = [
            (fn if callable(fn) else absolute_spec(fn), weight)
            for fn, weight in _reward_pairs(reward_funcs, reward_weights)
        ]
        cfg.train.rewards = [
            {"fn": spec_of(fn) if callable(fn) else fn, "weight": weight} for fn, weight in pairs
        ]
        validate_config(cfg)
    return run_training(cfg, resume=resume, progress=progress, reward_funcs=pairs)


def evaluate(
    model: str | os.PathLike | Any,
    data: str | os.PathLike | Sequence[Example],
    *,
    tokenizer: Any = None,
    n: int = 4,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 512,
    limit: int | None = None,
    grader: str = "math",
    seed: int = 0,
    device: str = "cpu",
) -> EvalResult:
    """Sample `n` answers per problem without exploration, grade them, and summarise.

    `model`: a model directory (`base` for the embedded model; a run's `checkpoints/step-N` or
    `best/`) or a loaded causal LM (then pass its `tokenizer`). `data`: a benchmark name, task
    split, JSONL / Parquet / CSV file, or a list of `Example`. Returns per-sample results and a
    summary with `mean@n`, `pass@k`, `maj@n` (equivalence classes) and `unparsed`.
    """
    from ngrpo.evaluation import evaluate as run_evaluation
    from ngrpo.models.load import load_model, load_tokenizer
    from ngrpo.rewards import GradingPool

    if isinstance(model, (str, os.PathLike)):
        tokenizer = tokenizer or load_tokenizer(model)
        model = load_model(model, device)
    elif tokenizer is None:
        raise NgrpoError("evaluate(model=<loaded model>) needs tokenizer=")
    examples = (
        load_benchmark(data, limit=limit).examples
        if isinstance(data, (str, os.PathLike))
        else list(data)[:limit]
    )
    with GradingPool() as pool:
        return run_evaluation(
            model, tokenizer, examples, n=n, temperature=temperature, top_p=top_p,
            max_new_tokens=max_new_tokens, seed=seed, grader=grader, pool=pool,
        )  # fmt: skip
