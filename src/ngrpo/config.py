"""Typed training configuration: dataclasses, YAML loading, `key.sub=value` overrides, validation.

A config is a `TrainConfig` with two top-level fields (`seed`, `output_dir`) and one dataclass per
section: `model`, `data`, `rollout`, `exploration` (`ngrpo.exploration.ExplorationConfig`),
`train`, `eval`, `logging`. Every field is documented where it is declared.

Loading (`load_config`): a YAML file (a path, or the name of a config shipped in
`ngrpo/configs/`, e.g. `tiny_ngrpo`) is flattened to dotted keys, then the command-line overrides
(`train.steps=3`, `seed=5`) are applied in order, then the result is validated in one place
(`validate_config`). Values are coerced to the declared type of their field, both from YAML and from
override strings: `5e-7` is a float even though YAML 1.1 reads it as a string; `true/false/yes/no/
on/off/1/0` are booleans; `null`/`none`/`~` set an optional field to None; a list is YAML flow
(`[a, b]`) or comma-separated (`a,b`).

Other names for the same keys (`ALIASES`), accepted in YAML files and overrides alike:
- TRL `GRPOConfig` names as top-level shortcuts: `num_generations=8` sets `rollout.num_generations`,
  `beta=0.01` sets `train.beta`, `temperature` the rollout (not the evaluation) temperature, etc.
  Inside their section they are already the canonical names.
- verl's full keys, so settings from the authors' release map over literally:
  `actor_rollout_ref.rollout.n`, `actor_rollout_ref.actor.kl_loss_coef`, `data.train_batch_size`, …
- value aliases: `kl_estimator: low_var_kl` (verl) is `k3`; `loss_type: grpo | bnpo | dapo` (TRL)
  are `seq-mean-token-mean | token-mean | token-mean`. Stored canonically, so a saved config shows
  what runs.
Within one YAML file, setting a key twice through two names is an error; on the command line a later
override wins.

Required values: a string field set to `???` must be overridden (the R1 configs leave `model.path`
and `data.train` so); loading reports every such key with the override to add. `null` is never
"required": it is a real value of an optional field.

The resolved config is written with `save_config` and loads back to an equal `TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ngrpo.errors import NgrpoError
from ngrpo.exploration import ExplorationConfig
from ngrpo.lora import LoraConfig
from ngrpo.losses import IMPORTANCE_LEVELS, resolve_aggregation, resolve_kl_estimator
from ngrpo.rewards.functions import ERROR_POLICIES, check_spec
from ngrpo.rollout.engine import CUDA_GRAPHS, KV_CACHES

MISSING = "???"  # a required value: the user must override it
CONFIG_DIR = Path(__file__).parent / "configs"  # configs shipped with the package

DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,  # resolved by `resolve_device_dtype`
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
LONG_PROMPT_POLICIES = ("drop", "reject")


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """The policy (and, when `train.beta > 0`, the frozen reference: the same weights at start)."""

    path: str = "base"
    """Local Hugging Face model directory, or `base` for the embedded base model."""
    dtype: str = "auto"
    """Compute dtype: auto | float32 | bfloat16 | float16. `auto`: bfloat16 on a CUDA device that
    supports it, else float32 (see `resolve_device_dtype`)."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N. `auto`: CUDA when available, else CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% slower)."""
    attn_implementation: str | None = None
    """eager | sdpa | flash_attention_2 | flash_attention_3 | flex_attention; null: transformers'
    default for the model."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters (peft): `r` > 0 trains only adapters on a frozen base (`ngrpo.lora`)."""


@dataclass
class DataConfig:
    """Training prompts and held-out evaluation sets."""

    train: str = "arith-train"
    """An embedded task split (`arith-train`) or a path to a .jsonl / .parquet file."""
    train_limit: int | None = None
    """Use only the first N training problems (null: all)."""
    shuffle: bool = True
    """Shuffle the training prompts (with `seed`) once per pass over the data."""
    problem_field: str | None = None
    """Column holding the problem text; null: the first of `problem`, `question`, `prompt`."""
    answer_field: str | None = None
    """Column holding the gold answer; null: `answer` (GSM8K text after `####` is handled), else
    verl's `reward_model.ground_truth`."""
    eval_sets: list[str] = field(default_factory=lambda: ["arith-id", "arith-ood"])
    """Evaluation sets: embedded splits, shipped benchmark names (`math500`, …) or file paths."""
    max_prompt_length: int = 64
    """Prompt tokens (chat template and suffix included) allowed before `long_prompts` applies."""
    long_prompts: str = "drop"
    """drop (skip and count them in the log) | reject (stop with an error naming the prompt)."""
    prompt_suffix: str = ""
    """Text appended verbatim to each training problem before the chat template is applied (the
    shipped benchmark problems already end with a \\boxed{} instruction)."""


@dataclass
class RolloutConfig:
    """Sampling of the training responses (exploration is configured separately)."""

    num_generations: int = 8
    """G, responses per prompt (verl `actor_rollout_ref.rollout.n`)."""
    temperature: float = 1.0
    """Sampling temperature τ."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0: off)."""
    top_k: int = 0
    """Keep the k most probable tokens (0: off)."""
    max_completion_length: int = 48
    """Maximum response tokens; a longer response is truncated (see
    `train.mask_truncated_completions`)."""
    generation_batch_size: int | None = None
    """Sequences decoded together (null: all of a process's rollouts of a step at once). When it
    holds whole groups (a multiple of `num_generations`), each batch is generated with its own
    seed from its first prompt's global position, so rollouts do not depend on the number of
    processes (`ngrpo.sharding.data_parallel`)."""
    kv_cache: str = "auto"
    """Decoder: `static` (preallocated KV cache, finished rows compacted out, one prefill per
    prompt; Llama-family models), `dynamic` (the model's forward with a growing cache; any causal
    LM), `auto` (static where covered). Both sample the same tokens."""
    cuda_graphs: str = "auto"
    """Capture the static decoder's one-token step as CUDA graphs: `on`, `off`, `auto` (on when
    decoding on CUDA). The CPU path is the same code, eager."""


@dataclass
class GRPOConfig:
    """The `train` section: budget, optimiser and GRPO loss (DESIGN section 2, `ngrpo.losses`)."""

    steps: int = 40
    """Training steps; one step = one batch of prompts rolled out and learned from."""
    prompts_per_step: int = 8
    """Prompts per step (verl `data.train_batch_size`)."""
    mini_batch_prompts: int = 8
    """Prompts per optimizer step; must divide `prompts_per_step` (verl `ppo_mini_batch_size`)."""
    micro_batch_size: int = 16
    """Sequences per forward/backward pass; gradients accumulate over a mini-batch."""
    max_tokens_per_micro_batch: int | None = None
    """Token budget of a forward/backward pass (null: `micro_batch_size` rows). Rows are sorted by
    length and packed while rows × (longest prompt + longest response) fits; a longer row goes
    alone. Replaces `micro_batch_size` in the learner (verl `ppo_max_token_len_per_gpu` with
    `use_dynamic_bsz`)."""
    num_iterations: int = 1
    """PPO epochs over each step's rollouts (TRL `num_iterations`, verl `ppo_epochs`)."""
    learning_rate: float = 3e-5
    """AdamW peak learning rate."""
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up from 0, then constant (verl's default schedule)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this (null: no clipping)."""
    beta: float = 0.0
    """KL coefficient to the frozen reference policy; 0 loads no reference model."""
    kl_estimator: str = "k3"
    """k1 | k2 | k3 (aliases: kl, mse, low_var_kl)."""
    epsilon: float = 0.2
    """Lower clip range ε_low: the ratio is clipped at 1 − ε."""
    epsilon_high: float | None = None
    """Upper clip range ε_high (DAPO clip-higher); null: equal to `epsilon`."""
    loss_type: str = "token-mean"
    """Aggregation: token-mean | seq-mean-token-mean | seq-mean-token-sum (aliases grpo, bnpo,
    dapo)."""
    scale_rewards: bool = True
    """Divide advantages by the group's reward std (false: Dr. GRPO's mean-only advantages)."""
    importance_sampling_level: str = "token"
    """token (GRPO) | sequence (GSPO's length-normalised sequence ratio)."""
    entropy_coef: float = 0.0
    """Coefficient of the entropy bonus subtracted from the loss."""
    mask_truncated_completions: bool = False
    """Exclude responses cut at `max_completion_length` from the loss (DAPO overlong filtering)."""
    reward: str = "math"
    """Reward: a built-in grader (math | math_lenient | multiple_choice | exact), a user function
    `module:function`, or `path/to/file.py:function` (see `ngrpo.rewards.functions`). Ignored when
    `rewards` is set."""
    rewards: list[dict[str, Any]] = field(default_factory=list)
    """Weighted rewards, summed: `[{fn: math, weight: 1.0}, {fn: my.py:format_ok, weight: 0.2}]`
    (each `fn` as for `reward`; `weight` defaults to 1.0). Empty: `reward` alone, weight 1."""
    reward_timeout_s: float = 1.0
    """Deadline of a user reward function, in seconds per completion of a call (the built-in
    grader's per-answer bound); past it the worker process is killed."""
    reward_errors: str = "raise"
    """raise (stop with an error naming the function) | zero (0.0 for that call's rollouts,
    counted in `reward/<name>/errors`) when a user function fails, hangs or returns a bad value."""
    clip_ratio_c: float | None = None
    """verl's dual clip for negative advantages (> 1; null: off; 3.0 in the N-GRPO release)."""
    soft_input_grad: str = "all"
    """all | none: whether the candidate embedding rows of mixed positions receive gradient
    (none: as the release, whose soft embeddings are built without gradient write-back)."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal and draw more prompts until
    `prompts_per_step` groups are kept or `max_sampling_rounds` is reached."""
    max_sampling_rounds: int = 4
    """Cap on rollout rounds per step with dynamic sampling (each draws `prompts_per_step`
    prompts); at the cap the step trains on the groups it has."""
    strategy: str = "ddp"
    """Data-parallel strategy under several processes (verl `actor_rollout_ref.actor.strategy`):
    `ddp` (every process holds the whole model and optimizer) | `fsdp` (FSDP2: parameters,
    gradients and optimizer state sharded over the processes; `ngrpo.sharding`, README "Sharded
    training (FSDP2)"). A single process shards nothing: its run and checkpoints are the same
    either way. Not combined with LoRA (`model.lora.r > 0`) yet."""

    @property
    def clip_high(self) -> float:
        """ε_high with its default applied."""
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    def reward_items(self) -> list[tuple[str, float]]:
        """(spec, weight) of every reward component: `rewards`, or `reward` with weight 1."""
        if self.rewards:
            return [(item["fn"], float(item.get("weight", 1.0))) for item in self.rewards]
        return [(self.reward, 1.0)]


@dataclass
class EvalConfig:
    """Periodic evaluation on `data.eval_sets`, always without exploration."""

    every: int = 10
    """Evaluate every N training steps (0: never during training)."""
    at_start: bool = True
    """Also evaluate before the first step."""
    n: int = 4
    """Samples per problem (pass@k reported for k ≤ n)."""
    temperature: float = 0.6
    """Sampling temperature at evaluation."""
    top_p: float = 0.95
    """Nucleus threshold at evaluation."""
    max_new_tokens: int = 64
    """Maximum response tokens at evaluation."""
    limit: int | None = 100
    """Problems per evaluation set (null: all)."""
    best_metric: str | None = None
    """Metric (higher is better) that selects `best/`, e.g. `eval/arith-id/pass@1`; null: no
    `best/` checkpoint."""


@dataclass
class LoggingConfig:
    """Run-directory outputs besides `metrics.jsonl` (always written)."""

    save_every: int = 0
    """Write a checkpoint every N steps (0: only at the end)."""
    keep_last: int = 2
    """Checkpoints kept (older ones are deleted; `best/` is kept apart)."""
    tensorboard: bool = False
    """Also write TensorBoard event files (needs the `tensorboard` extra)."""


@dataclass
class TrainConfig:
    """Everything `ngrpo train` needs. Defaults: GRPO on the embedded task with the base model."""

    seed: int = 0
    """Seed of every random stream (data order, sampling, exploration)."""
    output_dir: str = "runs/ngrpo"
    """Run directory: config.yaml, metrics.jsonl, checkpoints."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    train: GRPOConfig = field(default_factory=GRPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


SOFT_INPUT_GRAD = ("all", "none")
STRATEGIES = ("ddp", "fsdp")  # train.strategy (ngrpo.sharding)

# Other names for keys (see the module docstring). Value: the canonical dotted key.
_TRL_SHORTCUTS = {
    "num_generations": "rollout.num_generations",
    "max_completion_length": "rollout.max_completion_length",
    "temperature": "rollout.temperature",
    "top_p": "rollout.top_p",
    "top_k": "rollout.top_k",
    "beta": "train.beta",
    "epsilon": "train.epsilon",
    "epsilon_high": "train.epsilon_high",
    "loss_type": "train.loss_type",
    "scale_rewards": "train.scale_rewards",
    "num_iterations": "train.num_iterations",
    "importance_sampling_level": "train.importance_sampling_level",
    "mask_truncated_completions": "train.mask_truncated_completions",
    "learning_rate": "train.learning_rate",
    "warmup_steps": "train.warmup_steps",
    "weight_decay": "train.weight_decay",
    "max_grad_norm": "train.max_grad_norm",
    "max_steps": "train.steps",
    "max_prompt_length": "data.max_prompt_length",
    "gradient_checkpointing": "model.gradient_checkpointing",
}
_VERL_KEYS = {
    "actor_rollout_ref.model.path": "model.path",
    "actor_rollout_ref.model.enable_gradient_checkpointing": "model.gradient_checkpointing",
    "actor_rollout_ref.rollout.n": "rollout.num_generations",
    "actor_rollout_ref.rollout.temperature": "rollout.temperature",
    "actor_rollout_ref.rollout.top_p": "rollout.top_p",
    "actor_rollout_ref.actor.kl_loss_coef": "train.beta",
    "actor_rollout_ref.actor.kl_loss_type": "train.kl_estimator",
    "actor_rollout_ref.actor.clip_ratio_low": "train.epsilon",
    "actor_rollout_ref.actor.clip_ratio_high": "train.epsilon_high",
    "actor_rollout_ref.actor.loss_agg_mode": "train.loss_type",
    "actor_rollout_ref.actor.clip_ratio_c": "train.clip_ratio_c",
    "actor_rollout_ref.actor.strategy": "train.strategy",
    "algorithm.filter_groups.enable": "train.dynamic_sampling",
    "algorithm.filter_groups.max_num_gen_batches": "train.max_sampling_rounds",
    "actor_rollout_ref.actor.entropy_coeff": "train.entropy_coef",
    "actor_rollout_ref.actor.ppo_epochs": "train.num_iterations",
    "actor_rollout_ref.actor.ppo_mini_batch_size": "train.mini_batch_prompts",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": "train.micro_batch_size",
    "actor_rollout_ref.actor.grad_clip": "train.max_grad_norm",
    "actor_rollout_ref.actor.optim.lr": "train.learning_rate",
    "actor_rollout_ref.actor.optim.lr_warmup_steps": "train.warmup_steps",
    "actor_rollout_ref.actor.optim.weight_decay": "train.weight_decay",
    "algorithm.norm_adv_by_std_in_grpo": "train.scale_rewards",
    "data.train_files": "data.train",
    "data.val_files": "data.eval_sets",
    "data.train_batch_size": "train.prompts_per_step",
    "data.max_response_length": "rollout.max_completion_length",
    "trainer.total_training_steps": "train.steps",
    "trainer.test_freq": "eval.every",
    "trainer.save_freq": "logging.save_every",
    "trainer.default_local_dir": "output_dir",
}
_SECTION_SHORTHANDS = {
    "train.clip_low": "train.epsilon",
    "train.clip_high": "train.epsilon_high",
    "train.kl_coef": "train.beta",
}
ALIASES: dict[str, str] = {**_TRL_SHORTCUTS, **_VERL_KEYS, **_SECTION_SHORTHANDS}

def _reward_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`train.rewards` entries as `{fn: str, weight: float}` (weight defaults to 1.0)."""
    out = []
    for i, item in enumerate(items):
        key = f"train.rewards[{i}]"
        if not isinstance(item, Mapping):
            raise NgrpoError(f"{key} must be a mapping {{fn: ..., weight: ...}}, got {item!r}")
        unknown = set(item) - {"fn", "weight"}
        if unknown:
            raise NgrpoError(f"{key}: unknown field {sorted(unknown)[0]!r}; use fn and weight")
        if not isinstance(item.get("fn"), str) or not item["fn"].strip():
            raise NgrpoError(
                f"{key} needs fn: a built-in name, module:function or file.py:function"
            )
        weight = _coerce(f"{key}.weight", item.get("weight", 1.0), float)
        out.append({"fn": item["fn"].strip(), "weight": weight})
    return out


# Fields whose values have aliases of their own: a function returning the canonical value.
_VALUE_CANONICALIZERS = {
    "train.kl_estimator": resolve_kl_estimator,
    "train.loss_type": resolve_aggregation,
    "train.rewards": _reward_items,
}

# Example values shown when a required key is missing.
_REQUIRED_EXAMPLES = {
    "model.path": "/path/to/hf_model_dir",
    "data.train": "/path/to/train.parquet",
}


def _sections() -> dict[str, type]:
    """Every section by dotted name, nested ones included (`model`, `model.lora`, `train`, ...)."""
    sections: dict[str, type] = {}

    def walk(cls: type, prefix: str) -> None:
        for name, tp in _field_types(cls).items():
            if _is_dataclass_type(tp):
                sections[f"{prefix}{name}"] = tp
                walk(tp, f"{prefix}{name}.")

    walk(TrainConfig, "")
    return sections


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@functools.cache
def _schema() -> dict[str, Any]:
    """Every canonical dotted key and its declared type."""
    schema: dict[str, Any] = {}

    def walk(cls: type, prefix: str) -> None:
        for name, tp in _field_types(cls).items():
            if _is_dataclass_type(tp):
                walk(tp, f"{prefix}{name}.")  # a section (nested ones: `model.lora.r`)
            else:
                schema[f"{prefix}{name}"] = tp

    walk(TrainConfig, "")
    return schema


def config_keys() -> list[str]:
    """Every canonical dotted key, in declaration order (for help texts and error messages)."""
    return list(_schema())


# ---------------------------------------------------------------------------------------------
# Coercion of values to the declared field type
# ---------------------------------------------------------------------------------------------

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NULL = {"null", "none", "~"}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """`value` (from YAML or an override string) as a `tp`, or an error naming `key`."""
    if value == MISSING:
        return MISSING
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in _NULL):
            return None
        return _coerce(key, value, inner[0])
    if value is None:
        raise NgrpoError(f"{key} cannot be null; expected {_type_name(tp)}")
    if origin is list:
        if isinstance(value, str):
            text = value.strip()
            value = yaml.safe_load(text) if text.startswith("[") else [
                part.strip() for part in text.split(",") if part.strip()
            ]
        if not isinstance(value, list):
            raise NgrpoError(f"{key} must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", item, args[0]) for i, item in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise NgrpoError(f"{key} must be a mapping (key: value), got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise NgrpoError(f"{key} must be a boolean (true/false), got {value!r}")
    if tp is int:
        number = value
        if isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:
                try:
                    number = float(value.strip())  # "1e3"
                except ValueError:
                    raise NgrpoError(f"{key} must be an integer, got {value!r}") from None
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise NgrpoError(f"{key} must be an integer, got {value!r}")
        if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
            raise NgrpoError(f"{key} must be an integer, got {value!r}")
        return int(number)
    if tp is float:
        if isinstance(value, bool):
            raise NgrpoError(f"{key} must be a number, got {value!r}")
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise NgrpoError(f"{key} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise NgrpoError(f"{key} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise NgrpoError(f"{key} must be a string, got {value!r} (quote it in YAML)")
        return value
    raise TypeError(f"config field {key} has an unsupported type {tp!r}")  # a bug in the schema


# ---------------------------------------------------------------------------------------------
# Applying dotted keys
# ---------------------------------------------------------------------------------------------


def _unknown_key(key: str, source: str) -> NgrpoError:
    known = [*_schema(), *ALIASES]
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    head = key.rpartition(".")[0]
    while head and head not in _sections():  # the innermost section the key names
        head = head.rpartition(".")[0]
    if close:
        hint = f"did you mean {' or '.join(close)}?"
    elif head in _sections():
        fields = [f.name for f in dataclasses.fields(_sections()[head])]
        hint = f"valid keys in section {head!r}: {', '.join(fields)}"
    else:
        top = [f.name for f in dataclasses.fields(TrainConfig)]
        hint = f"valid top-level keys and sections: {', '.join(top)}"
    return NgrpoError(f"unknown config key {key!r} ({source}); {hint}")


def _canonical_key(key: str, source: str) -> str:
    key = ALIASES.get(key, key)
    if key in _sections():
        raise NgrpoError(f"{key} is a section ({source}); set its keys, e.g. {key}.<key>=value")
    if key not in _schema():
        raise _unknown_key(key, source)
    return key


def _set(cfg: TrainConfig, key: str, value: Any) -> None:
    """Set canonical dotted `key` to `value`, coerced to the field's type."""
    value = _coerce(key, value, _schema()[key])
    if key in _VALUE_CANONICALIZERS and value != MISSING:
        _check_named(key, _VALUE_CANONICALIZERS[key], value)
        value = _VALUE_CANONICALIZERS[key](value)
    target: Any = cfg
    *path, name = key.split(".")
    for part in path:
        target = getattr(target, part)
    setattr(target, name, value)


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for raw_key, value in tree.items():
        key = f"{prefix}{raw_key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{key}."))
        elif value is None and key in _sections():
            continue  # an empty section in YAML (`exploration:` with nothing under it)
        else:
            flat[key] = value
    return flat


def apply_mapping(cfg: TrainConfig, tree: Mapping, source: str = "config") -> TrainConfig:
    """Apply a (nested or dotted) mapping of settings to `cfg` in place; returns `cfg`."""
    seen: dict[str, str] = {}
    for key, value in _flatten(tree).items():
        canonical = _canonical_key(key, source)
        if canonical in seen:
            raise NgrpoError(
                f"{seen[canonical]} and {key} both set {canonical} ({source}); keep one"
            )
        seen[canonical] = key
        _set(cfg, canonical, value)
    return cfg


def parse_override(text: str) -> tuple[str, str]:
    """`key.sub=value` -> (key, value). The value is kept as a string for type coercion."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise NgrpoError(f"override {text!r} must look like key.sub=value (e.g. train.steps=3)")
    return key.strip(), value


def apply_overrides(cfg: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Apply `key.sub=value` strings to `cfg` in place, in order (a later one wins); returns it."""
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, _canonical_key(key, f"override {text!r}"), value)
    return cfg


# ---------------------------------------------------------------------------------------------
# Loading and saving
# ---------------------------------------------------------------------------------------------


def shipped_configs() -> list[str]:
    """Names of the configs shipped in the package (`tiny_ngrpo`, …)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """An existing file path, or the shipped config of that name (with or without `.yaml`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    shipped = CONFIG_DIR / f"{stem}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise NgrpoError(
        f"config {str(name_or_path)!r} not found: it is neither a file nor a shipped config "
        f"({', '.join(shipped_configs())})"
    )


def _read_yaml(path: Path) -> Mapping:
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise NgrpoError(f"{path}: not valid YAML: {err}") from None
    if tree is None:
        return {}
    if not isinstance(tree, Mapping):
        raise NgrpoError(
            f"{path}: the top level must be a mapping of keys, got {type(tree).__name__}"
        )
    return tree


def load_config(
    source: str | os.PathLike | Mapping | None = None,
    overrides: Sequence[str] = (),
    validate: bool = True,
) -> TrainConfig:
    """Defaults ← YAML file / shipped name / mapping ← overrides, then `validate_config`."""
    cfg = TrainConfig()
    if isinstance(source, Mapping):
        apply_mapping(cfg, source)
    elif source is not None:
        path = resolve_config_path(source)
        apply_mapping(cfg, _read_yaml(path), source=str(path))
    apply_overrides(cfg, overrides)
    return validate_config(cfg) if validate else cfg


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as nested plain dicts (YAML / JSON ready)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically); `load_config(path)` gives it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# Resolved ngrpo config: `ngrpo train --config THIS_FILE` reproduces the run.\n"
    text += yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# Validation (the one place)
# ---------------------------------------------------------------------------------------------


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise NgrpoError(message)


def _check_int(key: str, value: Any, low: int) -> None:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value >= low,
        f"{key} must be an integer >= {low}, got {value!r}",
    )


def _check_choice(key: str, value: Any, choices: Sequence) -> None:
    _require(value in choices, f"{key}: {value!r} is not allowed; choose one of "
             + ", ".join("null" if c is None else str(c) for c in choices))


def _check_device(device: str) -> None:
    _require(DEVICE_PATTERN.fullmatch(device) is not None,
             f"model.device: {device!r} is not allowed; choose auto, cpu, cuda or cuda:N")


def _check_named(key: str, resolve: Any, value: str) -> None:
    """`value` must be known to a registry's `resolve` function (which raises NgrpoError)."""
    try:
        resolve(value)
    except NgrpoError as err:
        raise NgrpoError(f"{key}: {err}") from None


def _check_range(key: str, value: float, low: float, high: float, *, open_low: bool = False,
                 open_high: bool = False) -> None:
    above = value > low if open_low else value >= low
    below = value < high if open_high else value <= high
    interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    _require(above and below, f"{key} must be in {interval}, got {value!r}")


def missing_keys(cfg: TrainConfig) -> list[str]:
    """Keys still set to the required marker `???`."""
    flat = _flatten(config_to_dict(cfg))
    return [key for key, value in flat.items() if value == MISSING]


def validate_config(cfg: TrainConfig) -> TrainConfig:
    """Check every value; raise `NgrpoError` naming the key and what is allowed. Returns `cfg`.

    Checks that need the model (`exploration.mix_top_k` <= vocabulary size) or the file system
    (paths exist) belong to the code that loads them: call `cfg.exploration.validate(vocab_size)`
    once the model is loaded.
    """
    missing = missing_keys(cfg)
    if missing:
        example = " ".join(f"{k}={_REQUIRED_EXAMPLES.get(k, '<value>')}" for k in missing)
        raise NgrpoError(
            f"required setting{'s' if len(missing) > 1 else ''} not set: {', '.join(missing)}; "
            f"set {'them' if len(missing) > 1 else 'it'} on the command line, e.g. {example}"
        )

    _check_int("seed", cfg.seed, 0)
    _require(bool(cfg.output_dir.strip()), "output_dir must not be empty")

    m = cfg.model
    _require(bool(m.path.strip()), "model.path must not be empty (a model directory or `base`)")
    _check_choice("model.dtype", m.dtype, list(DTYPES))
    _check_device(m.device)
    _check_choice("model.attn_implementation", m.attn_implementation, [None, *ATTN_IMPLEMENTATIONS])
    m.lora.validate()

    d = cfg.data
    _require(bool(d.train.strip()), "data.train must not be empty (a task split or a file)")
    if d.train_limit is not None:
        _check_int("data.train_limit", d.train_limit, 1)
    _require(all(s.strip() for s in d.eval_sets), "data.eval_sets must not contain empty names")
    _check_int("data.max_prompt_length", d.max_prompt_length, 1)
    _check_choice("data.long_prompts", d.long_prompts, LONG_PROMPT_POLICIES)

    r = cfg.rollout
    _require(isinstance(r.num_generations, int) and r.num_generations >= 2,
             f"rollout.num_generations must be an integer >= 2 (group-relative advantages need "
             f"two responses per prompt), got {r.num_generations!r}")
    _require(r.temperature > 0, f"rollout.temperature must be > 0, got {r.temperature!r}")
    _check_range("rollout.top_p", r.top_p, 0.0, 1.0, open_low=True)
    _check_int("rollout.top_k", r.top_k, 0)
    _check_int("rollout.max_completion_length", r.max_completion_length, 1)
    if r.generation_batch_size is not None:
        _check_int("rollout.generation_batch_size", r.generation_batch_size, 1)
    _check_choice("rollout.kv_cache", r.kv_cache, KV_CACHES)
    _check_choice("rollout.cuda_graphs", r.cuda_graphs, CUDA_GRAPHS)

    cfg.exploration.validate()

    t = cfg.train
    _check_int("train.steps", t.steps, 1)
    _check_int("train.prompts_per_step", t.prompts_per_step, 1)
    _check_int("train.mini_batch_prompts", t.mini_batch_prompts, 1)
    _require(t.prompts_per_step % t.mini_batch_prompts == 0,
             f"train.mini_batch_prompts ({t.mini_batch_prompts}) must divide "
             f"train.prompts_per_step ({t.prompts_per_step})")
    _check_int("train.micro_batch_size", t.micro_batch_size, 1)
    if t.max_tokens_per_micro_batch is not None:
        _check_int("train.max_tokens_per_micro_batch", t.max_tokens_per_micro_batch, 1)
    _check_int("train.num_iterations", t.num_iterations, 1)
    _require(t.learning_rate > 0, f"train.learning_rate must be > 0, got {t.learning_rate!r}")
    _check_int("train.warmup_steps", t.warmup_steps, 0)
    _require(t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay!r}")
    _require(t.max_grad_norm is None or t.max_grad_norm > 0,
             f"train.max_grad_norm must be > 0 or null, got {t.max_grad_norm!r}")
    _require(t.beta >= 0, f"train.beta must be >= 0, got {t.beta!r}")
    for key in ("train.kl_estimator", "train.loss_type"):
        _check_named(key, _VALUE_CANONICALIZERS[key], getattr(t, key.split(".")[1]))
    _check_range("train.epsilon", t.epsilon, 0.0, 1.0, open_high=True)
    if t.epsilon_high is not None:
        _require(t.epsilon_high >= 0, f"train.epsilon_high must be >= 0, got {t.epsilon_high!r}")
    _check_choice("train.importance_sampling_level", t.importance_sampling_level,
                  list(IMPORTANCE_LEVELS))
    _reward_items(t.rewards)  # entries set from Python are checked as YAML ones are
    for i, (spec, _) in enumerate(t.reward_items()):
        key = f"train.rewards[{i}].fn" if t.rewards else "train.reward"
        _check_named(key, check_spec, spec)
    _require(t.reward_timeout_s > 0,
             f"train.reward_timeout_s must be > 0, got {t.reward_timeout_s!r}")
    _check_choice("train.reward_errors", t.reward_errors, list(ERROR_POLICIES))
    if t.clip_ratio_c is not None:
        _require(isinstance(t.clip_ratio_c, (int, float)) and not isinstance(t.clip_ratio_c, bool)
                 and t.clip_ratio_c > 1, f"train.clip_ratio_c must be > 1 or null (off), "
                 f"got {t.clip_ratio_c!r}")
    _check_choice("train.soft_input_grad", t.soft_input_grad, list(SOFT_INPUT_GRAD))
    _check_choice("train.strategy", t.strategy, list(STRATEGIES))
    _require(not (t.strategy == "fsdp" and m.lora.enabled),
             "train.strategy=fsdp with model.lora.r > 0 is not supported yet (LoRA keeps the base "
             "frozen: 7B adapters fit one GPU); use train.strategy=ddp for LoRA runs")
    _check_choice("train.dynamic_sampling", t.dynamic_sampling, [True, False])
    _check_int("train.max_sampling_rounds", t.max_sampling_rounds, 1)

    e = cfg.eval
    _check_int("eval.every", e.every, 0)
    _check_int("eval.n", e.n, 1)
    _require(e.temperature > 0, f"eval.temperature must be > 0, got {e.temperature!r}")
    _check_range("eval.top_p", e.top_p, 0.0, 1.0, open_low=True)
    _check_int("eval.max_new_tokens", e.max_new_tokens, 1)
    if e.limit is not None:
        _check_int("eval.limit", e.limit, 1)
    _require(not ((e.every > 0 or e.at_start) and not d.eval_sets),
             "evaluation is on (eval.every > 0 or eval.at_start) but data.eval_sets is empty; "
             "set data.eval_sets=NAME,... or eval.every=0 eval.at_start=false")
    _require(e.best_metric is None or e.best_metric.startswith("eval/"),
             f"eval.best_metric must name an evaluation metric (eval/<set>/<metric>), "
             f"got {e.best_metric!r}")

    lg = cfg.logging
    _check_int("logging.save_every", lg.save_every, 0)
    _check_int("logging.keep_last", lg.keep_last, 1)
    return cfg


# ---------------------------------------------------------------------------------------------
# Derived values and device resolution
# ---------------------------------------------------------------------------------------------


def derived_values(cfg: TrainConfig) -> dict[str, int]:
    """Quantities implied by the config, for the start-up summary and the LR schedule."""
    t, r = cfg.train, cfg.rollout
    rollouts = t.prompts_per_step * r.num_generations
    mini_batches = t.prompts_per_step // t.mini_batch_prompts
    mini_batch_sequences = t.mini_batch_prompts * r.num_generations
    optimizer_steps = mini_batches * t.num_iterations
    rows_per_micro_batch = t.micro_batch_size
    if t.max_tokens_per_micro_batch is not None:  # at full length: the most micro-batches
        full_row = cfg.data.max_prompt_length + r.max_completion_length
        rows_per_micro_batch = max(1, t.max_tokens_per_micro_batch // full_row)
    return {
        "rollouts_per_step": rollouts,
        "mini_batches_per_step": mini_batches,
        "sequences_per_mini_batch": mini_batch_sequences,
        "micro_batches_per_mini_batch": math.ceil(mini_batch_sequences / rows_per_micro_batch),
        "optimizer_steps_per_step": optimizer_steps,
        "total_optimizer_steps": optimizer_steps * t.steps,
        "total_rollouts": rollouts * t.steps,
        "max_response_tokens_per_step": rollouts * r.max_completion_length,
        "max_tokens_per_step": rollouts * (cfg.data.max_prompt_length + r.max_completion_length),
    }


def resolve_device_dtype(
    device: str, dtype: str, cuda_available: bool, bf16_supported: bool = True
) -> tuple[str, torch.dtype]:
    """(device, compute dtype) for the requested `model.device` / `model.dtype`.

    `auto` device: `cuda` when available, else `cpu`. `auto` dtype: bfloat16 on a CUDA device that
    supports it, float32 otherwise (CPU, or an older GPU: float16 would need loss scaling). An
    explicit request that cannot be met is an error, never a silent substitute.
    """
    _check_device(device)
    _check_choice("model.dtype", dtype, list(DTYPES))
    if device == "auto":
        device = "cuda" if cuda_available else "cpu"
    elif device.startswith("cuda") and not cuda_available:
        raise NgrpoError(f"model.device={device} but CUDA is not available; use model.device=cpu")
    on_cuda = device.startswith("cuda")
    if dtype == "auto":
        return device, torch.bfloat16 if on_cuda and bf16_supported else torch.float32
    if dtype == "bfloat16" and on_cuda and not bf16_supported:
        raise NgrpoError("model.dtype=bfloat16 but this GPU does not support it; use float32")
    return device, DTYPES[dtype]
