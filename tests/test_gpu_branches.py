"""Branches that run only on a GPU, forced on CPU: which GPU a run uses (`model.device: cuda:N`),
which dtype `auto` picks (by compute capability), and which attention implementation is loaded.

The CUDA runtime is replaced by small recorders (`monkeypatch`); the code under test is the real
code path a GPU run takes."""

from __future__ import annotations

import pytest
import torch

import ngrpo.trainer.setup as setup
from ngrpo.config import load_config
from ngrpo.utils.errors import NgrpoError


class FakeGpus:
    """`torch.cuda`'s device queries for `count` GPUs of compute capability `capability`, with a
    current device (0 at start) that `set_device` moves; and an `Accelerator` stub that records
    the current device it was built on (accelerate puts a single process on the current GPU)."""

    def __init__(self, monkeypatch, count=2, capability=(9, 0)):
        self.current, self.capability, self.asked = 0, capability, []
        self.accelerators: list[dict] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "set_device", self.set_device)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_device_capability", self.get_device_capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.delenv("LOCAL_RANK", raising=False)
        gpus = self

        class Accelerator:
            is_main_process = True

            def __init__(self, cpu=False, mixed_precision="no"):
                gpus.accelerators.append(
                    dict(cpu=cpu, mixed_precision=mixed_precision, device=gpus.current)
                )

        monkeypatch.setattr("accelerate.Accelerator", Accelerator)

    def set_device(self, device):
        self.current = torch.device("cuda", device).index if isinstance(device, int) else (
            torch.device(device).index
        )  # fmt: skip

    def get_device_capability(self, device=None):
        self.asked.append(self.current if device is None else device)
        return self.capability


def _model_cfg(device: str, dtype: str):
    return load_config("tiny_ngrpo", [f"model.device={device}", f"model.dtype={dtype}"])


def test_model_device_cuda_n_makes_gpu_n_current_before_the_accelerator(monkeypatch):
    gpus = FakeGpus(monkeypatch)
    _, dtype = setup._accelerator(_model_cfg("cuda:1", "auto"))
    assert gpus.accelerators == [dict(cpu=False, mixed_precision="bf16", device=1)]
    assert gpus.asked == [1] and dtype == torch.bfloat16  # the capability of GPU 1, not 0


def test_model_device_cuda_n_is_checked(monkeypatch):
    FakeGpus(monkeypatch, count=2)
    with pytest.raises(NgrpoError, match="model.device=cuda:2 but this machine has 2 GPU"):
        setup._accelerator(_model_cfg("cuda:2", "float32"))
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(NgrpoError, match="under torchrun.*CUDA_VISIBLE_DEVICES"):
        setup._accelerator(_model_cfg("cuda:1", "float32"))
    setup._accelerator(_model_cfg("cuda:0", "float32"))  # the local rank's own GPU


@pytest.mark.parametrize(
    ("capability", "expected"), [((7, 0), torch.float32), ((7, 5), torch.float32),
                                 ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
)  # fmt: skip
def test_auto_dtype_is_bf16_only_from_compute_capability_8(monkeypatch, capability, expected):
    # V100 (7.0) and T4 (7.5) report bf16 "supported" through emulation: auto must not pick it
    gpus = FakeGpus(monkeypatch, capability=capability)
    assert setup._accelerator(_model_cfg("auto", "auto"))[1] == expected
    assert gpus.accelerators[-1]["mixed_precision"] == ("bf16" if expected == torch.bfloat16
                                                        else "no")  # fmt: skip


def test_explicit_bf16_on_a_gpu_without_native_bf16_is_an_error(monkeypatch):
    FakeGpus(monkeypatch, capability=(7, 0))
    with pytest.raises(NgrpoError, match="does not support it natively"):
        setup._accelerator(_model_cfg("cuda", "bfloat16"))


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attn_implementation_reaches_the_loaded_policy(lora, implementation):
    overrides = [f"model.attn_implementation={implementation}", "model.device=cpu"]
    if lora:
        overrides.append("model.lora.r=4")
    cfg = load_config("tiny_ngrpo", overrides)
    loaded = setup._policy(cfg, None, "cpu", torch.float32)
    assert loaded.policy.config._attn_implementation == implementation
    cfg.train.beta = 0.01
    if not lora:  # the KL reference is loaded the same way
        reference = setup._reference(cfg, loaded, "cpu", torch.float32)
        assert reference.config._attn_implementation == implementation
