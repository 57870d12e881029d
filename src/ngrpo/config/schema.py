"""The config schema: one dataclass per section, `TrainConfig` over them, and its dotted keys.

A config is a `TrainConfig` with two top-level fields (`seed`, `output_dir`) and one dataclass per
section: `model`, `data`, `rollout`, `exploration` (`ngrpo.method.exploration.ExplorationConfig`),
`train`, `eval`, `logging`. Every field is documented where it is declared.

Every setting has a canonical dotted key (`train.steps`, `model.lora.r`): `config_keys` lists them,
`_schema` maps each to its declared type, `_flatten` turns a nested mapping into dotted keys.
A string field set to `MISSING` (`???`) is a required value the user must override.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ngrpo.method.exploration import ExplorationConfig
from ngrpo.models.lora import LoraConfig

MISSING = "???"  # a required value: the user must override it


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
    """LoRA adapters (peft): `r` > 0 trains only adapters on a frozen base (`ngrpo.models.lora`)."""


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
    eval_sets: list[str] | None = None
    """Evaluation sets: embedded splits, shipped benchmark names (`math500`, …) or file paths.
    null: the embedded `arith-id`, `arith-ood` when training on the embedded task, else none (no
    evaluation: your own data is never scored on the toy task unless named here)."""
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
    keep_decoder: bool | None = None
    """Keep the static decoder (KV cache, compute-dtype weight copies, captured CUDA graphs) from
    one step's rollouts to the next, so graph capture happens once per shape; its memory then
    stays allocated through the learner phase. null: kept on CUDA when `ngrpo plan`'s estimate
    with it kept fits in 90% of the GPU (the decision is logged), never on CPU (nothing to
    capture); true / false force it (`ngrpo plan` counts a true)."""
    precision: str = "learner"
    """How the static decoder rounds under mixed precision: `learner` (the residual stream in the
    weights' dtype and the head in the head's dtype, fp32 with fp32 master weights, as the
    learner's forward computes them: the smallest rollout–learner gap) | `compute` (everything in
    the autocast dtype: a cheaper head on GPU, a larger gap). Identical in fp32."""


@dataclass
class GRPOConfig:
    """The `train` section: budget, optimiser and GRPO loss (DESIGN section 2,
    `ngrpo.method.losses`)."""

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
    counted in `reward/<name>/errors`) when a user function fails, hangs, runs out of memory or
    returns a bad value."""
    reward_memory_gb: float | None = 8.0
    """Memory cap of each user reward function's worker process, in GB (10⁹ bytes; the worker's
    writable memory, `RLIMIT_DATA`, where the runtime and libraries hold ~0.3 GB, with CUDA
    ~1.4 GB; memory on a GPU is not counted). A function that allocates past it gets a
    MemoryError, reported as an error naming it (then `reward_errors` applies); null: no cap."""
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
    old_logprobs: str = "auto"
    """Where π_old, the denominator of the PPO ratio, comes from: `rollout` (the log-probabilities
    the rollout engine recorded; free, exact in fp32), `recompute` (the learner's own forward
    without gradients before the first update, as verl and the authors' release do: one extra
    forward pass), `auto` (`rollout` when the compute dtype is fp32, else `recompute`)."""
    rollout_correction: str = "token_truncate"
    """Importance weights π_old / π_rollout on each token's policy-gradient term, for the gap
    between the policy that sampled and π_old (`ngrpo.method.rollout_correction`): none |
    token_truncate | token_mask | sequence_truncate | sequence_mask (TRL
    `vllm_importance_sampling_mode`; verl `algorithm.rollout_correction.rollout_is`: token |
    sequence, truncating). Exactly 1 when π_old is the rollout's."""
    rollout_correction_cap: float = 2.0
    """Truncation or masking threshold of the weights, >= 1 (verl `rollout_is_threshold`, 2.0;
    TRL `vllm_importance_sampling_clip_max`, 3.0, formerly `vllm_importance_sampling_cap`)."""
    rollout_correction_min: float | None = None
    """Lower bound of the weights, in [0, 1], or null (none): truncated up to it, or masked below
    it (TRL `vllm_importance_sampling_clip_min`, null)."""
    rollout_correction_masked: str = "keep"
    """What a token a `*_mask` mode leaves out keeps: `keep` (TRL): weight 0 on its
    policy-gradient term only, still counted in the loss normaliser, its KL and entropy terms
    kept; `drop` (verl's rejection sampling): removed from the loss mask altogether."""
    rollout_correction_enabled: bool = True
    """TRL's `vllm_importance_sampling_correction`: false turns the correction off whatever
    `rollout_correction` says."""
    oom_retry: bool = False
    """On an out-of-memory error in a learner (or reference) micro-batch, halve the token budget
    (`max_tokens_per_micro_batch`, or the failed micro-batch's tokens) and redo that mini-batch
    from its state before the attempt; the smaller budget is kept for the rest of the run and
    `train/oom_retries` counts the retries (verl users set `ppo_max_token_len_per_gpu` for the
    same purpose). Single process only. Off: the error names the phase, shape and settings."""
    strategy: str = "ddp"
    """Data-parallel strategy under several processes (verl `actor_rollout_ref.actor.strategy`):
    `ddp` (every process holds the whole model and optimizer) | `fsdp` (FSDP2: parameters,
    gradients and optimizer state sharded over the processes; `ngrpo.sharding`,
    docs/guides/fsdp.md). A single process shards nothing: its run and checkpoints are the same
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
    batch_size: int | None = None
    """Sequences decoded together at evaluation (null: 64; at least `eval.n`, so a problem's
    samples are decoded together). Lower it when an evaluation runs out of memory."""
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
    """Also write TensorBoard event files (needs the `tensorboard` extra); the same as adding
    `tensorboard` to `report_to`."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers to report to besides `metrics.jsonl`: any of tensorboard, wandb,
    trackio, mlflow, swanlab (each needs its extra: `pip install "ngrpo[wandb]"`); rank 0 only.
    TRL's `report_to` and verl's `trainer.logger` (`console` is dropped) are aliases."""
    project: str = "ngrpo"
    """The trackers' project (verl: `trainer.project_name`)."""
    run_name: str | None = None
    """The trackers' run name (verl: `trainer.experiment_name`); null: the run directory's name."""
    tags: list[str] = field(default_factory=list)
    """Tags of the trackers' run."""
    completions_every: int = 10
    """Write `completions/step-NNNNNN.jsonl` (and send it to the trackers as a table) every N
    steps and at the last step (0: never); evaluations write `eval-step-NNNNNN.jsonl`."""


@dataclass
class TrainConfig:
    """Everything `ngrpo train` needs. Defaults: GRPO on the embedded task with the base model."""

    seed: int = 0
    """Seed of every random stream (data order, sampling, exploration)."""
    output_dir: str | None = None
    """Run directory: config.yaml, metrics.jsonl, checkpoints. null: `runs/<method>`, named after
    `exploration.strategy` (`runs/grpo` for none, `runs/ngrpo` for neighbor, `runs/stht` for
    gaussian, `runs/<strategy>` otherwise)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    train: GRPOConfig = field(default_factory=GRPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# ---------------------------------------------------------------------------------------------
# Dotted keys
# ---------------------------------------------------------------------------------------------


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


def set_field(cfg: TrainConfig, key: str, value: Any) -> None:
    """Set the field a canonical dotted `key` names (`model.lora.r`) to `value` as given (no
    coercion or check: `ngrpo.config.loading` coerces user values before calling this)."""
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


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as nested plain dicts (YAML / JSON ready)."""
    return dataclasses.asdict(cfg)
