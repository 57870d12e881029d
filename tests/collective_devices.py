"""For the two-process tests: every tensor handed to a `torch.distributed` collective must live on
the process group's device, put there by the code (`device=...` or `.to(device)`).

Under NCCL (GPUs) the process group has no CPU backend, so a tensor left on torch's default device
(the CPU) fails there ("No backend type associated with device type cpu"), while gloo on CPU takes
it. On CPU the default device and the accelerator's are the same, so the device alone cannot tell:
`DefaultDeviceTracker` (a `TorchFunctionMode`) marks the tensors that factory functions made
without a device, and what out-of-place operations compute from them; an explicit
`.to(device)` / `device=` clears the mark (`.cpu()` keeps it: on a GPU it leaves the device). The
wrapped collectives refuse a marked tensor, and a tensor off the group's device (the CPU for gloo,
the current GPU for NCCL): what would fail under NCCL fails here too.

    install()  # once per process, before the run (tests/ddp_train_check.py, fsdp_train_check.py)
"""

from __future__ import annotations

import weakref

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

FACTORIES = {
    torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange,
    torch.rand, torch.randn, torch.randint, torch.linspace, torch.eye,
}  # fmt: skip
LIKE = {torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like}
MOVES = {torch.Tensor.to, torch.Tensor.cuda}
COLLECTIVES = (
    "broadcast", "all_reduce", "reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
    "reduce_scatter_tensor", "gather", "scatter", "all_to_all_single", "send", "recv", "isend",
    "irecv",
)  # fmt: skip


class DefaultDeviceTracker(TorchFunctionMode):
    """Marks tensors on torch's default device by omission (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.marked: dict[int, weakref.ref] = {}

    def is_marked(self, tensor: torch.Tensor) -> bool:
        ref = self.marked.get(id(tensor))
        return ref is not None and ref() is tensor

    def _mark(self, out, on: bool) -> None:
        for t in out if isinstance(out, (list, tuple)) else (out,):
            if not isinstance(t, torch.Tensor):
                continue
            if on:
                key = id(t)
                self.marked[key] = weakref.ref(t, lambda _, key=key: self.marked.pop(key, None))
            else:
                self.marked.pop(id(t), None)

    def _inputs_marked(self, args, kwargs) -> bool:
        if not self.marked:
            return False
        for a in (*args, *kwargs.values()):
            for t in a if isinstance(a, (list, tuple)) else (a,):
                if isinstance(t, torch.Tensor) and t.dim() > 0 and self.is_marked(t):
                    return True
        return False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in FACTORIES:
            self._mark(out, kwargs.get("device") is None)
        elif func in LIKE and kwargs.get("device") is None:
            self._mark(out, self._inputs_marked(args[:1], {}))
        elif func in MOVES:
            targets = [kwargs.get("device"), *args[1:]]
            explicit = any(isinstance(a, (torch.device, str, int, torch.Tensor)) for a in targets)
            to_cpu = "cpu" in targets  # written out: on a GPU this leaves the device
            self._mark(out, to_cpu or (not explicit and self._inputs_marked(args[:1], {})))
        elif func is torch.Tensor.cpu:
            self._mark(out, True)
        elif not getattr(func, "__name__", "").endswith("_") and self._inputs_marked(args, kwargs):
            self._mark(out, True)  # computed from a default-device tensor (in-place ops excluded)
        return out


def _group_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _checked(name: str, real, tracker: DefaultDeviceTracker):
    def collective(*args, **kwargs):
        device = _group_device()
        for a in (*args, *kwargs.values()):
            for t in a if isinstance(a, (list, tuple)) else (a,):
                if not isinstance(t, torch.Tensor):
                    continue
                if t.device != device or tracker.is_marked(t):
                    where = "torch's default device" if tracker.is_marked(t) else t.device
                    raise AssertionError(
                        f"torch.distributed.{name} got a tensor on {where}, not on the process "
                        f"group's device {device} (NCCL has no backend for the CPU)"
                    )
        return real(*args, **kwargs)

    return collective


def install() -> DefaultDeviceTracker:
    """Enter the tracker for the rest of the process and wrap the collectives; returns it."""
    tracker = DefaultDeviceTracker()
    tracker.__enter__()
    for name in COLLECTIVES:
        setattr(dist, name, _checked(name, getattr(dist, name), tracker))
    return tracker
