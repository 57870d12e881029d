"""Checkpoints of sharded runs, and cross-loading between sharded and 1-process checkpoints.

A sharded run's `checkpoints/step-N/` (written by
`ngrpo.trainer.checkpoints.save_sharded_checkpoint`) is:
- a plain Hugging Face model directory (safetensors, fp32 master weights): the full state dict is
  gathered on rank 0 with CPU offload (`get_model_state_dict(full_state_dict=True,
  cpu_offload=True)`) and written by `save_pretrained(state_dict=...)`; plus the tokenizer;
- `optimizer/`: the AdamW state written by every rank with `torch.distributed.checkpoint` (DCP),
  sharded, keyed by parameter name (FQN, `model.` + the Hugging Face name), first into a
  staging directory next to the checkpoint (named with rank 0's pid, shared by all ranks) and moved
  into the temporary checkpoint directory by rank 0;
- `trainer_state.pt` (rank 0, written last, the completeness marker), as in a 1-process run except
  that its `optimizer` entry is `OPTIMIZER_IN_DCP` (the state is in `optimizer/`).

1-process checkpoints keep their format (the optimizer's own id-keyed state inside
`trainer_state.pt`). `load_optimizer_state` reads either into either kind of run; the only place
where id-keyed and FQN-keyed states are converted is `ids_to_names` / `names_to_ids`.

DCP reads its `.metadata` with a plain `pickle.load`: before any `dcp.load`, `check_dcp_metadata`
unpickles it with `MetadataUnpickler`, which only resolves the classes DCP metadata is made of, so
a run directory from elsewhere cannot run code on `--resume` (as `trainer_state.pt`, read with
`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from ngrpo.utils.errors import NgrpoError

OPTIMIZER_DIR = "optimizer"
OPTIMIZER_IN_DCP = {"format": "torch.distributed.checkpoint", "path": OPTIMIZER_DIR}
"""The `optimizer` entry of a sharded checkpoint's trainer_state.pt."""

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED = {
    (_DCP_METADATA, name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    )  # fmt: skip
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata: resolves only the classes listed in `_ALLOWED` and torch dtypes
    (`torch.float32`, ...); anything else raises `pickle.UnpicklingError`."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in DCP metadata")


def check_dcp_metadata(directory: Path) -> None:
    """`NgrpoError` naming the file unless `directory/.metadata` unpickles with
    `MetadataUnpickler` (call before `torch.distributed.checkpoint.load`)."""
    path = Path(directory) / ".metadata"
    try:
        with path.open("rb") as handle:
            MetadataUnpickler(handle).load()
    except Exception as err:  # noqa: BLE001 - disallowed class, damaged or missing: all unsafe
        reason = (str(err).strip().splitlines() or [""])[0]
        raise NgrpoError(
            f"{path} cannot be loaded safely ({type(err).__name__}: {reason}); it holds objects "
            "other than checkpoint metadata, or is damaged"
        ) from None


# ------------------------------------------------------------------ optimizer-state conversion


def ids_to_names(state: dict, names: list[str]) -> dict:
    """An optimizer's `state_dict()` (parameters numbered 0.. in `names` order) keyed by name
    instead: the FQN-keyed form of `torch.distributed.checkpoint.state_dict`."""
    return {
        "state": {names[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[int(i)] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }


def names_to_ids(state: dict, names: list[str]) -> dict:
    """The inverse of `ids_to_names`: a name-keyed optimizer state as `Optimizer.load_state_dict`
    takes it (a name missing from `names` is an `NgrpoError`)."""
    index = {name: i for i, name in enumerate(names)}
    unknown = [k for k in state["state"] if k not in index]
    unknown += [k for g in state["param_groups"] for k in g["params"] if k not in index]
    if unknown:
        raise NgrpoError(f"optimizer state of unknown parameter {unknown[0]!r}")
    return {
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]}
            for group in state["param_groups"]
        ],
    }


def parameter_names(module: torch.nn.Module) -> list[str]:
    """The policy module's trainable parameter names in `parameters()` order: the optimizer's ids
    (the trainer builds AdamW on the parameters that require grad, in this order)."""
    return [name for name, p in module.named_parameters() if p.requires_grad]


def load_optimizer_state(
    module: torch.nn.Module, optimizer, checkpoint: Path, saved, sharded: bool
) -> None:
    """Load a checkpoint's optimizer state into `optimizer` (built on `module.parameters()`,
    `module` the unwrapped policy module): `saved` is trainer_state.pt's `optimizer` entry, an
    id-keyed state (1-process checkpoint) or `OPTIMIZER_IN_DCP`. `sharded`: this run is FSDP."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    names = parameter_names(module)
    if saved != OPTIMIZER_IN_DCP:  # a 1-process checkpoint
        if not sharded:
            optimizer.load_state_dict(saved)
            return
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(module, optimizer, ids_to_names(saved, names), options=options)
        return
    import torch.distributed.checkpoint as dcp

    directory = Path(checkpoint) / OPTIMIZER_DIR
    check_dcp_metadata(directory)
    target = get_optimizer_state_dict(module, optimizer)  # sharded under FSDP, full otherwise
    with warnings.catch_warnings():  # one process: DCP warns that it assumes one process
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(target, checkpoint_id=str(directory), no_dist=not dist.is_initialized())
    if sharded:
        set_optimizer_state_dict(module, optimizer, target)
    else:
        optimizer.load_state_dict(names_to_ids(target, names))
