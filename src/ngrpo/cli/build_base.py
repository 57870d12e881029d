"""`ngrpo build-base`: build (or re-use) the embedded tokenizer and base model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ngrpo.cli._common import progress_bar


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "build-base",
        help="Build the embedded tokenizer and small Qwen2 base model",
        description=(
            "Build the embedded word-level tokenizer and a small Qwen2ForCausalLM warm-started on "
            "the arithmetic task (deterministic for a seed). Re-uses an existing build. Prints "
            "the model directory as the last line."
        ),
    )
    parser.add_argument(
        "--out", type=Path, default=None,
        help="model directory (default: $NGRPO_HOME or ~/.cache/ngrpo, base-v<N>-seed<S>)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="build seed (default 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a build exists")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from ngrpo.models.base_model import BUILD_INFO, ensure_base_model

    with progress_bar() as update:
        model_dir = ensure_base_model(args.out, seed=args.seed, force=args.force, progress=update)
    info = json.loads((model_dir / BUILD_INFO).read_text())
    acc = info["accuracy_t1"]
    print(
        f"parameters {info['parameters']:,} · vocabulary {info['vocab_size']} · "
        f"built in {info['build_seconds']} s · sampled at temperature 1.0: "
        f"ID pass@1 {acc['arith-id']['pass@1']:.3f} pass@8 {acc['arith-id']['pass@8']:.3f}, "
        f"OOD pass@1 {acc['arith-ood']['pass@1']:.3f} pass@8 {acc['arith-ood']['pass@8']:.3f}"
    )
    print(model_dir)
    return 0
