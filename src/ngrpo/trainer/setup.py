"""Building a run: the `Run` record a step needs, made once by `_setup` in named steps, in this
order: accelerator, rewards, resume point, policy (`ngrpo.models.load.load_policy`: full weights or
LoRA), KL reference, distribution strategy, optimizer and scheduler, data, neighbour index, learner
settings, and the state of a resumed checkpoint.

Several processes (`torchrun --nproc_per_node N -m ngrpo train ...`; on CPU accelerate 1.15's
`accelerate launch --cpu --num_processes N` starts one process, not a group): each process rolls
out full groups for its own slice of each step's prompts (`ngrpo.trainer.step`). The learner scores
through the policy module (`ngrpo.learner.policy.SoftInputPolicy`: soft-input embedding, body and
chunked head inside one forward), which `train.strategy` distributes:
- `ddp` (default): accelerate wraps it in DDP, gradients are all-reduced; the rollout runs on the
  unwrapped model;
- `fsdp`: FSDP2 shards it (`ngrpo.sharding`: each decoder layer, then the root with the embedding
  and head; compute-dtype parameters in the forward, fp32 reductions and master weights); the
  rollout, evaluation and neighbour index run on a rollout copy (a plain model with the full
  parameters in the compute dtype) refreshed after every update; the KL reference (`beta > 0`)
  is sharded the same way, in the compute dtype, without gradients. Checkpoints: the same Hugging
  Face directory (full state dict gathered on rank 0) with the optimizer state in `optimizer/`
  (`torch.distributed.checkpoint`, sharded, by parameter name; its pickled `.metadata` is checked
  with a restricted unpickler before loading); either format resumes under either strategy and
  world size (`ngrpo.sharding.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ngrpo.config import TrainConfig
from ngrpo.learner.update import LearnerParams
from ngrpo.rollout import DecoderPool
from ngrpo.trainer.checkpoints import (
    BEST_STEP,
    EVAL_PENDING,
    OOM_BUDGET,
    _reconcile_best,
    _recover_interrupted_writes,
    _set_rng_state,
    _truncate_metrics,
    resume_checkpoint,
)
from ngrpo.trainer.prompts import PromptSampler, encode_prompts
from ngrpo.trainer.waits import wait_for_main, wait_group
from ngrpo.utils.errors import NgrpoError

log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything a step needs, built once by `_setup`."""

    cfg: TrainConfig
    run_dir: Path
    accelerator: object  # accelerate's Accelerator, or ngrpo.sharding.FsdpStrategy around it
    model: object  # the policy module (ngrpo.learner.policy), wrapped by DDP or sharded by FSDP
    policy: object  # the plain model the rollout runs on (FSDP: the rollout copy)
    ref_model: object | None
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    sampler: PromptSampler
    examples: list
    prompts: list[list[int]]
    eval_sets: dict
    answer_start_ids: list[int]
    neighbor_index: object | None
    params: LearnerParams
    pool: object
    rewards: object  # ngrpo.rewards.functions.RewardSet
    variant_classes: torch.Tensor | None = None  # (V,) embedded task: surface-variant class ids
    canonicalize: Callable[[str], str] | None = None  # embedded task: its canonical surface form
    peft_model: object | None = None  # LoRA: the PeftModel around `policy` (saving, reference)
    ref_context: Callable | None = None  # LoRA: peft's disable_adapter, the reference's context
    step: int = 0
    best: float | None = None
    best_step: int | None = None  # the step whose evaluation gave `best` (best/ holds its model)
    eval_pending: bool = False  # a stop cut this step's evaluation short (run again on resume)
    skipped_total: int = 0
    dropped_prompts: int = 0
    rollout_copy: object | None = None  # ngrpo.sharding.RolloutCopy under FSDP
    decoders: object | None = None  # ngrpo.rollout.DecoderPool: the decoder kept between steps
    waits: object | None = None  # the group waits for rank 0's work use (ngrpo.trainer.waits)
    completions: list | None = None  # the last step's completion rows, when they were due
    embed_start: torch.Tensor | None = None  # embedded task: the input table at the first step

    @property
    def sharded(self) -> bool:
        return self.rollout_copy is not None


def _setup(cfg: TrainConfig, run_dir: Path, resume: bool, reward_funcs=None) -> Run:
    """Build a run: the steps below, in this order (rewards first, so that a missing reward
    function fails before any model is loaded; the resumed state last)."""
    from ngrpo.method.exploration import answer_start_ids
    from ngrpo.rewards import GradingPool

    accelerator, dtype = _accelerator(cfg)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    rewards = _reward_set(cfg, reward_funcs)
    train_set, eval_sets = _datasets(cfg, rewards.needs_answer)  # before any model is loaded
    if resume and accelerator.is_main_process:  # before the newest checkpoint is chosen: a save
        _recover_interrupted_writes(run_dir)  # caught between its two renames gets it back
    accelerator.wait_for_everyone()
    latest, state = _resume_point(run_dir, resume)
    loaded = _policy(cfg, latest, accelerator.device, dtype)
    ref_model = _reference(cfg, loaded, accelerator.device, dtype)
    module, policy, ref_model, copy, accelerator = _distribute(
        cfg, accelerator, loaded, ref_model, dtype
    )
    optimizer, scheduler = _optimizer(cfg, module)
    model = module
    if copy is None:
        model, optimizer = accelerator.prepare(module, optimizer)
    tokenizer = loaded.tokenizer
    examples, prompts, dropped = _encoded(cfg, tokenizer, train_set)
    _check_eval_lengths(cfg, policy, tokenizer, eval_sets)
    index = _neighbor_index(cfg, policy)
    world = accelerator.num_processes
    _check_world_size(cfg, world)
    params = _learner_params(cfg, world, dtype)
    peft_model = loaded.peft_model
    run = Run(
        cfg=cfg, run_dir=run_dir, accelerator=accelerator, model=model, policy=policy,
        ref_model=ref_model, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler,
        sampler=PromptSampler(len(prompts), cfg.seed, cfg.data.shuffle), examples=examples,
        prompts=prompts, eval_sets=eval_sets,
        answer_start_ids=answer_start_ids(tokenizer, cfg.exploration.answer_start),
        neighbor_index=index, params=params, pool=GradingPool(), rewards=rewards,
        dropped_prompts=dropped, variant_classes=_variant_classes(cfg, tokenizer),
        canonicalize=_canonicalize(cfg),
        peft_model=peft_model,
        ref_context=peft_model.disable_adapter if peft_model is not None else None,
        rollout_copy=copy,
        decoders=DecoderPool() if _keep_decoder(cfg, accelerator.device, world) else None,
        waits=wait_group(world),
    )  # fmt: skip
    rewards.pool = run.pool  # the built-in graders share the run's grading workers
    rewards.start()  # a user function that cannot load fails here, before any step
    if state is not None:
        _restore(run, module, latest, state)
    if resume and accelerator.is_main_process:
        # Lines logged after the checkpoint are redone; without one, everything is redone.
        resumed = run.step if latest is not None else -1
        _truncate_metrics(run_dir / "metrics.jsonl", resumed, run.eval_pending)
        run.best, run.best_step = _reconcile_best(run_dir, resumed, run.best, run.best_step)
    wait_for_main(accelerator, run.waits)
    return run


# ------------------------------------------------------------------------ the steps, in order


def _accelerator(cfg: TrainConfig):
    """accelerate's `Accelerator` for `model.device` / `model.dtype`, and the compute dtype.
    `cuda:N` makes GPU N the current device first (accelerate puts one process on the current
    GPU); `auto` dtype is bf16 only on a GPU with native bf16 (`native_bf16`)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from ngrpo.config import resolve_device_dtype
    from ngrpo.utils.cpu_bf16 import warn_if_slow_bf16

    cuda = torch.cuda.is_available()
    index = _cuda_index(cfg.model.device, cuda)
    device, dtype = resolve_device_dtype(
        cfg.model.device, cfg.model.dtype, cuda, cuda and native_bf16(index)
    )
    if index is not None:  # accelerate places a single process on the *current* GPU
        torch.cuda.set_device(index)
    mixed_precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
    # accelerate keeps one mixed-precision setting per process; a second run in the same process
    # (the Python API, a notebook) may choose another: reset it (the process group is kept).
    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision)
    if accelerator.is_main_process:
        warn_if_slow_bf16(device, dtype)  # bf16 on a CPU without native bf16: ~100× slower
    return accelerator, dtype


def native_bf16(index: int | None = None) -> bool:
    """Whether CUDA device `index` (None: the current one) computes bf16 natively: compute
    capability 8.0 or later (Ampere on; ROCm: always). `torch.cuda.is_bf16_supported()` also
    counts emulation (True on a V100 or T4, where bf16 is much slower) and asks the current
    device, not the configured one."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(index)[0] >= 8


def _cuda_index(device: str, cuda_available: bool) -> int | None:
    """The GPU `model.device: cuda:N` names (None for auto, cpu, cuda), checked against the GPUs
    present and the launcher: under torchrun each process takes its local rank's GPU, so `cuda:N`
    is refused there unless it names that very GPU (never silently ignored)."""
    if not (device.startswith("cuda:") and cuda_available):
        return None  # `resolve_device_dtype` refuses cuda:N without CUDA
    index, count = int(device.split(":")[1]), torch.cuda.device_count()
    if index >= count:
        raise NgrpoError(f"model.device={device} but this machine has {count} GPU(s)")
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and int(local_rank) != index:
        raise NgrpoError(
            f"model.device={device} under torchrun: each process uses its local rank's GPU "
            f"(this one cuda:{local_rank}); set model.device=cuda and choose GPUs with "
            "CUDA_VISIBLE_DEVICES"
        )
    return index


def _reward_set(cfg: TrainConfig, reward_funcs):
    """The weighted reward functions (`reward_funcs` from the Python API, else the config's)."""
    from ngrpo.rewards.functions import build_reward_set

    cap = cfg.train.reward_memory_gb
    return build_reward_set(
        reward_funcs if reward_funcs is not None else cfg.train.reward_items(),
        timeout_s=cfg.train.reward_timeout_s, on_error=cfg.train.reward_errors,
        memory_bytes=None if cap is None else int(cap * 1e9),
    )  # fmt: skip


def _resume_point(run_dir: Path, resume: bool) -> tuple[Path | None, dict | None]:
    """The newest complete checkpoint that is not damaged and its trainer state when resuming
    (`ngrpo.trainer.checkpoints.resume_checkpoint`), else (None, None)."""
    latest, state = resume_checkpoint(run_dir) if resume else (None, None)
    if resume and latest is None:
        log.warning("no complete checkpoint in %s: starting from step 0", run_dir)
    return latest, state


def _policy(cfg: TrainConfig, latest: Path | None, device, dtype):
    """The policy, its tokenizer and (LoRA) adapters (`ngrpo.models.load.load_policy`); the
    exploration settings are checked against its vocabulary."""
    from ngrpo.models.limits import check_positions, position_limit
    from ngrpo.models.load import load_policy

    loaded = load_policy(
        cfg.model.path, cfg.model.lora, latest, device, dtype,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        attn_implementation=cfg.model.attn_implementation,
    )  # fmt: skip
    cfg.exploration.validate(vocab_size=loaded.policy.get_input_embeddings().weight.shape[0])
    check_positions(
        position_limit(loaded.policy.config),
        ("data.max_prompt_length", cfg.data.max_prompt_length),
        ("rollout.max_completion_length", cfg.rollout.max_completion_length), cfg.model.path,
    )  # fmt: skip
    return loaded


def _reference(cfg: TrainConfig, loaded, device, dtype):
    """The frozen KL reference (`train.beta > 0`): under LoRA the policy itself (scored with its
    adapters disabled: no copy), else the base model in the compute dtype; None at beta 0."""
    from ngrpo.models.load import load_model

    if cfg.train.beta > 0 and cfg.model.lora.enabled:
        return loaded.policy
    if cfg.train.beta > 0:
        return load_model(
            loaded.base_dir, device, dtype, cfg.model.attn_implementation
        ).requires_grad_(False)
    return None


def _distribute(cfg: TrainConfig, accelerator, loaded, ref_model, dtype):
    """The policy module and what the rollout runs on: (module, rollout model, reference,
    rollout copy, accelerator). DDP (accelerate wraps the module later) and one process: the
    module around the policy, the rollout on the policy itself. FSDP over several processes: the
    module and the reference sharded (`ngrpo.sharding`), the rollout on a plain copy of the full
    weights in the compute dtype, the accelerator wrapped in `FsdpStrategy`."""
    from ngrpo.learner.policy import SoftInputPolicy

    module = SoftInputPolicy(loaded.policy)
    if cfg.train.strategy != "fsdp" or accelerator.num_processes == 1:
        return module, loaded.policy, ref_model, None, accelerator
    from ngrpo.models.load import disable_dropout, load_model
    from ngrpo.sharding import FsdpStrategy, RolloutCopy, device_mesh, shard_policy

    rollout_model = load_model(  # compute dtype
        loaded.weights_dir, accelerator.device, dtype, cfg.model.attn_implementation
    )
    disable_dropout(rollout_model)
    mesh = device_mesh(accelerator.num_processes, accelerator.device.type)
    shard_policy(module, dtype, mesh)
    if ref_model is not None:  # the KL reference is sharded too (compute dtype, no grads)
        ref_model = shard_policy(SoftInputPolicy(ref_model), dtype, mesh)
    copy = RolloutCopy(module, rollout_model)
    return module, rollout_model, ref_model, copy, FsdpStrategy(accelerator)


def _optimizer(cfg: TrainConfig, module: torch.nn.Module):
    """AdamW over the trainable parameters (LoRA: the adapters only; everything else is frozen)
    and the warm-up schedule."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay,
        **_adamw_options(trainable),
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.train.warmup_steps))
    return optimizer, scheduler


def _adamw_options(trainable: list[torch.nn.Parameter]) -> dict:
    """How AdamW runs: on CUDA the fused kernel (one launch for all parameters; same state dict;
    it does not bump the parameters' version counter, see `ngrpo.trainer.step.weights_changed`),
    but not for sharded (DTensor) parameters; otherwise torch's default (multi-tensor `foreach` on
    CUDA, the per-parameter loop on CPU). The three kinds are `ADAMW_KINDS`."""
    fused = bool(trainable) and all(p.is_cuda and not hasattr(p, "to_local") for p in trainable)
    return ADAMW_KINDS["fused"] if fused else {}


ADAMW_KINDS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}
"""AdamW's implementations the trainer can end up with (`_adamw_options`), as keyword arguments."""


def _lr_lambda(warmup_steps: int):
    return lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def _datasets(cfg: TrainConfig, needs_answer: bool):
    """(the training set, the evaluation sets by benchmark name: a file's stem), read before any
    model is loaded, so that an empty or malformed file stops the run at once."""
    from ngrpo.data import load_benchmark

    train_set = load_benchmark(
        cfg.data.train, limit=cfg.data.train_limit, problem_field=cfg.data.problem_field,
        answer_field=cfg.data.answer_field, require_answer=needs_answer,
    )  # fmt: skip
    eval_sets: dict[str, list] = {}  # by benchmark name (a file's stem): `eval/<name>/...`
    for source in cfg.data.eval_sets:
        bench = load_benchmark(source, limit=cfg.eval.limit)
        if bench.name in eval_sets:
            raise NgrpoError(
                f"data.eval_sets: two sets are named {bench.name!r} (metrics are named "
                f"eval/<name>/...); rename one of the files"
            )
        eval_sets[bench.name] = bench.examples
    return train_set, eval_sets


def _encoded(cfg: TrainConfig, tokenizer, train_set):
    """(training examples, their encoded prompts, prompts dropped as too long)."""
    examples, prompts, dropped = encode_prompts(tokenizer, train_set.examples, cfg)
    if dropped:
        log.warning("dropped %d training prompts longer than %d tokens", dropped,
                    cfg.data.max_prompt_length)  # fmt: skip
    return examples, prompts, dropped


def _check_eval_lengths(cfg: TrainConfig, policy, tokenizer, eval_sets: dict) -> None:
    """Each evaluation set's longest prompt + `eval.max_new_tokens` fits in the model's positions
    (checked again by `evaluate`; here so that a run stops at its start, not at its first
    evaluation)."""
    from ngrpo.evaluation import build_prompts
    from ngrpo.models.limits import check_positions, position_limit

    if not (cfg.eval.every > 0 or cfg.eval.at_start):
        return
    limit = position_limit(policy.config)
    for name, examples in eval_sets.items():
        longest = max(map(len, build_prompts(tokenizer, [e.problem for e in examples])))
        check_positions(
            limit, (f"the longest prompt of {name}", longest),
            ("eval.max_new_tokens", cfg.eval.max_new_tokens), cfg.model.path,
        )  # fmt: skip


def _neighbor_index(cfg: TrainConfig, policy):
    """N-GRPO's neighbour index on the searched table of the model the rollout runs on."""
    from ngrpo.method.neighbors import NeighborIndex
    from ngrpo.rollout import neighbor_search_table

    if cfg.exploration.strategy != "neighbor" or cfg.exploration.mix_top_k <= 1:
        return None
    return NeighborIndex(
        neighbor_search_table(policy, cfg.exploration.neighbor_table),
        cfg.exploration.mix_top_k - 1, cfg.exploration.metric,
    )  # fmt: skip


def _check_world_size(cfg: TrainConfig, world: int) -> None:
    if cfg.train.prompts_per_step % world or cfg.train.mini_batch_prompts % world:
        raise NgrpoError(
            f"train.prompts_per_step ({cfg.train.prompts_per_step}) and train.mini_batch_prompts "
            f"({cfg.train.mini_batch_prompts}) must be divisible by the {world} processes"
        )
    if cfg.train.oom_retry and world > 1:
        raise NgrpoError(
            "train.oom_retry runs in a single process for now (a process out of memory cannot "
            "tell the others, which wait for it in the gradient all-reduce); set "
            "train.oom_retry=false and a smaller train.max_tokens_per_micro_batch"
        )


def _keep_decoder(cfg: TrainConfig, device: torch.device, world: int) -> bool:
    """`rollout.keep_decoder` resolved: null keeps the decoder on CUDA when the memory plan with it
    kept fits in 90% of the GPU's memory (`ngrpo.memory`), never on CPU."""
    if cfg.rollout.keep_decoder is not None:
        return cfg.rollout.keep_decoder
    if device.type != "cuda":
        return False
    from ngrpo.memory import estimate, inputs_from_config, shape_for_config

    plan = estimate(inputs_from_config(cfg, shape_for_config(cfg), world_size=world,
                                       keep_decoder=True))  # fmt: skip
    total = torch.cuda.get_device_properties(device).total_memory
    keep = plan.peak_bytes <= 0.9 * total
    log.info("rollout.keep_decoder=null: %s the decoder between steps (planned peak %.1f GB with "
             "it kept, GPU %.1f GB)", "keeping" if keep else "not keeping", plan.peak_bytes / 1e9,
             total / 1e9)  # fmt: skip
    return keep


def engine_options(cfg: TrainConfig):
    """How the run's rollouts and evaluations decode (`rollout.kv_cache`, `cuda_graphs`,
    `precision`): one set of options, so that evaluation re-uses the kept decoder."""
    from ngrpo.rollout import EngineOptions

    r = cfg.rollout
    return EngineOptions(r.kv_cache, r.cuda_graphs, precision=r.precision)


def old_logprobs_mode(setting: str, dtype: torch.dtype) -> str:
    """`train.old_logprobs` resolved: `auto` takes the rollout's log-probabilities only when the
    compute dtype is fp32 (where they equal the learner's), else recomputes them."""
    if setting != "auto":
        return setting
    return "rollout" if dtype == torch.float32 else "recompute"


def _learner_params(cfg: TrainConfig, world: int, dtype: torch.dtype) -> LearnerParams:
    """The learner's settings; a mini-batch's groups are split over the `world` processes."""
    return LearnerParams(
        group_size=cfg.rollout.num_generations,
        mini_batch_groups=cfg.train.mini_batch_prompts // world,
        micro_batch_size=cfg.train.micro_batch_size,
        max_tokens_per_micro_batch=cfg.train.max_tokens_per_micro_batch,
        num_iterations=cfg.train.num_iterations,
        temperature=cfg.rollout.temperature,
        beta=cfg.train.beta,
        kl_estimator=cfg.train.kl_estimator,
        clip_low=cfg.train.epsilon,
        clip_high=cfg.train.clip_high,
        importance_sampling_level=cfg.train.importance_sampling_level,
        loss_type=cfg.train.loss_type,
        entropy_coef=cfg.train.entropy_coef,
        clip_ratio_c=cfg.train.clip_ratio_c,
        soft_input_grad=cfg.train.soft_input_grad,
        max_grad_norm=cfg.train.max_grad_norm,
        mask_truncated_completions=cfg.train.mask_truncated_completions,
        old_logprobs=old_logprobs_mode(cfg.train.old_logprobs, dtype),
        rollout_correction=rollout_correction_mode(cfg.train, dtype),
        rollout_correction_cap=float(cfg.train.rollout_correction_cap),
        rollout_correction_min=cfg.train.rollout_correction_min,
        rollout_correction_masked=cfg.train.rollout_correction_masked,
    )


def rollout_correction_mode(train, dtype: torch.dtype) -> str:
    """`train.rollout_correction`, `none` when `rollout_correction_enabled` is false; warns when
    it can do nothing: π_old taken from the rollout (`old_logprobs: rollout`) in a dtype where
    the learner's log-probs differ from the rollout's, so every weight is exactly 1."""
    mode = train.rollout_correction if train.rollout_correction_enabled else "none"
    if mode != "none" and dtype != torch.float32 and train.old_logprobs == "rollout":
        log.warning(
            "train.rollout_correction=%s does nothing with train.old_logprobs=rollout: π_old is "
            "then the rollout's own log-probs and every weight is exactly 1, while in %s the "
            "learner's differ; set train.old_logprobs=recompute (or auto) to correct the gap",
            mode, str(dtype).removeprefix("torch."),
        )  # fmt: skip
    return mode


def _variant_classes(cfg: TrainConfig, tokenizer) -> torch.Tensor | None:
    """Surface-variant classes of the vocabulary when training on the embedded task with mixing
    (for `rollout/neighbor_synonym_frac`); None otherwise (the table means nothing elsewhere)."""
    from ngrpo.tasks import SPLITS
    from ngrpo.tasks.arith import variant_classes

    if str(cfg.data.train) not in SPLITS or not cfg.exploration.enabled:
        return None
    return torch.tensor(variant_classes(tokenizer.get_vocab(), len(tokenizer)))


def _canonicalize(cfg: TrainConfig) -> Callable[[str], str] | None:
    """The embedded task's canonical form when training on it (for the semantic-diversity
    metrics `diversity/canonical_paths`, `rephrase_pairs`, `correct_paths`); None otherwise."""
    from ngrpo.tasks import SPLITS
    from ngrpo.tasks.arith import canonicalize

    return canonicalize if str(cfg.data.train) in SPLITS else None


def _restore(run: Run, module: torch.nn.Module, latest: Path, state: dict) -> None:
    """A resumed checkpoint's optimizer, scheduler, data position, RNG streams and counters."""
    from ngrpo.sharding.checkpoint import load_optimizer_state

    load_optimizer_state(module, run.optimizer, latest, state["optimizer"], run.sharded)
    run.scheduler.load_state_dict(state["scheduler"])
    run.sampler.load_state_dict(state["sampler"])
    _set_rng_state(state["rng"])
    run.step, run.best, run.skipped_total = state["step"], state["best"], state["skipped"]
    run.best_step = state.get(BEST_STEP)  # absent in checkpoints written before it was kept
    run.eval_pending = bool(state.get(EVAL_PENDING, False))
    budget = state.get(OOM_BUDGET)  # a token budget `train.oom_retry` lowered (ngrpo.trainer.oom)
    if budget is not None and run.cfg.train.oom_retry:
        configured = run.params.max_tokens_per_micro_batch
        budget = budget if configured is None else min(budget, configured)
        run.params = dataclasses.replace(run.params, max_tokens_per_micro_batch=budget)
