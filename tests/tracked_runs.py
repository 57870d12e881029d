"""The short N-GRPO run that reports to every tracker (tests/test_tracking.py, tests/test_view.py
share it through conftest's session fixture `tracked_run`): 2 steps, then `--resume` for a third,
with trackers in their offline / local modes inside the test's folder."""

from __future__ import annotations

import os
from pathlib import Path

TRACKERS = ["tensorboard", "wandb", "trackio", "mlflow", "swanlab"]
PROMPTS, GROUP = 2, 2
PROJECT = "ngrpo-test"


def tracked_overrides(out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "model.path=base", f"output_dir={out}", f"train.steps={steps}",
        f"train.prompts_per_step={PROMPTS}", "train.mini_batch_prompts=1",
        f"rollout.num_generations={GROUP}", "rollout.max_completion_length=16",
        "eval.every=2", "eval.at_start=false", "eval.limit=2", "eval.n=2",
        "data.eval_sets=arith-id", "logging.save_every=1", "logging.completions_every=1",
        "exploration.mix_rate=0.5", "exploration.entropy_threshold=0.0",
        f"logging.report_to=[{','.join(TRACKERS)}]", f"logging.project={PROJECT}",
        "logging.tags=[ci]",
        *extra,
    ]  # fmt: skip


def run_tracked(root: Path) -> Path:
    """`ngrpo train` 2 steps, `--resume` to 3; returns the run directory (`root/run`; Trackio's
    store is `root/trackio`)."""
    from ngrpo.cli import main

    env = {"WANDB_MODE": "offline", "TRACKIO_DIR": str(root / "trackio"), "WANDB_SILENT": "true"}
    saved = {k: os.environ.get(k) for k in [*env, "MLFLOW_TRACKING_URI", "SWANLAB_MODE"]}
    os.environ.update(env)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("SWANLAB_MODE", None)
    try:
        out = root / "run"  # the command line, then its --resume
        assert main(["train", "--config", "tiny_ngrpo", *tracked_overrides(out, 2)]) == 0
        assert main(["train", "--resume", str(out), "train.steps=3"]) == 0
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return out
