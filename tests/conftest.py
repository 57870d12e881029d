"""Shared fixtures: the embedded base model (built once per machine, cached under $NGRPO_HOME)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    """Directory of the embedded base model; the first use on a machine builds it (minutes)."""
    from ngrpo.models.base_model import ensure_base_model

    return ensure_base_model()


@pytest.fixture(scope="session")
def embedded_tokenizer():
    from ngrpo.models.tokenizer import build_tokenizer

    return build_tokenizer()
