"""The start-of-run warning for bf16 on a CPU without native bf16 (`ngrpo.utils.cpu_bf16`), with
the measurement forced, since whether this CPU has native bf16 is not up to the test."""

from __future__ import annotations

import logging
import math

import torch

import ngrpo.utils.cpu_bf16
from ngrpo.config import load_config
from ngrpo.trainer.setup import _accelerator


def _start(dtype: str, caplog) -> list[logging.LogRecord]:
    """The warnings `ngrpo train`'s setup logs for `model.dtype=dtype` on the CPU."""
    cfg = load_config("tiny_ngrpo", [f"model.dtype={dtype}", "model.device=cpu"])
    with caplog.at_level(logging.WARNING, logger="ngrpo"):
        _accelerator(cfg)
    return [r for r in caplog.records if r.name == "ngrpo.utils.cpu_bf16"]


def test_bf16_on_a_cpu_without_native_bf16_warns_once_with_the_ratio(monkeypatch, caplog):
    monkeypatch.setattr(ngrpo.utils.cpu_bf16, "bf16_slowdown", lambda: 97.4)
    (record,) = _start("bfloat16", caplog)
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "took 97× as long as in fp32" in message and "set model.dtype=float32" in message


def test_no_warning_where_bf16_is_fast_and_no_measurement_in_fp32(monkeypatch, caplog):
    monkeypatch.setattr(ngrpo.utils.cpu_bf16, "bf16_slowdown", lambda: 1.3)  # native bf16
    assert _start("bfloat16", caplog) == []

    def never() -> float:
        raise AssertionError("measured without bf16")

    monkeypatch.setattr(ngrpo.utils.cpu_bf16, "bf16_slowdown", never)
    assert _start("float32", caplog) == []


def test_the_measurement_is_a_ratio_of_two_timed_products():
    ratio = ngrpo.utils.cpu_bf16.bf16_slowdown(repeats=1)
    assert math.isfinite(ratio) and ratio > 0
    assert ngrpo.utils.cpu_bf16.warn_if_slow_bf16("cuda:0", torch.bfloat16) is None  # CPU only
