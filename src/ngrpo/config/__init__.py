"""Typed training configuration: dataclasses, YAML loading, `key.sub=value` overrides, validation.

A config is a `TrainConfig` with two top-level fields (`seed`, `output_dir`) and one dataclass per
section: `model`, `data`, `rollout`, `exploration` (`ngrpo.method.exploration.ExplorationConfig`),
`train`, `eval`, `logging`. Every field is documented where it is declared.

Loading (`load_config`): a YAML file (a path, or the name of a config shipped in
`ngrpo/configs/`, e.g. `tiny_ngrpo`) is flattened to dotted keys, then the command-line overrides
(`train.steps=3`, `seed=5`) are applied in order, then the result is validated in one place
(`validate_config`). Values are coerced to the declared type of their field; TRL and verl names
are accepted for the same keys (`ALIASES`); a string field set to `???` must be overridden. The
resolved config is written with `save_config` and loads back to an equal `TrainConfig`.

The parts, each importing only the ones listed before it:
- `schema`: the section dataclasses and `TrainConfig`, the required marker `MISSING`, the dotted
  keys (`config_keys`), `config_to_dict`, `set_field` (a dotted key's field, set as given);
- `coercion`: a value from YAML or an override string as its field's declared type;
- `aliases`: TRL / verl / shorthand key aliases (`ALIASES`) and value canonicalisers;
- `validation`: `validate_config` and its checks, `resolve_defaults` (`output_dir` and
  `data.eval_sets` following the method and the data), `missing_keys`, `derived_values`,
  `resolve_device_dtype`;
- `loading`: `load_config`, `apply_mapping`, `apply_overrides`, shipped configs (`CONFIG_DIR`),
  `save_config`.
"""

from ngrpo.config.aliases import ALIASES
from ngrpo.config.loading import (
    CONFIG_DIR,
    apply_mapping,
    apply_overrides,
    load_config,
    parse_override,
    resolve_config_path,
    save_config,
    shipped_configs,
)
from ngrpo.config.schema import (
    MISSING,
    DataConfig,
    EvalConfig,
    GRPOConfig,
    LoggingConfig,
    ModelConfig,
    RolloutConfig,
    TrainConfig,
    config_keys,
    config_to_dict,
    set_field,
)
from ngrpo.config.validation import (
    ATTN_IMPLEMENTATIONS,
    DEVICE_PATTERN,
    DTYPES,
    LONG_PROMPT_POLICIES,
    SOFT_INPUT_GRAD,
    STRATEGIES,
    derived_values,
    method_name,
    missing_keys,
    resolve_defaults,
    resolve_device_dtype,
    validate_config,
)

__all__ = [
    "ALIASES", "ATTN_IMPLEMENTATIONS", "CONFIG_DIR", "DEVICE_PATTERN", "DTYPES",
    "LONG_PROMPT_POLICIES", "MISSING", "SOFT_INPUT_GRAD", "STRATEGIES", "DataConfig", "EvalConfig",
    "GRPOConfig", "LoggingConfig", "ModelConfig", "RolloutConfig", "TrainConfig", "apply_mapping",
    "apply_overrides", "config_keys", "config_to_dict", "derived_values", "load_config",
    "method_name", "missing_keys", "parse_override", "resolve_config_path", "resolve_defaults",
    "resolve_device_dtype", "save_config", "set_field", "shipped_configs", "validate_config",
]  # fmt: skip
