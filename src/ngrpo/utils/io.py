"""Directory writes that never leave a half-written target, and the clean-up after a crash.

`write_atomically(target, write)` calls `write(tmp)` on a fresh temporary directory next to
`target` (`.tmp-<name>-<pid>`), then renames the old target away (`.old-<name>-<pid>`), renames
the temporary directory into place and deletes the old one: a process killed at any point leaves
either the previous target or the new one, plus leftovers that `recover_interrupted_writes` puts
right (a target caught between its two renames gets its previous version back; unfinished
temporary directories are deleted).

A write that fails because of the disk (`DiskError`: any `OSError`, e.g. ENOSPC, EROFS, EACCES;
or another exception — torch and safetensors report a failed write in their own types — raised
while the file system is full or read-only) removes its temporary directory and leaves `target`
as it was. Other exceptions propagate as they are and leave the temporary directory, as a kill
would.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ngrpo.utils.errors import NgrpoError

TMP_PREFIX, OLD_PREFIX = ".tmp-", ".old-"
LOW_SPACE_BYTES = 16 * 2**20
"""Free space under which a failed write is put down to a full disk (writes fail with less
than one buffer left)."""


class DiskError(NgrpoError):
    """A directory could not be written (no space, read-only, no permission); nothing was
    replaced."""

    def __init__(self, target: Path, reason: str) -> None:
        super().__init__(f"cannot write {target}: {reason}; it was left as it was")
        self.target, self.reason = target, reason


def disk_problem(directory: Path, err: BaseException) -> str | None:
    """Why writing under `directory` failed with `err`, when the disk is the cause: the
    `OSError`'s reason (and file), or the file system's state; None for any other failure."""
    if isinstance(err, OSError):
        name = errno.errorcode.get(err.errno or 0, "")
        reason = f"{err.strerror or err}{f' ({name})' if name else ''}"
        return f"{reason} at {err.filename}" if err.filename else reason
    try:
        stat = os.statvfs(directory)
    except OSError:
        return None
    if stat.f_flag & os.ST_RDONLY:
        return f"the file system is read-only ({type(err).__name__} while writing)"
    free = stat.f_bavail * stat.f_frsize
    if free < LOW_SPACE_BYTES:
        first = (str(err).strip().splitlines() or [""])[0][:120]
        return f"no space left on the device ({free / 2**20:.1f} MiB free; {first})"
    return None


def write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp_dir)`, then rename into `target` (replacing it): never a half-written target.
    Raises `DiskError` (and removes the temporary directory) when the disk is the problem."""
    tmp = target.parent / f"{TMP_PREFIX}{target.name}-{os.getpid()}"
    old = target.parent / f"{OLD_PREFIX}{target.name}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        write(tmp)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
    except Exception as err:
        reason = disk_problem(target.parent, err)
        if reason is None:
            raise
        if old.exists() and not target.exists():
            old.rename(target)  # put the previous version back
        shutil.rmtree(tmp, ignore_errors=True)
        raise DiskError(target, reason) from err
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
