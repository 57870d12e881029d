"""`ngrpo plan`: estimated peak GPU memory per process for a training config, before any run.

    ngrpo plan --config r1_distill_qwen_7b_ngrpo --world-size 8 --strategy fsdp
    ngrpo plan --config tiny_ngrpo --lora-r 16 --json
    ngrpo plan --config my.yaml model.path=/models/x train.micro_batch_size=2

Prints the components of the estimate (`ngrpo.memory.estimate`), the total of each phase
(rollout, learner, optimizer step), the peak, and whether it fits on 24 / 40 / 80 / 141 GB GPUs.
Required keys left at `???` are not needed except `model.path`, whose shape is read from its
config.json (or `--model-shape PRESET`, or guessed from an R1 config's name). The plan is for this
machine's device (CUDA when available, else CPU: float32) unless `--device` says otherwise; sizes
below 1 GB are shown in MB. A prompt + response longer than the model's positions is an error,
as in `ngrpo train` (`ngrpo.models.limits`).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

HELP = "Estimate peak memory per GPU for a config (strategy, world size, LoRA, micro-batch)"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help=HELP,
        description=HELP + ". An estimate from the model's shape and the config "
        "(ngrpo.memory.estimate).",
    )  # fmt: skip
    parser.add_argument(
        "--config",
        required=True,
        help="YAML file, or a shipped name (r1_distill_qwen_7b_ngrpo, ...)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    parser.add_argument("--world-size", type=int, default=1, help="processes (GPUs), default 1")
    parser.add_argument(
        "--strategy", choices=("ddp", "fsdp"), help="default: the config's train.strategy, else ddp"
    )
    parser.add_argument("--lora-r", type=int, help="LoRA rank (0: off); default model.lora.r")
    parser.add_argument(
        "--model-shape",
        metavar="PRESET",
        help="r1-distill-1.5b | r1-distill-7b | tiny, instead of model.path",
    )
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default=None,
        help="what the plan is for (cpu: float32, single-tensor AdamW); default: this machine's "
        "(cuda when available, else cpu)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(func=handler)


def load_plan_config(source: str, overrides: list[str]):
    """The config with overrides applied and validated; keys still `???` (model.path, data.train)
    are allowed: the plan does not read them (model.path then comes from --model-shape)."""
    from ngrpo.config import load_config, missing_keys, set_field, validate_config

    cfg = load_config(source, overrides, validate=False)
    probe = copy.deepcopy(cfg)  # validated with placeholders in the required keys
    for key in missing_keys(cfg):
        set_field(probe, key, "plan-placeholder")
    validate_config(probe)
    return cfg


def handler(args: argparse.Namespace) -> int:
    from ngrpo.memory import estimate, inputs_from_config, shape_for_config
    from ngrpo.models.limits import check_positions
    from ngrpo.utils.errors import NgrpoError

    if args.world_size < 1:
        raise NgrpoError(f"--world-size must be >= 1, got {args.world_size}")
    if args.lora_r is not None and args.lora_r < 0:
        raise NgrpoError(f"--lora-r must be >= 0 (0: off), got {args.lora_r}")
    cfg = load_plan_config(args.config, args.overrides)
    shape = shape_for_config(cfg, args.config, args.model_shape)
    check_positions(
        _position_limit(cfg, args.config, args.model_shape),
        ("data.max_prompt_length", cfg.data.max_prompt_length),
        ("rollout.max_completion_length", cfg.rollout.max_completion_length), cfg.model.path,
    )  # fmt: skip
    plan = estimate(inputs_from_config(
        cfg, shape, world_size=args.world_size, strategy=args.strategy, lora_r=args.lora_r,
        device=args.device or _machine_device(),
    ))  # fmt: skip
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
        return 0
    _render(plan, args.config)
    return 0


def _machine_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _position_limit(cfg, config_name: str, preset: str | None) -> int | None:
    """The position limit of the model the plan is for (as `shape_for_config` finds its shape);
    None when unknown."""
    from ngrpo.memory.from_config import SHAPE_HINTS
    from ngrpo.models.limits import position_limit_of_dir
    from ngrpo.models.presets import PRESETS

    path = str(cfg.model.path)
    if preset is None and path == "base":
        from ngrpo.models.base_model import shipped_base_dir

        return position_limit_of_dir(shipped_base_dir())
    if preset is None and path != "???":
        return position_limit_of_dir(path)
    if preset is None:
        name = Path(config_name).name.lower()
        preset = next((s for h, s in SHAPE_HINTS.items() if f"_{h}_" in f"_{name}_"), None)
    return PRESETS.get(preset, {}).get("max_position_embeddings") if preset else None


def _size(n: float) -> str:
    """Bytes as GB (10⁹), or as MB below 1 GB (a small model's plan is not all zeros)."""
    return f"{n / 1e9:,.2f} GB" if n >= 1e9 else f"{n / 1e6:,.1f} MB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _render(plan, name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    x = plan.inputs
    lora = f", LoRA r={x.lora_r}" if x.lora_r else ""
    title = (f"{name}: {_count(plan.parameters)} parameters ({plan.trainable_parameters:,} "
             f"trained), {x.device}, {x.strategy} × {x.world_size}, {x.dtype}{lora}, micro-batch "
             f"{x.micro_rows} × {x.micro_width} tokens"
             f"{', checkpointing' if x.gradient_checkpointing else ''}")  # fmt: skip
    table = Table(title=title, title_justify="left")
    table.add_column("component")
    table.add_column("phases")
    table.add_column("size", justify="right")
    table.add_column("note")
    for c in plan.components:
        phases = "all" if len(c.phases) == 3 else ", ".join(c.phases)
        table.add_row(c.name, phases, _size(c.bytes), c.note)
    for phase, total in plan.phase_bytes.items():
        style = "bold" if phase == plan.peak_phase else ""
        table.add_row(f"total: {phase}", "", _size(total), "", style=style)
    console = Console()
    console.print(table)
    fits = "  ".join(f"{gb}: {'yes' if ok else 'no'}" for gb, ok in plan.fits().items())
    console.print(f"peak {_size(plan.peak_bytes)} per process ({plan.peak_phase}) · fits {fits}")
    console.print("estimate: upper bound at the longest prompt + response, no allocator overhead "
                  "(keep ~10-20% headroom); see ngrpo.memory.estimate", style="dim")  # fmt: skip
