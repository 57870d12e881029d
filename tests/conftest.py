"""Shared fixtures: the embedded base model shipped with ngrpo (no build: its weights are package
data, checksums verified on use)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    """Directory of the shipped embedded base model (`model.path: base`)."""
    from ngrpo.models.base_model import shipped_base_dir

    return shipped_base_dir()


@pytest.fixture(scope="session")
def embedded_tokenizer():
    from ngrpo.models.tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tracked_run(tmp_path_factory) -> Path:
    """A 2 + 1 step N-GRPO run reporting to every tracker, offline (`tracked_runs.py`)."""
    from tracked_runs import run_tracked

    return run_tracked(tmp_path_factory.mktemp("tracked"))
