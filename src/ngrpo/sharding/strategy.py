"""FSDP2 for the policy module: wrapping, the learner's strategy calls, and the rollout copy.

- `shard_policy` applies `torch.distributed.fsdp.fully_shard` to every decoder layer (the model's
  `_no_split_modules` classes), then to the root `ngrpo.learner.policy.SoftInputPolicy`, whose own
  parameters are then the embedding, the final norm and the head: the root's hooks gather them
  around its forward (where `embed` and the chunked head run) and reduce-scatter their gradients.
  Mixed precision: parameters cast to the compute dtype for the forward / backward, gradients
  reduced in fp32, the sharded master weights (and so AdamW's state) stay fp32. Gradient
  checkpointing (enabled on the model before sharding) recomputes each layer inside its FSDP
  unit: the layer is gathered again for the recomputation.
- `FsdpStrategy` has the methods of accelerate's `Accelerator` that `ngrpo.learner.update` and
  `ngrpo.trainer` call (backward, `no_sync`, `clip_grad_norm_` on DTensors, `reduce`, ...), the
  rest delegated to the accelerator (process group, device, autocast).
- `RolloutCopy`: the rollout, evaluation and neighbour index run on a plain Hugging Face model with
  the full parameters in the compute dtype, refreshed after the updates parameter by parameter
  (`DTensor.full_tensor()` one at a time: never a second full fp32 copy in memory). Its in-place
  copies bump the embedding's version counter, which invalidates the neighbour index.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist

from ngrpo.utils.errors import NgrpoError

PREFIX = "model."  # SoftInputPolicy's parameter names: the model's, under `model.`


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: modules whose class is in `model._no_split_modules` (what
    transformers itself keeps whole when it splits a model over devices)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise NgrpoError(
            f"train.strategy=fsdp: cannot find the decoder layers of {type(model).__name__} "
            "(no _no_split_modules); use train.strategy=ddp"
        )
    return layers


def device_mesh(world: int, device_type: str):
    """The 1-D mesh of `world` processes that a run's modules are sharded over (built once, for
    the policy and the KL reference alike)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (world,))


def shard_policy(policy: torch.nn.Module, compute_dtype: torch.dtype, mesh):
    """Shard `policy` (a `SoftInputPolicy` with fp32 parameters, on its device) in place over
    `mesh` (`device_mesh`); returns it (now an FSDPModule)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mixed = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(policy.model):
        fully_shard(layer, mesh=mesh, mp_policy=mixed)
    fully_shard(policy, mesh=mesh, mp_policy=mixed)
    return policy


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a DTensor (a collective: every process calls it), else itself."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


class FsdpStrategy:
    """The learner's and trainer's data-parallel calls under FSDP2 (see the module docstring)."""

    def __init__(self, accelerator) -> None:
        self.accelerator = accelerator

    def __getattr__(self, name: str):  # process_index, device, autocast, is_main_process, ...
        return getattr(self.accelerator, name)

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    @contextlib.contextmanager
    def no_sync(self, model) -> Iterator[None]:
        """Accumulate unsharded gradients locally; the next synchronising backward
        reduce-scatters the sum."""
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor:
        """The global gradient norm over all shards (before clipping); clips to `max_norm`."""
        norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
        return _full(norm)

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.num_processes if reduction == "mean" else out

    def unwrap_model(self, model):
        return model  # FSDP2 shards in place: there is no wrapper

    def wait_for_everyone(self) -> None:
        dist.barrier()

    @property
    def equal_micro_batches(self) -> bool:
        """Every forward is a collective (parameter all-gathers): processes must run the same
        number of micro-batches (the learner pads the shorter lists)."""
        return True


class RolloutCopy:
    """A plain model holding the sharded policy's full parameters (see the module docstring)."""

    def __init__(self, sharded: torch.nn.Module, model: torch.nn.Module) -> None:
        self.sharded, self.model = sharded, model.requires_grad_(False)
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy every parameter in, one full tensor at a time (all processes call this)."""
        targets = dict(self.model.named_parameters())
        for name, param in self.sharded.named_parameters():
            key = name.removeprefix(PREFIX)
            if key not in targets:
                raise NgrpoError(f"rollout copy: no parameter {key!r} in the plain model")
            targets[key].copy_(_full(param.detach()))
