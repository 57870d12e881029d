"""Checkpoints of a run: the model and trainer state saved at a step (atomically,
`ngrpo.utils.io`), recovery after an interruption, and reading them back on `--resume`.

Run directory (`output_dir`) parts written here:
- `checkpoints/step-NNNNNN/`: Hugging Face model (a LoRA run: the peft adapter, `ngrpo.models.lora`)
  + tokenizer (safetensors) and `trainer_state.pt`
  (optimizer, scheduler, RNG states, step, data position, best metric). The state holds only
  tensors, numbers, strings and plain containers (RNG states as tensors) and is read back with
  `torch.load(weights_only=True)`: a run directory from elsewhere cannot run code on `--resume`.
  Each is written to a temporary directory and renamed into place, so a process killed while
  saving leaves the previous checkpoint intact; only complete `step-*` directories are read back.
  Under FSDP the optimizer state is in `optimizer/` instead (`save_sharded_checkpoint`; the
  format and its loading are `ngrpo.sharding.checkpoint`);
- `best/` goes through the same atomic write (`ngrpo.trainer.loop`); on resume a `best/` from the
  discarded trajectory is replaced by the best step's checkpoint or removed (`_reconcile_best`).

Resume (`resume=True`): continues from the newest complete checkpoint with the same data order,
RNG streams and optimizer state, so 2 + 2 steps equal 4 straight steps (tested). Metrics lines of
steps after that checkpoint (written before a crash) are dropped and redone (all of them when there
is no checkpoint yet; `_truncate_metrics`); leftovers of an interrupted save are cleaned up, and a
`best/` caught between its two renames gets its previous version back
(`_recover_interrupted_writes`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from ngrpo.sharding.checkpoint import OPTIMIZER_DIR
from ngrpo.sharding.strategy import PREFIX
from ngrpo.trainer.waits import wait_for_main
from ngrpo.utils.errors import NgrpoError
from ngrpo.utils.io import (
    TMP_PREFIX,
    DiskError,
    disk_problem,
    recover_interrupted_writes,
    write_atomically,
    write_text_atomically,
)
from ngrpo.utils.progress import no_library_progress

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are never listed)."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _recover_interrupted_writes(run_dir: Path) -> None:
    """Clean up after a process killed while writing a checkpoint or `best/`
    (`ngrpo.utils.io.recover_interrupted_writes` on the run directory and on `checkpoints/`)."""
    for parent in (run_dir, run_dir / CHECKPOINTS):
        recover_interrupted_writes(parent)


def _save_model(directory: Path, model, tokenizer) -> None:
    """A Hugging Face model directory (safetensors) that transformers and vLLM can load; the
    tokenizer loads back with a plain `AutoTokenizer` (`ngrpo.models.tokenizer.save_tokenizer`)."""
    from ngrpo.models.tokenizer import save_tokenizer

    with no_library_progress():  # library use: no "Writing model shards" bar
        model.save_pretrained(str(directory), safe_serialization=True)
    save_tokenizer(tokenizer, directory)


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, trainer_state: dict, keep: int):
    def write(tmp: Path) -> None:
        _save_model(tmp, model, tokenizer)
        torch.save(trainer_state, tmp / STATE_FILE)  # written last: marks completeness

    target = run_dir / CHECKPOINTS / f"step-{step:06d}"
    write_atomically(target, write)
    for stale in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(stale)
    return target


def _rank0_pid(device: torch.device) -> int:
    """Rank 0's process id, on every rank. The tensor lives on the accelerator's `device`: NCCL
    (GPUs) has no CPU backend, so a CPU tensor would fail there."""
    pid = torch.tensor([os.getpid()], dtype=torch.int64, device=device)
    dist.broadcast(pid, src=0)
    return int(pid.item())


def save_sharded_checkpoint(run, step: int, trainer_state: dict) -> Path:
    """Write `checkpoints/step-N/` of a sharded run (all ranks call this; the layout is in
    `ngrpo.sharding.checkpoint`'s docstring); returns its path. `run` is the trainer's `Run`
    (sharded policy in `run.model`, the rollout copy in `run.policy`)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    from ngrpo.models.tokenizer import save_tokenizer

    root = run.run_dir / CHECKPOINTS
    target = root / f"step-{step:06d}"
    # the optimizer shards' staging directory: an unfinished one is deleted on resume
    pid = _rank0_pid(run.accelerator.device)
    staging = root / f"{TMP_PREFIX}{target.name}-{OPTIMIZER_DIR}-{pid}"
    main = dist.get_rank() == 0
    if main:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    dist.barrier()
    try:
        dcp.save(get_optimizer_state_dict(run.model, run.optimizer), checkpoint_id=str(staging))
    except Exception as err:  # DCP raises on every rank when one rank's write failed
        reason = disk_problem(root, err)
        if reason is None:
            raise
        if main:
            shutil.rmtree(staging, ignore_errors=True)
        raise DiskError(target, reason) from err
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    gathered = get_model_state_dict(run.model, options=options)  # full on rank 0, else empty
    if main:
        weights = {name.removeprefix(PREFIX): value for name, value in gathered.items()}

        def write(tmp: Path) -> None:
            with no_library_progress():
                run.policy.save_pretrained(str(tmp), state_dict=weights, safe_serialization=True)
            save_tokenizer(run.tokenizer, tmp)
            staging.rename(tmp / OPTIMIZER_DIR)
            torch.save(trainer_state, tmp / STATE_FILE)  # written last: marks completeness

        try:
            write_atomically(target, write)
        except DiskError:
            shutil.rmtree(staging, ignore_errors=True)  # not yet moved into the checkpoint
            raise
        for stale in checkpoint_dirs(run.run_dir)[: -run.cfg.logging.keep_last]:
            shutil.rmtree(stale)
    del gathered
    wait_for_main(run.accelerator, run.waits)  # rank 0 wrote the model: no collective timeout
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
        # one state per GPU visible at save time; resume may see fewer (another world size, node
        # or CUDA_VISIBLE_DEVICES) or more: restore the ones present, leave the others as seeded
        saved, present = state["cuda"], torch.cuda.device_count()
        for device, gpu_state in enumerate(saved[:present]):
            torch.cuda.set_rng_state(gpu_state, device)
        if len(saved) != present:
            log.warning("the checkpoint holds CUDA RNG states of %d GPUs, %d are visible: "
                        "restored %d", len(saved), present, min(len(saved), present))  # fmt: skip


STATE_KEYS = ("step", "best", "skipped", "optimizer", "scheduler", "sampler", "rng")
OOM_BUDGET = "oom_token_budget"  # optional: the token budget `train.oom_retry` lowered


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


def _checkpoint_problem(directory: Path) -> tuple[str | None, dict | None]:
    """(why `directory` cannot be resumed from, None) or (None, its trainer state): the state
    loads safely, the weight files open (safetensors headers cover the files), the JSON files
    parse and a sharded run's optimizer metadata is safe to read."""
    from safetensors import safe_open

    from ngrpo.models.load import MODEL_JSON_FILES, check_json_files
    from ngrpo.sharding.checkpoint import OPTIMIZER_IN_DCP, check_dcp_metadata

    try:
        state = load_trainer_state(directory / STATE_FILE)
        check_json_files(directory, MODEL_JSON_FILES)
        weights = sorted(directory.glob("*.safetensors"))
        if not weights:
            raise NgrpoError(f"{directory} holds no safetensors weights")
        for path in weights:
            try:
                with safe_open(str(path), framework="pt"):
                    pass
            except Exception as err:  # noqa: BLE001 - SafetensorError and I/O errors alike
                raise NgrpoError(f"{path} is corrupted or truncated ({err})") from None
        if state["optimizer"] == OPTIMIZER_IN_DCP:
            check_dcp_metadata(directory / OPTIMIZER_DIR)
    except NgrpoError as err:
        return str(err), None
    return None, state


def resume_checkpoint(run_dir: Path) -> tuple[Path | None, dict | None]:
    """The newest complete checkpoint that can be resumed from and its trainer state ((None,
    None) without any). A damaged one is skipped with a warning naming it and why, in favour of
    the previous one; when every checkpoint is damaged, the newest one's problem is raised as an
    `NgrpoError` (starting over silently would discard the run)."""
    found = checkpoint_dirs(run_dir)
    first_problem = None
    for directory in reversed(found):
        problem, state = _checkpoint_problem(directory)
        if problem is None:
            return directory, state
        first_problem = first_problem or problem
        log.warning("skipping checkpoint %s: %s; trying the one before it", directory.name,
                    problem)  # fmt: skip
    if first_problem is not None:
        raise NgrpoError(first_problem)
    return None, None


BEST = "best"
BEST_STEP = "best_step"  # optional in trainer_state.pt: the step whose evaluation set `best`
# optional in trainer_state.pt: a stop cut this step's evaluation short; `--resume` runs it first
EVAL_PENDING = "eval_pending"


def _reconcile_best(
    run_dir: Path, step: int, best: float | None, best_step: int | None
) -> tuple[float | None, int | None]:
    """`best/` after resuming from `step` (-1: from scratch), whose trainer state says the best
    metric so far is `best`, reached at `best_step`; returns the (best, best_step) to go on with.

    A `best/` whose best.json names a later step came from the discarded trajectory (its eval row
    is truncated from the log). It is replaced by the model of `best_step`'s checkpoint when that
    checkpoint is still on disk; otherwise it is removed and the best is forgotten, so the next
    evaluation writes `best/` again. Either way with a warning naming the step."""
    info = run_dir / BEST / "best.json"
    if not info.is_file():
        return best, best_step
    try:
        saved = int(json.loads(info.read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        saved = step + 1  # unreadable: treated as not belonging to the kept trajectory
    if saved <= step:
        return best, best_step
    source = None if best_step is None else run_dir / CHECKPOINTS / f"step-{best_step:06d}"
    if source is not None and (source / STATE_FILE).is_file():

        def write(tmp: Path) -> None:
            for item in source.iterdir():
                if item.name in (STATE_FILE, OPTIMIZER_DIR):
                    continue
                copy = shutil.copytree if item.is_dir() else shutil.copy2
                copy(item, tmp / item.name)
            (tmp / "best.json").write_text(json.dumps({"step": best_step, "value": best}))

        write_atomically(run_dir / BEST, write)
        log.warning("best/ held step %d, after the resumed step %d (a discarded trajectory): "
                    "replaced by step %d's checkpoint", saved, step, best_step)  # fmt: skip
        return best, best_step
    shutil.rmtree(run_dir / BEST)
    log.warning("best/ held step %d, after the resumed step %d (a discarded trajectory), and the "
                "best step's checkpoint is gone: removed; the next evaluation writes it again",
                saved, step)  # fmt: skip
    return None, None


def _truncate_metrics(path: Path, step: int, eval_pending: bool = False) -> None:
    """Drop metric lines of steps after `step` (logged before an interruption; redone), and with
    `eval_pending` the evaluation lines of `step` itself (the checkpoint's evaluation is run
    again). The log is rewritten atomically: a kill during the rewrite leaves it as it was."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by the interruption
        redone = eval_pending and row.get("step") == step and row.get("type") == "eval"
        if row.get("step", 0) <= step and not redone:
            keep.append(line if line.endswith("\n") else line + "\n")
    write_text_atomically(path, "".join(keep))
