"""Directory writes that never leave a half-written target, and the clean-up after a crash.

`write_atomically(target, write)` calls `write(tmp)` on a fresh temporary directory next to
`target` (`.tmp-<name>-<pid>`), then renames the old target away (`.old-<name>-<pid>`), renames
the temporary directory into place and deletes the old one: a process killed at any point leaves
either the previous target or the new one, plus leftovers that `recover_interrupted_writes` puts
right (a target caught between its two renames gets its previous version back; unfinished
temporary directories are deleted).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

TMP_PREFIX, OLD_PREFIX = ".tmp-", ".old-"


def write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp_dir)`, then rename into `target` (replacing it): never a half-written target."""
    tmp = target.parent / f"{TMP_PREFIX}{target.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    old = target.parent / f"{OLD_PREFIX}{target.name}-{os.getpid()}"
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    if old.exists():
        shutil.rmtree(old)


def recover_interrupted_writes(parent: Path) -> None:
    """Clean up `parent` after a process killed inside `write_atomically`: a target renamed away
    but not yet replaced gets its previous version back; temporary directories are deleted."""
    if not parent.is_dir():
        return
    for old in parent.glob(f"{OLD_PREFIX}*"):
        target = parent / old.name.removeprefix(OLD_PREFIX).rsplit("-", 1)[0]
        if target.exists():
            shutil.rmtree(old)
        else:
            old.rename(target)
    for tmp in parent.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(tmp)
