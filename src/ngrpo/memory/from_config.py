"""Memory-plan inputs from a training config (`ngrpo plan`): the shape and the settings."""

from __future__ import annotations

from pathlib import Path

from ngrpo.memory.estimate import MemoryInputs
from ngrpo.memory.shape import LORA_TARGETS, ModelShape
from ngrpo.utils.errors import NgrpoError

SHAPE_HINTS = {"7b": "r1-distill-7b", "1.5b": "r1-distill-1.5b"}
"""Config-name fragments -> preset shapes, for the R1 configs whose `model.path` is `???`."""


def shape_for_config(cfg, config_name: str = "", preset: str | None = None) -> ModelShape:
    """The model shape of a training config: `preset` when given, else `model.path`'s
    config.json (`base`: the embedded base model, once built), else for a required (`???`) path
    the preset named by the config's name (`..._7b_...` -> r1-distill-7b)."""
    from ngrpo.config import MISSING

    if preset is not None:
        return ModelShape.from_preset(preset)
    path = str(cfg.model.path)
    if path == MISSING:
        name = Path(config_name).name.lower()
        for hint, shape in SHAPE_HINTS.items():
            if f"_{hint}_" in f"_{name}_".replace(".yaml", "_"):
                return ModelShape.from_preset(shape)
        raise NgrpoError(f"model.path is {MISSING}: give model.path=DIR or --model-shape PRESET")
    if path == "base":
        from ngrpo.models.base_model import shipped_base_dir

        return ModelShape.from_model_dir(shipped_base_dir())
    return ModelShape.from_model_dir(path)


def inputs_from_config(
    cfg, shape: ModelShape, *, world_size: int = 1, strategy: str | None = None,
    lora_r: int | None = None, device: str = "cuda", keep_decoder: bool | None = None,
) -> MemoryInputs:  # fmt: skip
    """`MemoryInputs` for a `TrainConfig` run on `world_size` processes of `device`.

    `strategy` / `lora_r` default to the config's `train.strategy` / `model.lora.r` when the
    config has them (else ddp / 0). `model.dtype: auto` plans bfloat16 on CUDA, float32 on CPU.
    Micro-batches are `train.micro_batch_size` rows of prompt + response at their maximum
    lengths, or as many such rows as `train.max_tokens_per_micro_batch` holds (at least one), and
    never more than a process's share of a mini-batch. `keep_decoder` defaults to the config's
    `rollout.keep_decoder` when that is true or false; its `null` (decided at run time, see the
    trainer) is planned as not kept. CUDA graphs: `rollout.cuda_graphs` on or auto, on CUDA (the
    static decoder assumed). The evaluation (`data.eval_sets` with `eval.at_start` or
    `eval.every`) decodes `max(eval.n, eval.batch_size or 64)` rows of prompt +
    `eval.max_new_tokens`."""
    from ngrpo.method.exploration import NOISE_STRATEGIES

    if not isinstance(world_size, int) or world_size < 1:
        raise NgrpoError(f"world size must be an integer >= 1, got {world_size!r}")
    lora = getattr(cfg.model, "lora", None)
    if lora_r is None:
        lora_r = getattr(lora, "r", 0) or 0
    targets = tuple(getattr(lora, "target_modules", None) or LORA_TARGETS)
    strategy = strategy or getattr(cfg.train, "strategy", "ddp")
    dtype = cfg.model.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    prompt, new = cfg.data.max_prompt_length, cfg.rollout.max_completion_length
    width = prompt + new
    rows = cfg.train.micro_batch_size
    if cfg.train.max_tokens_per_micro_batch is not None:
        rows = max(1, cfg.train.max_tokens_per_micro_batch // width)
    step_rows = max(1, cfg.train.prompts_per_step // world_size) * cfg.rollout.num_generations
    # a micro-batch never holds more than this process's share of a mini-batch
    mini_rows = max(1, cfg.train.mini_batch_prompts // world_size) * cfg.rollout.num_generations
    rows = min(rows, mini_rows)
    explore = cfg.exploration
    k = explore.mix_top_k if explore.strategy == "neighbor" else 1
    rollout = cfg.rollout
    if keep_decoder is None:
        keep_decoder = getattr(rollout, "keep_decoder", None) is True
    evaluation = getattr(cfg, "eval", None)
    evaluates = evaluation is not None and bool(getattr(cfg.data, "eval_sets", None)) and (
        evaluation.at_start or evaluation.every > 0
    )  # fmt: skip
    eval_batch = getattr(evaluation, "batch_size", None) or 64
    eval_rows = max(evaluation.n, eval_batch) if evaluates else 0  # `evaluate`'s rows
    eval_tokens = prompt + evaluation.max_new_tokens if evaluates else 0
    return MemoryInputs(
        shape=shape, micro_rows=rows, micro_width=width, response_tokens=new,
        rollout_rows=cfg.rollout.generation_batch_size or step_rows, step_rows=step_rows,
        prompt_tokens=prompt, new_tokens=new, num_generations=cfg.rollout.num_generations,
        strategy=strategy, world_size=world_size, dtype=dtype, device=device, lora_r=lora_r,
        lora_targets=targets, gradient_checkpointing=cfg.model.gradient_checkpointing,
        reference=cfg.train.beta > 0, candidates=k, noise=explore.strategy in NOISE_STRATEGIES,
        keep_decoder=keep_decoder, fp32_head=getattr(rollout, "precision", "learner") == "learner",
        cuda_graphs=device == "cuda" and getattr(rollout, "cuda_graphs", "auto") != "off",
        eval_rows=eval_rows, eval_tokens=eval_tokens,
    )  # fmt: skip
