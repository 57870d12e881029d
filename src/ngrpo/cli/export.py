"""`ngrpo export`: write a run's checkpoint as a full Hugging Face model directory.

    ngrpo export RUN_DIR OUT_DIR [--checkpoint latest|best|step-N]

A LoRA run's adapter is merged into its base (`ngrpo.trainer.export`); a full-weight checkpoint is
copied. The result loads with `AutoModelForCausalLM.from_pretrained(OUT_DIR)` (no peft) and with
vLLM.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="Write a run's checkpoint as a full Hugging Face model (LoRA adapters merged)",
        description=(
            "Write a checkpoint of RUN_DIR to OUT_DIR (new or empty) as a Hugging Face model "
            "directory with safetensors weights and the tokenizer. A LoRA run's adapter is merged "
            "into its base model; a full-weight checkpoint is copied."
        ),
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a training run directory")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="new or empty directory")
    parser.add_argument(
        "--checkpoint", default="latest", metavar="latest|best|step-N",
        help="which checkpoint (default: latest)",
    )  # fmt: skip
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from ngrpo.trainer.export import export_checkpoint

    checkpoint = export_checkpoint(args.run_dir, args.out_dir, args.checkpoint)
    print(f"exported {checkpoint} -> {args.out_dir}")
    return 0
