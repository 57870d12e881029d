"""ngrpo: GRPO and N-GRPO (Semantic Neighbor Mixing) for reasoning language models.

The Python API (stable, typed names; imported on first use so that `import ngrpo` stays light):

    from ngrpo import TrainConfig, load_config, train, evaluate, read_metrics
    from ngrpo import Example, load_benchmark, grade, load_model, load_tokenizer, NgrpoError

See `ngrpo.api` for `train` / `evaluate` and docs/reference/python-api.md (what is public).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "train": "ngrpo.api",
    "evaluate": "ngrpo.api",
    "read_metrics": "ngrpo.api",
    "RewardFunc": "ngrpo.api",
    "TrainConfig": "ngrpo.config",
    "load_config": "ngrpo.config",
    "Example": "ngrpo.data",
    "load_benchmark": "ngrpo.data",
    "EvalResult": "ngrpo.evaluation",
    "grade": "ngrpo.rewards",
    "load_model": "ngrpo.models.load",
    "load_tokenizer": "ngrpo.models.load",
    "NgrpoError": "ngrpo.utils.errors",
}

__all__ = [
    "EvalResult", "Example", "NgrpoError", "RewardFunc", "TrainConfig", "__version__", "evaluate",
    "grade", "load_benchmark", "load_config", "load_model", "load_tokenizer", "read_metrics",
    "train",
]  # fmt: skip

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` imports lazily
    from ngrpo.api import RewardFunc, evaluate, read_metrics, train
    from ngrpo.config import TrainConfig, load_config
    from ngrpo.data import Example, load_benchmark
    from ngrpo.evaluation import EvalResult
    from ngrpo.models.load import load_model, load_tokenizer
    from ngrpo.rewards import grade
    from ngrpo.utils.errors import NgrpoError


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ngrpo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
