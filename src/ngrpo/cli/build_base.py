"""`ngrpo build-base`: rebuild the embedded base model with its recipe, and say how far the rebuild
lands from the base model shipped with ngrpo."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ngrpo.cli._common import progress_bar


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "build-base",
        help="Rebuild the embedded base model with its recipe; compare it with the shipped one",
        description=(
            "Build the embedded word-level tokenizer and a small Qwen2ForCausalLM warm-started on "
            "the arithmetic task: the recipe that made the base model shipped with ngrpo (which "
            "`base` always means). The outcome depends on library versions and CPU kernels, so "
            "the command reports the distance to the shipped weights (max |Δ weight|, recorded "
            "accuracy of both). Re-uses an existing build. Prints the model directory last."
        ),
    )
    parser.add_argument(
        "--out", type=Path, default=None,
        help="model directory (default: $NGRPO_HOME or ~/.cache/ngrpo, base-v<N>-seed<S>)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="build seed (default 0, as shipped)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a build exists")
    parser.set_defaults(func=handler)


def distance_line(distance: dict) -> str:
    """One line: is the build the shipped model, and if not, how far from it."""
    from ngrpo.models.base_model import SHIPPED_SHA256

    checksum = SHIPPED_SHA256["model.safetensors"][:12]
    if distance["identical"]:
        return f"shipped base (sha256 {checksum}…): identical weights"
    if distance["max_abs_diff"] is None:
        return f"shipped base (sha256 {checksum}…): differs (other architecture or parameters)"
    ours, theirs = distance["accuracy_t1"], distance["shipped_accuracy_t1"]
    accuracy = ", ".join(
        f"{split} pass@1 {ours[split]['pass@1']:.3f} here vs {theirs[split]['pass@1']:.3f}"
        for split in theirs
        if ours and split in ours
    )
    return (
        f"shipped base (sha256 {checksum}…): differs, max |Δ weight| "
        f"{distance['max_abs_diff']:.3g} (in {distance['largest_in']}), mean |Δ weight| "
        f"{distance['mean_abs_diff']:.3g}; recorded accuracy at temperature 1.0: {accuracy}"
    )


def handler(args: argparse.Namespace) -> int:
    from ngrpo.models.base_model import BUILD_INFO, compare_with_shipped, ensure_base_model

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
    print(distance_line(compare_with_shipped(model_dir)))
    print(model_dir)
    return 0
