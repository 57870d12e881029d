"""The training loop: prompts -> rollouts -> rewards -> advantages -> updates -> eval -> saves.

`train(cfg)` runs a whole GRPO / N-GRPO run from a `TrainConfig` (see `ngrpo.config`); the step
reads top to bottom in `_train_step`. Pieces it composes: `ngrpo.rollout.generate` (exploration on),
`ngrpo.rewards.functions.RewardSet` (built-in graders and user functions, weighted),
`ngrpo.losses.group_advantages`, `ngrpo.learner.update_policy`,
`ngrpo.evaluation.evaluate` (exploration off), `ngrpo.diagnostics` (diversity of each step's
groups), and with `train.dynamic_sampling` `ngrpo.dynamic_sampling.collect` (several rounds of
prompts per step, only groups whose rewards vary are trained on; single process only).

Run directory (`output_dir`):
- `config.yaml`: the resolved configuration;
- `metrics.jsonl`: one line per training step (`{"step": s, "type": "train", ...}`) and one per
  evaluation (`"type": "eval"`), flat namespaced keys (`reward/mean`, `loss/pg`, `eval/arith-id/
  pass@1`, ...);
- `checkpoints/step-NNNNNN/`: Hugging Face model (a LoRA run: the peft adapter, `ngrpo.lora`) +
  tokenizer (safetensors) and `trainer_state.pt`
  (optimizer, scheduler, RNG states, step, data position, best metric). The state holds only
  tensors, numbers, strings and plain containers (RNG states as tensors) and is read back with
  `torch.load(weights_only=True)`: a run directory from elsewhere cannot run code on `--resume`.
  Each is written to a temporary directory and renamed into place, so a process killed while
  saving leaves the previous checkpoint intact; only complete `step-*` directories are read back.
  Under FSDP the optimizer state is in `optimizer/` instead (see "Several processes");
- `best/`: the model with the best `eval.best_metric` so far (same atomic write; under FSDP the
  rollout copy's weights, i.e. in the compute dtype).

Resume (`resume=True`): continues from the newest complete checkpoint with the same data order,
RNG streams and optimizer state, so 2 + 2 steps equal 4 straight steps (tested). Metrics lines of
steps after that checkpoint (written before a crash) are dropped and redone (all of them when there
is no checkpoint yet); leftovers of an interrupted save are cleaned up, and a `best/` caught
between its two renames gets its previous version back.

Several processes (`torchrun --nproc_per_node N -m ngrpo train ...`; on CPU accelerate 1.15's
`accelerate launch --cpu --num_processes N` starts one process, not a group): each process rolls
out full groups for its own slice of each step's prompts. The learner scores through the policy
module (`ngrpo.policy.SoftInputPolicy`: soft-input embedding, body and chunked head inside one
forward), which `train.strategy` distributes:
- `ddp` (default): accelerate wraps it in DDP, gradients are all-reduced; the rollout runs on the
  unwrapped model;
- `fsdp`: FSDP2 shards it (`ngrpo.sharding`: each decoder layer, then the root with the embedding
  and head; compute-dtype parameters in the forward, fp32 reductions and master weights); the
  rollout, evaluation and neighbour index run on a rollout copy (a plain model with the full
  parameters in the compute dtype) refreshed after every update. Checkpoints: the same Hugging
  Face directory (full state dict gathered on rank 0) with the optimizer state in `optimizer/`
  (`torch.distributed.checkpoint`, sharded, by parameter name; its pickled `.metadata` is checked
  with a restricted unpickler before loading); either format resumes under either strategy and
  world size (`ngrpo.sharding.checkpoint`).
The mini-batch's loss normaliser (token or sequence count) is summed over processes and each
process's loss scaled by the world size, so the averaged gradient is exactly the global token
(or sequence) mean of one process holding the whole mini-batch. Rollouts are world-size
invariant: each generation batch (`rollout.generation_batch_size` rows of whole groups; with
`null` a process's whole share) gets its own seed from (seed, step, round, global index of its
first prompt), and each process takes its slice of every mini-batch of the step's prompts
(`ngrpo.sharding.data_parallel.process_prompt_slots`), so N processes produce one process's
rollouts and optimizer steps when each process's slice of a mini-batch is a whole number of
generation batches (a 1-process run with `generation_batch_size: null` keeps its old seeds).
Metrics are averaged over processes, totals and throughputs (`SUMMED_METRICS`) summed,
`memory/peak_bytes` the largest (`MAX_METRICS`), and `train/world_size` is logged. Only rank 0
evaluates and writes files (under FSDP every rank writes its optimizer shard); the others wait at a
barrier.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ngrpo.config import TrainConfig, derived_values, save_config
from ngrpo.errors import NgrpoError
from ngrpo.learner import LearnerParams, disable_dropout, update_policy

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
Progress = Callable[[str, int, int, dict], None]


# ------------------------------------------------------------------------------------ data


@dataclass
class PromptSampler:
    """Deterministic prompt order: a fresh seeded permutation every epoch over the data."""

    size: int
    seed: int
    shuffle: bool = True
    epoch: int = 0
    position: int = 0
    _order: list[int] = field(default_factory=list, repr=False)

    def _permutation(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=gen).tolist()

    def take(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            if not self._order:
                self._order = self._permutation()
            out.append(self._order[self.position])
            self.position += 1
            if self.position == self.size:
                self.epoch, self.position, self._order = self.epoch + 1, 0, []
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._order = state["epoch"], state["position"], []


def _with_suffix(example, suffix: str):
    """The prompt to encode: the problem text, or the messages (suffix on the last user turn)."""
    if example.messages is None:
        return example.problem + suffix
    messages = [dict(m) for m in example.messages]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last_user]["content"] += suffix
    return messages


def encode_prompts(tokenizer, examples, cfg: TrainConfig) -> tuple[list, list[list[int]], int]:
    """Chat-formatted prompt ids; prompts over `data.max_prompt_length` are dropped (counted) or
    rejected, as `data.long_prompts` says. Returns (kept examples, their ids, dropped count)."""
    from ngrpo.evaluation import build_prompts

    ids = build_prompts(tokenizer, [_with_suffix(e, cfg.data.prompt_suffix) for e in examples])
    limit = cfg.data.max_prompt_length
    kept = [(e, p) for e, p in zip(examples, ids, strict=True) if len(p) <= limit]
    dropped = len(examples) - len(kept)
    if dropped and cfg.data.long_prompts == "reject":
        raise NgrpoError(
            f"{dropped} training prompts are longer than data.max_prompt_length="
            f"{cfg.data.max_prompt_length}; raise it or set data.long_prompts=drop"
        )
    if not kept:
        raise NgrpoError(
            f"no training prompt fits data.max_prompt_length={cfg.data.max_prompt_length}"
        )
    return [e for e, _ in kept], [p for _, p in kept], dropped


# ------------------------------------------------------------------------------ checkpoints


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are never listed)."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp_dir)`, then rename into `target` (replacing it): never a half-written target."""
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    old = target.parent / f".old-{target.name}-{os.getpid()}"
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    if old.exists():
        shutil.rmtree(old)


def _recover_interrupted_writes(run_dir: Path) -> None:
    """Clean up after a process killed inside `_write_atomically`: a target renamed away but not
    yet replaced gets its previous version back; unfinished temporary directories are deleted."""
    for parent in (run_dir, run_dir / CHECKPOINTS):
        if not parent.is_dir():
            continue
        for old in parent.glob(".old-*"):
            target = parent / old.name.removeprefix(".old-").rsplit("-", 1)[0]
            if target.exists():
                shutil.rmtree(old)
            else:
                old.rename(target)
        for tmp in parent.glob(".tmp-*"):
            shutil.rmtree(tmp)


def _save_model(directory: Path, model, tokenizer) -> None:
    """A Hugging Face model directory (safetensors) that transformers and vLLM can load; the
    tokenizer loads back with a plain `AutoTokenizer` (`ngrpo.tokenizer.save_tokenizer`)."""
    from ngrpo.tokenizer import save_tokenizer

    model.save_pretrained(str(directory), safe_serialization=True)
    save_tokenizer(tokenizer, directory)


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, trainer_state: dict, keep: int):
    def write(tmp: Path) -> None:
        _save_model(tmp, model, tokenizer)
        torch.save(trainer_state, tmp / STATE_FILE)  # written last: marks completeness

    target = run_dir / CHECKPOINTS / f"step-{step:06d}"
    _write_atomically(target, write)
    for stale in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(stale)
    return target


def _rng_state() -> dict:
    """RNG states as tensors (loadable with `weights_only=True`)."""
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor(internal, dtype=torch.int64),  # (625,) Mersenne Twister words
        "python_version": version,
        "python_gauss": gauss,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    internal = tuple(int(x) for x in state["python"].tolist())
    random.setstate((state["python_version"], internal, state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


STATE_KEYS = ("step", "best", "skipped", "optimizer", "scheduler", "sampler", "rng")


def load_trainer_state(path: Path) -> dict:
    """A checkpoint's `trainer_state.pt`, unpickled with `weights_only=True`, or `NgrpoError`."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - UnpicklingError, zip errors, EOF: all unreadable
        reason = (str(err).strip().splitlines() or [""])[0]
        raise NgrpoError(
            f"{path} cannot be loaded safely ({type(err).__name__}: {reason}); it holds objects "
            "other than tensors and plain containers, or is damaged"
        ) from None
    missing = [key for key in STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise NgrpoError(f"{path} is not an ngrpo trainer state (missing {', '.join(missing)})")
    return state


# ------------------------------------------------------------------------------------ the run


@dataclass
class Run:
    """Everything a step needs, built once by `_setup`."""

    cfg: TrainConfig
    run_dir: Path
    accelerator: object  # accelerate's Accelerator, or ngrpo.sharding.FsdpStrategy around it
    model: object  # the policy module (ngrpo.policy), wrapped by DDP or sharded by FSDP
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
    from ngrpo.exploration import answer_start_ids
    from ngrpo.models import load_model, load_tokenizer, resolve_model_path
    from ngrpo.neighbors import NeighborIndex
    from ngrpo.policy import SoftInputPolicy
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
    base_path = resolve_model_path(cfg.model.path)
    latest = checkpoint_dirs(run_dir)[-1] if resume and checkpoint_dirs(run_dir) else None
    state = load_trainer_state(latest / STATE_FILE) if latest is not None else None
    if resume and latest is None:
        log.warning("no complete checkpoint in %s: starting from step 0", run_dir)
    weights = latest if latest is not None else base_path
    lora = cfg.model.lora.enabled
    if latest is not None:
        from ngrpo.lora import check_checkpoint_kind, resume_base

        check_checkpoint_kind(latest, lora)  # model.lora.r changed since the run started
        if lora:
            base_path = resume_base(latest, base_path)  # the base the adapter was trained on
    tokenizer = load_tokenizer(base_path)
    peft_model = None
    # Master weights stay fp32 (LoRA: the frozen base and the adapters, `ngrpo.lora`); bf16 /
    # fp16 compute comes from accelerate's autocast.
    if lora:
        from ngrpo.lora import load_policy

        # The frozen base needs no fp32 master copy: it is held in the compute dtype.
        peft_model, policy = load_policy(
            cfg.model.lora, base_path, latest, accelerator.device, base_dtype=dtype
        )
    else:
        policy = load_model(weights, accelerator.device, torch.float32)
    if cfg.model.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    disable_dropout(policy)  # the learner must see exactly what the rollout saw (replay)
    policy.train()
    vocab = policy.get_input_embeddings().weight.shape[0]
    cfg.exploration.validate(vocab_size=vocab)
    ref_model = None
    if cfg.train.beta > 0 and lora:  # the policy itself with its adapters disabled: no copy
        ref_model = policy
    elif cfg.train.beta > 0:
        ref_model = load_model(base_path, accelerator.device, dtype).requires_grad_(False)

    module, copy = SoftInputPolicy(policy), None
    if cfg.train.strategy == "fsdp" and accelerator.num_processes > 1:
        from ngrpo.sharding import FsdpStrategy, RolloutCopy, shard_policy

        rollout_model = load_model(weights, accelerator.device, dtype)  # full, compute dtype
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


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines of steps after `step` (logged before an interruption; redone)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by the interruption
        if row.get("step", 0) <= step:
            keep.append(line if line.endswith("\n") else line + "\n")
    path.write_text("".join(keep), encoding="utf-8")


# Metrics summed over processes (totals and throughputs); every other metric is averaged.
SUMMED_METRICS = (
    "rollout/tokens", "rollout/mixed_tokens", "rollout/tokens_per_s", "learner/tokens_per_s",
)  # fmt: skip
MAX_METRICS = ("memory/peak_bytes",)  # the largest over processes (what must fit on each)


def _reduce(run: Run, metrics: dict[str, float]) -> dict[str, float]:
    """Metrics over all processes: sums for `SUMMED_METRICS`, maxima for `MAX_METRICS`, means for
    the rest (identity in a single process). Every process must hold the same keys (they do: same
    code, same config)."""
    world = run.accelerator.num_processes
    if world == 1:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
    gathered = run.accelerator.gather(values.to(run.accelerator.device)).view(world, -1).cpu()
    sums, maxima = gathered.sum(0), gathered.max(0).values  # (K,), (K,)
    return {
        key: float(maxima[i]) if key in MAX_METRICS
        else float(sums[i]) if key in SUMMED_METRICS else float(sums[i]) / world
        for i, key in enumerate(keys)
    }  # fmt: skip


# ------------------------------------------------------------------------------------ one step


def _rollout_round(
    run: Run, indices: list[int], round_: int, reward_metrics: list[dict],
    slots: list[int] | None = None,
):  # fmt: skip
    """Rollouts with exploration on for this process's prompt `indices`, and their rewards.

    Returns (batch, texts, rewards (N,)) and appends the round's reward metrics to
    `reward_metrics`. `slots`: each prompt's position in the round's global prompt list (default
    0, 1, ...). Each generation batch is seeded from (seed, step, round, global position of its
    first prompt) (`ngrpo.sharding.data_parallel`), so rollouts do not depend on the world size."""
    from ngrpo.rollout import EngineOptions, SamplingParams, generate
    from ngrpo.rollout.batch import concat_batches
    from ngrpo.sharding.data_parallel import generation_batches, rollout_seed

    cfg, acc = run.cfg, run.accelerator
    first = list(range(len(indices))) if slots is None else slots
    parts = []
    for start, count in generation_batches(
        len(indices), cfg.rollout.num_generations, cfg.rollout.generation_batch_size
    ):
        with acc.autocast():
            parts.append(generate(
                run.policy, [run.prompts[i] for i in indices[start : start + count]],
                SamplingParams(
                    n=cfg.rollout.num_generations, temperature=cfg.rollout.temperature,
                    top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k,
                    max_new_tokens=cfg.rollout.max_completion_length,
                ),
                eos_token_id=run.tokenizer.eos_token_id, pad_token_id=run.tokenizer.pad_token_id,
                exploration=cfg.exploration, answer_start_ids=run.answer_start_ids,
                training=True, seed=rollout_seed(cfg.seed, run.step, round_, first[start]),
                batch_size=cfg.rollout.generation_batch_size, neighbor_index=run.neighbor_index,
                engine=EngineOptions(cfg.rollout.kv_cache, cfg.rollout.cuda_graphs),
            ))  # fmt: skip
    batch = concat_batches(parts, run.tokenizer.pad_token_id)
    # weighted reward components (built-in graders and user functions)
    response_ids = batch.responses()
    texts = [run.tokenizer.decode(r, skip_special_tokens=True) for r in response_ids]
    examples = [run.examples[indices[int(i)]] for i in batch.prompt_index]
    totals, metrics = run.rewards.compute(
        texts, [e.prompt for e in examples], [e.columns for e in examples],
        [e.answer for e in examples], response_ids,
    )  # fmt: skip
    reward_metrics.append(metrics)
    return batch, texts, torch.tensor(totals)  # (N,)


def _merge_round_metrics(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Reward-component metrics of a step's rollout rounds: error counts summed, means averaged
    over rounds (dynamic sampling: every round drawn, not only the kept groups)."""
    merged: dict[str, float] = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds if key in r]
        merged[key] = sum(values) if key.endswith("/errors") else sum(values) / len(values)
    return merged


def _dynamic_rollouts(run: Run, reward_metrics: list[dict]):
    """DAPO dynamic sampling (single process): `ngrpo.dynamic_sampling.collect` with this run's
    sampler and rollouts."""
    from ngrpo.dynamic_sampling import collect

    cfg = run.cfg
    return collect(
        run.sampler.take,
        lambda indices, round_: _rollout_round(run, indices, round_, reward_metrics),
        need=cfg.train.prompts_per_step, group_size=cfg.rollout.num_generations,
        max_rounds=cfg.train.max_sampling_rounds, pad_token_id=run.tokenizer.pad_token_id,
    )  # fmt: skip


def _train_step(run: Run) -> dict[str, float]:
    from ngrpo.diagnostics import neighbor_synonym_frac, rollout_diagnostics, split_groups
    from ngrpo.losses import group_advantages
    from ngrpo.memory.usage import peak_bytes, reset_peak
    from ngrpo.sharding.data_parallel import process_prompt_slots

    cfg, acc = run.cfg, run.accelerator
    world, rank = acc.num_processes, acc.process_index
    reset_peak(acc.device)  # `memory/peak_bytes`: this step's peak, rollout to optimizer step
    # 1-2. this process's slice of each mini-batch of the step's prompts (the same global order
    # for every process),
    # rollouts with exploration on and their rewards (dynamic sampling: several rounds)
    started, round_metrics = time.perf_counter(), []
    if cfg.train.dynamic_sampling:
        batch, texts, rewards, sampling_metrics = _dynamic_rollouts(run, round_metrics)
    else:
        indices = run.sampler.take(cfg.train.prompts_per_step)
        slots = process_prompt_slots(
            cfg.train.prompts_per_step, cfg.train.mini_batch_prompts, world, rank
        )  # this process's slice of every mini-batch
        batch, texts, rewards = _rollout_round(
            run, [indices[i] for i in slots], 0, round_metrics, slots=slots
        )
        sampling_metrics = {}
    rollout_s = time.perf_counter() - started
    reward_metrics = _merge_round_metrics(round_metrics)
    # 3. group-normalised advantages
    groups = rewards.view(-1, cfg.rollout.num_generations)  # (P, G)
    advantages = group_advantages(groups, scale=cfg.train.scale_rewards).reshape(-1)  # (N,)
    # 4. policy update on the recorded inputs
    started = time.perf_counter()
    learner = update_policy(
        run.model, run.optimizer, run.scheduler, batch, advantages.to(batch.logprobs.device),
        run.params, ref_model=run.ref_model, accelerator=acc, neighbor_index=run.neighbor_index,
        ref_context=run.ref_context,
    )  # fmt: skip
    if run.sharded:  # the rollout copy takes the new weights; the neighbour index follows
        run.rollout_copy.refresh()
        if run.neighbor_index is not None:
            run.neighbor_index.invalidate()
    learner_s = time.perf_counter() - started
    trained_tokens = float(batch.response_mask.sum()) * cfg.train.num_iterations  # × PPO epochs
    metrics = {
        "reward/mean": float(rewards.mean()),
        "reward/accuracy": float((rewards > 0).float().mean()),
        "reward/std_in_group": float(groups.std(dim=1).mean()) if groups.shape[1] > 1 else 0.0,
        **reward_metrics,
        **{k: v for k, v in batch.stats.items() if k != "rollout/seconds"},
        **sampling_metrics,
        **learner,
        **rollout_diagnostics(
            split_groups(texts, cfg.rollout.num_generations), groups.tolist(), batch.stats
        ),
        "time/rollout_s": rollout_s,
        "time/learner_s": learner_s,
        "learner/tokens_per_s": trained_tokens / max(learner_s, 1e-9),
        "train/lr": run.scheduler.get_last_lr()[0],
        "memory/peak_bytes": float(peak_bytes(acc.device)),
    }
    if run.variant_classes is not None:
        response_ids = batch.soft_inputs.ids[:, batch.prompt_ids.shape[1] :]  # (N, T, K)
        metrics["rollout/neighbor_synonym_frac"] = neighbor_synonym_frac(
            response_ids, batch.mixed, run.variant_classes
        )
    return {**_reduce(run, metrics), "train/world_size": float(world)}


def _evaluate(run: Run) -> dict[str, float]:
    from ngrpo.evaluation import eval_metrics, evaluate

    cfg, metrics = run.cfg, {}
    with run.accelerator.autocast():
        for name, examples in run.eval_sets.items():
            result = evaluate(
                run.policy, run.tokenizer, examples, n=cfg.eval.n,
                temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.seed, pool=run.pool,
            )  # fmt: skip
            metrics.update(eval_metrics(name, result.summary))
    return metrics


def _saved_model(run: Run):
    """What a checkpoint holds: the adapter (peft format) of a LoRA run, else the whole model."""
    return run.peft_model if run.peft_model is not None else run.policy


def _trainer_state(run: Run) -> dict:
    from ngrpo.sharding.checkpoint import OPTIMIZER_IN_DCP

    optimizer = OPTIMIZER_IN_DCP if run.sharded else run.optimizer.state_dict()
    return {
        "step": run.step, "best": run.best, "skipped": run.skipped_total,
        "optimizer": optimizer, "scheduler": run.scheduler.state_dict(),
        "sampler": run.sampler.state_dict(), "rng": _rng_state(),
    }  # fmt: skip


def _log(run: Run, row: dict, writer) -> None:
    if not run.accelerator.is_main_process:
        return
    with (run.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    if writer is not None:
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "step":
                writer.add_scalar(key, value, row["step"])


def _tensorboard(run: Run):
    if not (run.cfg.logging.tensorboard and run.accelerator.is_main_process):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise NgrpoError(
            "logging.tensorboard=true needs the tensorboard package: "
            "pip install 'ngrpo[tensorboard]'"
        ) from err
    return SummaryWriter(str(run.run_dir / "tensorboard"))


def _maybe_eval(run: Run, writer, progress: Progress | None) -> None:
    cfg = run.cfg
    due = (run.step == 0 and cfg.eval.at_start) or (
        cfg.eval.every > 0 and run.step > 0
        and (run.step % cfg.eval.every == 0 or run.step == cfg.train.steps)
    )  # fmt: skip
    if not due or not cfg.data.eval_sets:
        return
    if run.accelerator.is_main_process:
        metrics = _evaluate(run)
        _log(run, {"step": run.step, "type": "eval", **metrics}, writer)
        if progress is not None:
            progress("eval", run.step, cfg.train.steps, metrics)
        value = metrics.get(cfg.eval.best_metric) if cfg.eval.best_metric else None
        if cfg.eval.best_metric and value is None:
            raise NgrpoError(
                f"eval.best_metric {cfg.eval.best_metric!r} is not among the evaluation metrics: "
                f"{', '.join(sorted(metrics))}"
            )
        if value is not None and (run.best is None or value > run.best):
            run.best = value

            def write(tmp: Path) -> None:
                _save_model(tmp, _saved_model(run), run.tokenizer)
                (tmp / "best.json").write_text(json.dumps({"step": run.step, "value": value}))

            _write_atomically(run.run_dir / "best", write)
    run.accelerator.wait_for_everyone()


def train(
    cfg: TrainConfig,
    resume: bool = False,
    progress: Progress | None = None,
    reward_funcs: list | None = None,
) -> Path:
    """Run (or resume) training; returns the run directory.

    `progress(kind, step, total, metrics)` is called after every step (`kind="train"`) and every
    evaluation (`kind="eval"`); the CLI draws its progress bar and tables from it.
    `reward_funcs`: (callable or spec, weight) pairs that replace `cfg.train.reward(s)` (the Python
    API records their specs in `cfg.train.rewards` before calling this).
    """
    run_dir = Path(cfg.output_dir).expanduser()
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise NgrpoError(
            f"{str(run_dir)!r} already holds a run; resume it with --resume {run_dir} or choose "
            "another output_dir=..."
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NgrpoError(f"cannot create output_dir {str(run_dir)!r}: {err.strerror}") from err
    run = _setup(cfg, run_dir, resume, reward_funcs)
    if run.accelerator.is_main_process:
        save_config(cfg, run_dir / "config.yaml")
        log.info("derived values: %s", derived_values(cfg))
    writer = _tensorboard(run)
    try:
        if run.step == 0:
            _maybe_eval(run, writer, progress)
        while run.step < cfg.train.steps:
            metrics = _train_step(run)
            run.step += 1
            run.skipped_total += int(metrics["train/skipped_updates"])
            metrics["train/skipped_total"] = float(run.skipped_total)
            metrics["train/dropped_prompts"] = float(run.dropped_prompts)
            _log(run, {"step": run.step, "type": "train", **metrics}, writer)
            if progress is not None:
                progress("train", run.step, cfg.train.steps, metrics)
            _maybe_eval(run, writer, progress)
            save_every = cfg.logging.save_every
            if run.step == cfg.train.steps or (save_every and run.step % save_every == 0):
                if run.sharded:
                    from ngrpo.sharding.checkpoint import save_sharded_checkpoint

                    save_sharded_checkpoint(run, run.step, _trainer_state(run))
                elif run.accelerator.is_main_process:
                    save_checkpoint(
                        run_dir, run.step, _saved_model(run), run.tokenizer, _trainer_state(run),
                        cfg.logging.keep_last,
                    )  # fmt: skip
                run.accelerator.wait_for_everyone()
    finally:
        run.rewards.close()
        run.pool.close()
        if writer is not None:
            writer.close()
    return run_dir


def load_run_config(run_dir: str | Path, overrides=()) -> TrainConfig:
    """The resolved configuration saved in a run directory (for `--resume`)."""
    from ngrpo.config import load_config

    path = Path(run_dir).expanduser() / "config.yaml"
    if not path.is_file():
        raise NgrpoError(f"{str(run_dir)!r} is not a run directory: no config.yaml")
    return load_config(path, overrides)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All rows of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
