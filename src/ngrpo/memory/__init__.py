"""Memory planning (`ngrpo plan`) and measurement (`memory/peak_bytes`).

- `ngrpo.memory.shape`: `ModelShape`, parameter and LoRA-adapter counts of a Llama-family decoder;
- `ngrpo.memory.estimate`: `estimate(MemoryInputs) -> MemoryPlan`, the pure estimator (its
  docstring says what is modelled and what is approximate);
- `ngrpo.memory.from_config`: the inputs of a training config (`shape_for_config`,
  `inputs_from_config`);
- `ngrpo.memory.usage`: the peak memory this process really held (the train metric; `PeakMemory`
  for one block, in the benchmarks).
"""

from ngrpo.memory.estimate import (
    CAPACITIES_GB,
    PHASES,
    Component,
    MemoryInputs,
    MemoryPlan,
    estimate,
)
from ngrpo.memory.from_config import inputs_from_config, shape_for_config
from ngrpo.memory.shape import LORA_TARGETS, ModelShape

__all__ = [
    "CAPACITIES_GB", "LORA_TARGETS", "PHASES", "Component", "MemoryInputs", "MemoryPlan",
    "ModelShape", "estimate", "inputs_from_config", "shape_for_config",
]  # fmt: skip
