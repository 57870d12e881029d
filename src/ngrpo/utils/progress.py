"""Library use shows ngrpo's progress or nothing: transformers' own progress bars ("Loading
weights", "Writing model shards") are switched off around ngrpo's loads and saves."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def no_library_progress() -> Iterator[None]:
    """transformers' progress bars off inside the block, restored after it (a caller that turned
    them off keeps them off)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
