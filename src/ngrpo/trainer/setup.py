"""Building a run: the `Run` record a step needs, made once by `_setup` (accelerator, policy,
LoRA, KL reference, distribution strategy, optimizer and scheduler, data, neighbour index, rewards,
and the state of a resumed checkpoint).

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

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ngrpo.config import TrainConfig
from ngrpo.learner.update import LearnerParams
from ngrpo.trainer.checkpoints import (
    STATE_FILE,
    _recover_interrupted_writes,
    _set_rng_state,
    _truncate_metrics,
    checkpoint_dirs,
    load_trainer_state,
)
from ngrpo.trainer.prompts import PromptSampler, encode_prompts
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
    peft_model: object | None = None  # LoRA: the PeftModel around `policy` (saving, reference)
    ref_context: Callable | None = None  # LoRA: peft's disable_adapter, the reference's context
    step: int = 0
    best: float | None = None
    skipped_total: int = 0
    dropped_prompts: int = 0
    rollout_copy: object | None = None  # ngrpo.sharding.RolloutCopy under FSDP

    @property
    def sharded(self) -> bool:
        return self.rollout_copy is not None


def _lr_lambda(warmup_steps: int):
    return lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def _variant_classes(cfg: TrainConfig, tokenizer) -> torch.Tensor | None:
    """Surface-variant classes of the vocabulary when training on the embedded task with mixing
    (for `rollout/neighbor_synonym_frac`); None otherwise (the table means nothing elsewhere)."""
    from ngrpo.tasks import SPLITS
    from ngrpo.tasks.arith import variant_classes

    if str(cfg.data.train) not in SPLITS or not cfg.exploration.enabled:
        return None
    return torch.tensor(variant_classes(tokenizer.get_vocab(), len(tokenizer)))


def _setup(cfg: TrainConfig, run_dir: Path, resume: bool, reward_funcs=None) -> Run:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from ngrpo.config import resolve_device_dtype
    from ngrpo.data import load_benchmark
    from ngrpo.learner.policy import SoftInputPolicy
    from ngrpo.method.exploration import answer_start_ids
    from ngrpo.method.neighbors import NeighborIndex
    from ngrpo.models.load import disable_dropout, load_model, load_policy
    from ngrpo.rewards import GradingPool
    from ngrpo.rewards.functions import build_reward_set
    from ngrpo.rollout import neighbor_search_table
    from ngrpo.sharding.checkpoint import load_optimizer_state

    device, dtype = resolve_device_dtype(
        cfg.model.device, cfg.model.dtype, torch.cuda.is_available(),
        torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    )  # fmt: skip
    mixed_precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
    # accelerate keeps one mixed-precision setting per process; a second run in the same process
    # (the Python API, a notebook) may choose another: reset it (the process group is kept).
    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    rewards = build_reward_set(
        reward_funcs if reward_funcs is not None else cfg.train.reward_items(),
        timeout_s=cfg.train.reward_timeout_s, on_error=cfg.train.reward_errors,
    )  # fmt: skip  (resolved first: a missing function fails before any model is loaded)
    latest = checkpoint_dirs(run_dir)[-1] if resume and checkpoint_dirs(run_dir) else None
    state = load_trainer_state(latest / STATE_FILE) if latest is not None else None
    if resume and latest is None:
        log.warning("no complete checkpoint in %s: starting from step 0", run_dir)
    loaded = load_policy(
        cfg.model.path, cfg.model.lora, latest, accelerator.device, dtype,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
    )  # fmt: skip
    policy, tokenizer, peft_model = loaded.policy, loaded.tokenizer, loaded.peft_model
    lora = cfg.model.lora.enabled
    vocab = policy.get_input_embeddings().weight.shape[0]
    cfg.exploration.validate(vocab_size=vocab)
    ref_model = None
    if cfg.train.beta > 0 and lora:  # the policy itself with its adapters disabled: no copy
        ref_model = policy
    elif cfg.train.beta > 0:
        ref_model = load_model(loaded.base_dir, accelerator.device, dtype).requires_grad_(False)

    module, copy = SoftInputPolicy(policy), None
    if cfg.train.strategy == "fsdp" and accelerator.num_processes > 1:
        from ngrpo.sharding import FsdpStrategy, RolloutCopy, shard_policy

        rollout_model = load_model(loaded.weights_dir, accelerator.device, dtype)  # compute dtype
        disable_dropout(rollout_model)
        shard_policy(module, dtype, accelerator.num_processes, accelerator.device.type)
        if ref_model is not None:  # the KL reference is sharded too (compute dtype, no grads)
            ref_model = shard_policy(SoftInputPolicy(ref_model), dtype,
                                     accelerator.num_processes, accelerator.device.type)
        copy, policy = RolloutCopy(module, rollout_model), rollout_model
        accelerator = FsdpStrategy(accelerator)
    optimizer = torch.optim.AdamW(  # LoRA: the adapters only (everything else is frozen)
        [p for p in module.parameters() if p.requires_grad], lr=cfg.train.learning_rate,
        weight_decay=cfg.train.weight_decay,
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.train.warmup_steps))
    model = module
    if copy is None:
        model, optimizer = accelerator.prepare(module, optimizer)

    train_set = load_benchmark(
        cfg.data.train, limit=cfg.data.train_limit, problem_field=cfg.data.problem_field,
        answer_field=cfg.data.answer_field, require_answer=rewards.needs_answer,
    )  # fmt: skip
    examples, prompts, dropped = encode_prompts(tokenizer, train_set.examples, cfg)
    if dropped:
        log.warning("dropped %d training prompts longer than %d tokens", dropped,
                    cfg.data.max_prompt_length)
    eval_sets = {
        name: load_benchmark(name, limit=cfg.eval.limit).examples for name in cfg.data.eval_sets
    }
    index = None
    if cfg.exploration.strategy == "neighbor" and cfg.exploration.mix_top_k > 1:
        index = NeighborIndex(
            neighbor_search_table(policy, cfg.exploration.neighbor_table),
            cfg.exploration.mix_top_k - 1, cfg.exploration.metric,
        )  # fmt: skip
    world = accelerator.num_processes
    if cfg.train.prompts_per_step % world or cfg.train.mini_batch_prompts % world:
        raise NgrpoError(
            f"train.prompts_per_step ({cfg.train.prompts_per_step}) and train.mini_batch_prompts "
            f"({cfg.train.mini_batch_prompts}) must be divisible by the {world} processes"
        )
    if cfg.train.dynamic_sampling and world > 1:
        raise NgrpoError(
            "train.dynamic_sampling runs in a single process for now (kept groups would differ "
            "between processes); set train.dynamic_sampling=false or run one process"
        )
    params = LearnerParams(
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
    )
    run = Run(
        cfg=cfg, run_dir=run_dir, accelerator=accelerator, model=model, policy=policy,
        ref_model=ref_model, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler,
        sampler=PromptSampler(len(prompts), cfg.seed, cfg.data.shuffle), examples=examples,
        prompts=prompts, eval_sets=eval_sets,
        answer_start_ids=answer_start_ids(tokenizer, cfg.exploration.answer_start),
        neighbor_index=index, params=params, pool=GradingPool(), rewards=rewards,
        dropped_prompts=dropped, variant_classes=_variant_classes(cfg, tokenizer),
        peft_model=peft_model,
        ref_context=peft_model.disable_adapter if peft_model is not None else None,
        rollout_copy=copy,
    )  # fmt: skip
    rewards.pool = run.pool  # the built-in graders share the run's grading workers
    rewards.start()  # a user function that cannot load fails here, before any step
    if state is not None:
        load_optimizer_state(module, optimizer, latest, state["optimizer"], run.sharded)
        scheduler.load_state_dict(state["scheduler"])
        run.sampler.load_state_dict(state["sampler"])
        _set_rng_state(state["rng"])
        run.step, run.best, run.skipped_total = state["step"], state["best"], state["skipped"]
    if resume and accelerator.is_main_process:
        _recover_interrupted_writes(run_dir)
        # Lines logged after the checkpoint are redone; without one, everything is redone.
        _truncate_metrics(run_dir / "metrics.jsonl", run.step if latest is not None else -1)
    accelerator.wait_for_everyone()
    return run
