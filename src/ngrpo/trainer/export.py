"""`ngrpo export`: a run's checkpoint as a standalone Hugging Face model directory.

A LoRA run's checkpoint holds only the adapter (`ngrpo.models.lora`); exporting loads its base,
merges the adapter into the weights (in fp32, then cast to the dtype the base was saved in) and
writes a plain model directory (config.json, model.safetensors, generation config) + the
checkpoint's tokenizer: `AutoModelForCausalLM.from_pretrained` loads it without peft, and vLLM
serves it like any model. A full-weight checkpoint is already such a directory: its model and
tokenizer files are copied. Trainer files (`trainer_state.pt`, `best.json`) are never exported.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ngrpo.config import DTYPES
from ngrpo.models.load import adapter_base_path, load_model
from ngrpo.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, is_adapter_dir
from ngrpo.utils.errors import NgrpoError
from ngrpo.utils.progress import no_library_progress

# Files of a checkpoint that are not part of the exported model.
TRAINER_FILES = ("trainer_state.pt", "best.json")
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, "README.md")  # README.md: peft's model card


def find_checkpoint(run_dir: str | Path, which: str = "latest") -> Path:
    """The checkpoint `which` names in a run directory: `latest`, `best` or `step-N` (N with or
    without zero padding); `NgrpoError` naming what exists otherwise."""
    from ngrpo.trainer.checkpoints import CHECKPOINTS, checkpoint_dirs

    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise NgrpoError(f"run directory {str(run_dir)!r} does not exist")
    steps = checkpoint_dirs(run_dir)
    if which == "latest":
        if not steps:
            raise NgrpoError(f"{str(run_dir)!r} has no complete checkpoint under {CHECKPOINTS}/")
        return steps[-1]
    if which == "best":
        best = run_dir / "best"
        if not (best / "best.json").is_file():
            raise NgrpoError(
                f"{str(run_dir)!r} has no best/ checkpoint (written only with eval.best_metric)"
            )
        return best
    number = which.removeprefix("step-")
    if not number.isdigit():
        raise NgrpoError(f"--checkpoint must be latest, best or step-N, got {which!r}")
    by_step = {int(p.name.split("-")[1]): p for p in steps}
    if int(number) not in by_step:
        have = ", ".join(p.name for p in steps) or "none"
        raise NgrpoError(f"{str(run_dir)!r} has no checkpoint step-{number} (complete: {have})")
    return by_step[int(number)]


def _saved_dtype(model_dir: Path) -> torch.dtype:
    """The dtype a model directory's config.json says its weights are stored in (fp32 if none)."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return DTYPES.get(name) or torch.float32  # `auto` or an unknown name: fp32


def _copy_files(source: Path, out_dir: Path, skip: tuple[str, ...]) -> None:
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name not in skip:
            shutil.copy2(path, out_dir / path.name)


def export_checkpoint(run_dir: str | Path, out_dir: str | Path, which: str = "latest") -> Path:
    """Write checkpoint `which` of `run_dir` to the new (or empty) directory `out_dir` as a full
    Hugging Face model directory; returns the checkpoint exported."""
    checkpoint = find_checkpoint(run_dir, which)
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise NgrpoError(f"output directory {str(out_dir)!r} exists and is not empty")
    adapter = is_adapter_dir(checkpoint)
    if adapter:
        dtype = _saved_dtype(adapter_base_path(checkpoint))
        merged = load_model(checkpoint, "cpu", dtype)  # base named by the adapter + adapter
    out_dir.mkdir(parents=True, exist_ok=True)
    if adapter:
        with no_library_progress():
            merged.save_pretrained(str(out_dir), safe_serialization=True)
        _copy_files(checkpoint, out_dir, TRAINER_FILES + ADAPTER_FILES)  # the tokenizer files
    else:
        _copy_files(checkpoint, out_dir, TRAINER_FILES)
    return checkpoint
