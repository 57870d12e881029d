"""Validation of a config, in one place (`validate_config`), and what a valid config implies.

Every check raises `NgrpoError` naming the key and what is allowed. Required values: a string
field set to `???` must be overridden (the R1 configs leave `model.path` and `data.train` so);
validation reports every such key with the override to add. `null` is never "required": it is a
real value of an optional field.

Defaults that follow other settings are filled in here too (`resolve_defaults`, the first thing
`validate_config` does): `output_dir: null` becomes `runs/<method>`, `data.eval_sets: null` the
embedded evaluation splits when training on the embedded task, else none. The resolved values are
what `config.yaml` records.

Also here: `derived_values` (tokens per step, total rollouts, … for the start-up summary and the
LR schedule) and `resolve_device_dtype` (`auto` device / dtype to what runs).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch

from ngrpo.config.aliases import _VALUE_CANONICALIZERS, _reward_items
from ngrpo.config.schema import MISSING, TrainConfig, _flatten, config_to_dict
from ngrpo.learner.update import OLD_LOGPROBS
from ngrpo.method.losses import IMPORTANCE_LEVELS
from ngrpo.method.rollout_correction import CORRECTIONS, MASKED
from ngrpo.rewards.functions import ERROR_POLICIES
from ngrpo.rewards.specs import check_spec
from ngrpo.rollout.decoders import CUDA_GRAPHS, KV_CACHES
from ngrpo.rollout.step import PRECISIONS
from ngrpo.utils.errors import NgrpoError

DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,  # resolved by `resolve_device_dtype`
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
LONG_PROMPT_POLICIES = ("drop", "reject")
SOFT_INPUT_GRAD = ("all", "none")
STRATEGIES = ("ddp", "fsdp")  # train.strategy (ngrpo.sharding)

# Example values shown when a required key is missing.
_REQUIRED_EXAMPLES = {
    "model.path": "/path/to/hf_model_dir",
    "data.train": "/path/to/train.parquet",
}


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
    _require(
        value in choices,
        f"{key}: {value!r} is not allowed; choose one of "
        + ", ".join("null" if c is None else str(c) for c in choices),
    )


def _check_device(device: str) -> None:
    _require(
        DEVICE_PATTERN.fullmatch(device) is not None,
        f"model.device: {device!r} is not allowed; choose auto, cpu, cuda or cuda:N",
    )


def _check_named(key: str, resolve: Any, value: str) -> None:
    """`value` must be known to a registry's `resolve` function (which raises NgrpoError)."""
    try:
        resolve(value)
    except NgrpoError as err:
        raise NgrpoError(f"{key}: {err}") from None


def _check_range(
    key: str,
    value: float,
    low: float,
    high: float,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    above = value > low if open_low else value >= low
    below = value < high if open_high else value <= high
    interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    _require(above and below, f"{key} must be in {interval}, got {value!r}")


def missing_keys(cfg: TrainConfig) -> list[str]:
    """Keys still set to the required marker `???`."""
    flat = _flatten(config_to_dict(cfg))
    return [key for key, value in flat.items() if value == MISSING]


METHOD_NAMES = {"none": "grpo", "neighbor": "ngrpo", "gaussian": "stht"}
"""Run-directory names of the exploration strategies (`output_dir: null`); others keep theirs."""
EMBEDDED_EVAL_SETS = ("arith-id", "arith-ood")
"""The evaluation sets of a run on the embedded task (`data.eval_sets: null`)."""


def method_name(strategy: str) -> str:
    """The method an exploration strategy names (`none` -> `grpo`, `neighbor` -> `ngrpo`)."""
    return METHOD_NAMES.get(strategy, strategy)


def resolve_defaults(cfg: TrainConfig) -> TrainConfig:
    """Fill the settings whose default follows others, in place; returns `cfg`.

    `output_dir: null` -> `runs/<method>` (`method_name`); `data.eval_sets: null` -> the embedded
    splits (`EMBEDDED_EVAL_SETS`) when `data.train` is an embedded split, else `[]` (TRL and verl
    evaluate only on data they are given)."""
    from ngrpo.tasks import SPLITS

    if cfg.output_dir is None:
        cfg.output_dir = f"runs/{method_name(str(cfg.exploration.strategy))}"
    if cfg.data.eval_sets is None:
        embedded = str(cfg.data.train) in SPLITS
        cfg.data.eval_sets = list(EMBEDDED_EVAL_SETS) if embedded else []
    return cfg


def validate_config(cfg: TrainConfig) -> TrainConfig:
    """Check every value; raise `NgrpoError` naming the key and what is allowed. Returns `cfg`,
    with the defaults that follow other settings filled in (`resolve_defaults`).

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

    resolve_defaults(cfg)
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
    _require(
        isinstance(r.num_generations, int) and r.num_generations >= 2,
        f"rollout.num_generations must be an integer >= 2 (group-relative advantages need "
        f"two responses per prompt), got {r.num_generations!r}",
    )
    _require(r.temperature > 0, f"rollout.temperature must be > 0, got {r.temperature!r}")
    _check_range("rollout.top_p", r.top_p, 0.0, 1.0, open_low=True)
    _check_int("rollout.top_k", r.top_k, 0)
    _check_int("rollout.max_completion_length", r.max_completion_length, 1)
    if r.generation_batch_size is not None:
        _check_int("rollout.generation_batch_size", r.generation_batch_size, 1)
    _check_choice("rollout.kv_cache", r.kv_cache, KV_CACHES)
    _check_choice("rollout.cuda_graphs", r.cuda_graphs, CUDA_GRAPHS)
    _check_choice("rollout.precision", r.precision, PRECISIONS)
    _check_choice("rollout.keep_decoder", r.keep_decoder, [None, True, False])

    cfg.exploration.validate()

    t = cfg.train
    _check_int("train.steps", t.steps, 1)
    _check_int("train.prompts_per_step", t.prompts_per_step, 1)
    _check_int("train.mini_batch_prompts", t.mini_batch_prompts, 1)
    _require(
        t.prompts_per_step % t.mini_batch_prompts == 0,
        f"train.mini_batch_prompts ({t.mini_batch_prompts}) must divide "
        f"train.prompts_per_step ({t.prompts_per_step})",
    )
    _check_int("train.micro_batch_size", t.micro_batch_size, 1)
    if t.max_tokens_per_micro_batch is not None:
        _check_int("train.max_tokens_per_micro_batch", t.max_tokens_per_micro_batch, 1)
    _check_int("train.num_iterations", t.num_iterations, 1)
    _require(t.learning_rate > 0, f"train.learning_rate must be > 0, got {t.learning_rate!r}")
    _check_int("train.warmup_steps", t.warmup_steps, 0)
    _require(t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay!r}")
    _require(
        t.max_grad_norm is None or t.max_grad_norm > 0,
        f"train.max_grad_norm must be > 0 or null, got {t.max_grad_norm!r}",
    )
    _require(t.beta >= 0, f"train.beta must be >= 0, got {t.beta!r}")
    for key in ("train.kl_estimator", "train.loss_type"):
        _check_named(key, _VALUE_CANONICALIZERS[key], getattr(t, key.split(".")[1]))
    _check_range("train.epsilon", t.epsilon, 0.0, 1.0, open_high=True)
    if t.epsilon_high is not None:
        _require(t.epsilon_high >= 0, f"train.epsilon_high must be >= 0, got {t.epsilon_high!r}")
    _check_choice(
        "train.importance_sampling_level", t.importance_sampling_level, list(IMPORTANCE_LEVELS)
    )
    _reward_items(t.rewards)  # entries set from Python are checked as YAML ones are
    for i, (spec, _) in enumerate(t.reward_items()):
        key = f"train.rewards[{i}].fn" if t.rewards else "train.reward"
        _check_named(key, check_spec, spec)
    _require(
        t.reward_timeout_s > 0, f"train.reward_timeout_s must be > 0, got {t.reward_timeout_s!r}"
    )
    _check_choice("train.reward_errors", t.reward_errors, list(ERROR_POLICIES))
    cap = t.reward_memory_gb
    _require(
        cap is None or (type(cap) in (int, float) and cap > 0),
        f"train.reward_memory_gb must be > 0 (GB) or null (no cap), got {cap!r}",
    )
    if t.clip_ratio_c is not None:
        _require(
            isinstance(t.clip_ratio_c, (int, float))
            and not isinstance(t.clip_ratio_c, bool)
            and t.clip_ratio_c > 1,
            f"train.clip_ratio_c must be > 1 or null (off), got {t.clip_ratio_c!r}",
        )
    _check_choice("train.soft_input_grad", t.soft_input_grad, list(SOFT_INPUT_GRAD))
    _check_choice("train.old_logprobs", t.old_logprobs, ["auto", *OLD_LOGPROBS])
    _check_choice("train.rollout_correction", t.rollout_correction, list(CORRECTIONS))
    _require(
        isinstance(t.rollout_correction_cap, (int, float))
        and not isinstance(t.rollout_correction_cap, bool)
        and t.rollout_correction_cap >= 1,
        f"train.rollout_correction_cap must be >= 1, got {t.rollout_correction_cap!r}",
    )
    floor = t.rollout_correction_min
    _require(
        floor is None
        or (isinstance(floor, (int, float)) and not isinstance(floor, bool) and 0 <= floor <= 1),
        f"train.rollout_correction_min must be in [0, 1] or null (no lower bound), got {floor!r}",
    )
    _check_choice("train.rollout_correction_masked", t.rollout_correction_masked, list(MASKED))
    _check_choice("train.strategy", t.strategy, list(STRATEGIES))
    _require(
        not (t.strategy == "fsdp" and m.lora.enabled),
        "train.strategy=fsdp with model.lora.r > 0 is not supported yet (LoRA keeps the base "
        "frozen: 7B adapters fit one GPU); use train.strategy=ddp for LoRA runs",
    )
    _check_choice("train.dynamic_sampling", t.dynamic_sampling, [True, False])
    _check_choice("train.oom_retry", t.oom_retry, [True, False])
    _check_int("train.max_sampling_rounds", t.max_sampling_rounds, 1)

    e = cfg.eval
    _check_int("eval.every", e.every, 0)
    _check_int("eval.n", e.n, 1)
    _require(e.temperature > 0, f"eval.temperature must be > 0, got {e.temperature!r}")
    _check_range("eval.top_p", e.top_p, 0.0, 1.0, open_low=True)
    _check_int("eval.max_new_tokens", e.max_new_tokens, 1)
    if e.batch_size is not None:
        _check_int("eval.batch_size", e.batch_size, 1)
    if e.limit is not None:
        _check_int("eval.limit", e.limit, 1)
    evaluates = e.every > 0 or e.at_start  # with eval.every 0 and no start evaluation, none runs
    _require(
        e.best_metric is None or bool(d.eval_sets) or not evaluates,
        f"eval.best_metric={e.best_metric} but nothing is evaluated (data.eval_sets is empty); "
        "name the sets with data.eval_sets=NAME,...",
    )
    _require(
        e.best_metric is None or e.best_metric.startswith("eval/"),
        f"eval.best_metric must name an evaluation metric (eval/<set>/<metric>), "
        f"got {e.best_metric!r}",
    )

    lg = cfg.logging
    _check_int("logging.save_every", lg.save_every, 0)
    _check_int("logging.keep_last", lg.keep_last, 1)
    _check_int("logging.completions_every", lg.completions_every, 0)
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
    supports it natively (`bf16_supported`: compute capability 8.0 or later, Ampere on; emulated
    bf16 on a V100 or T4 is much slower), float32 otherwise (CPU, or an older GPU: float16 would
    need loss scaling). An explicit request that cannot be met is an error, never a silent
    substitute.
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
        raise NgrpoError(
            "model.dtype=bfloat16 but this GPU does not support it natively (compute capability "
            "below 8.0: bf16 would be emulated, much slower); use float32 or float16"
        )
    return device, DTYPES[dtype]
