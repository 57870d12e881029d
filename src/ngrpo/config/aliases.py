"""Other names for config keys and values (`ALIASES`), accepted in YAML files and overrides alike.

- TRL `GRPOConfig` names as top-level shortcuts: `num_generations=8` sets `rollout.num_generations`,
  `beta=0.01` sets `train.beta`, `temperature` the rollout (not the evaluation) temperature, etc.
  Inside their section they are already the canonical names.
- verl's full keys, so settings from the authors' release map over literally:
  `actor_rollout_ref.rollout.n`, `actor_rollout_ref.actor.kl_loss_coef`, `data.train_batch_size`, …
- value aliases: `kl_estimator: low_var_kl` (verl) is `k3`; `loss_type: grpo | bnpo | dapo` (TRL)
  are `seq-mean-token-mean | token-mean | token-mean`; `rollout_correction: token | sequence |
  null` (verl's `rollout_is`) are `token_truncate | sequence_truncate | none`; trackers
  (`report_to`, verl's `trainer.logger`) are lower-cased, `console` / `none` dropped. Stored
  canonically, so a saved config shows what runs (`_VALUE_CANONICALIZERS`, applied by
  `ngrpo.config.loading`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ngrpo.config.coercion import _coerce
from ngrpo.method.losses import resolve_aggregation, resolve_kl_estimator
from ngrpo.utils.errors import NgrpoError

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
    "vllm_importance_sampling_correction": "train.rollout_correction_enabled",
    "vllm_importance_sampling_mode": "train.rollout_correction",
    "vllm_importance_sampling_clip_max": "train.rollout_correction_cap",
    "vllm_importance_sampling_clip_min": "train.rollout_correction_min",
    "vllm_importance_sampling_cap": "train.rollout_correction_cap",  # TRL's deprecated name
    "report_to": "logging.report_to",
    "run_name": "logging.run_name",
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
    "algorithm.rollout_correction.rollout_is": "train.rollout_correction",
    "algorithm.rollout_correction.rollout_is_threshold": "train.rollout_correction_cap",
    "trainer.logger": "logging.report_to",
    "trainer.project_name": "logging.project",
    "trainer.experiment_name": "logging.run_name",
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


# The trackers `logging.report_to` takes (`ngrpo.tracking.BACKENDS` holds one adapter each).
TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow", "swanlab")
_NO_TRACKER = ("console", "none", "")  # verl's console logger (always on here), TRL's "none"


def _report_to(names: list[str]) -> list[str]:
    """Tracker names, lower-cased, without `console` / `none`, each once; an unknown one (TRL's
    `all` included: name them) is an error listing the choices."""
    out: list[str] = []
    for raw in names:
        name = str(raw).strip().lower()
        if name in _NO_TRACKER or name in out:
            continue
        if name not in TRACKERS:
            raise NgrpoError(
                f"unknown tracker {raw!r}; choose from {', '.join(TRACKERS)} (or console)"
            )
        out.append(name)
    return out


def _rollout_correction(value: Any) -> str:
    """verl's `rollout_is` values (token | sequence, truncating; null: off) as our modes."""
    if value == "null":  # a command-line override: `...rollout_is=null`
        return "none"
    return {"token": "token_truncate", "sequence": "sequence_truncate"}.get(value, value)


# Fields where a null (YAML, or `null` / `none` / `~` on the command line) means a value
# (verl's `rollout_is: null` is off; `train.rewards=null` clears the list, as `[]` does).
_NULL_MEANS = {"train.rollout_correction": "none", "train.rewards": []}

# Fields whose values have aliases of their own: a function returning the canonical value.
_VALUE_CANONICALIZERS = {
    "train.kl_estimator": resolve_kl_estimator,
    "train.loss_type": resolve_aggregation,
    "train.rewards": _reward_items,
    "train.rollout_correction": _rollout_correction,
    "logging.report_to": _report_to,
}
