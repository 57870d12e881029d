"""Directory writes that never leave a half-written target, and the clean-up after a crash.

`write_atomically(target, write)` calls `write(tmp)` on a fresh temporary directory next to
`target` (`.tmp-<name>-<pid>`), then renames the old target away (`.old-<name>-<pid>`), renames
the temporary directory into place and deletes the old one: a process killed at any point leaves
either the previous target or the new one, plus leftovers that `recover_interrupted_writes` puts
right (a target caught between its two renames gets its previous version back; unfinished
temporary directories are deleted).

A write that fails because of the disk (`DiskError`, see `disk_problem`: an `OSError` such as
ENOSPC, EROFS or EACCES, or the exception types in which torch and safetensors report a failed
write) removes its temporary directory and leaves `target` as it was. Other exceptions propagate
as they are and leave the temporary directory, as a kill would. Checked on a real full file
system (a small tmpfs): safetensors' and torch.save's errors are both recognised.

`write_text_atomically(path, text)` is the same guarantee for one small file (a resolved config,
a finished demo unit, the metrics log rewritten on resume): written next to it under a hidden
name, then renamed over it.

Durability: both fsync what they wrote before the rename (every file and directory of the
temporary directory: `fsync_tree`) and the parent directory after it, so a power loss cannot
leave a renamed target whose files the disk never received.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ngrpo.utils.errors import NgrpoError

TMP_PREFIX, OLD_PREFIX = ".tmp-", ".old-"
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO, errno.EFBIG)
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
    """Why writing under `directory` failed with `err`, when the disk is the cause; None for any
    other failure. Recognised: an `OSError` (its reason and file); an exception of another type
    whose message quotes a disk error of the OS (safetensors: "I/O error: No space left on
    device (os error 28)"); any failure while the file system is read-only or (nearly) full
    (torch.save: "unexpected pos ..." when a write came up short)."""
    if isinstance(err, OSError):
        return f"{_errno_text(err.errno, str(err))}{f' at {err.filename}' if err.filename else ''}"
    first = (str(err).strip().splitlines() or [""])[0][:160]
    for code in DISK_ERRNOS:
        if os.strerror(code) in str(err):
            return f"{_errno_text(code)}: {first}"
    try:
        stat = os.statvfs(directory)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return None
    if stat.f_flag & os.ST_RDONLY:
        return f"the file system is read-only ({type(err).__name__}: {first})"
    free = stat.f_bavail * stat.f_frsize
    if free < LOW_SPACE_BYTES:
        return f"no space left on the device ({free / 2**20:.1f} MiB free; {first})"
    return None


def _errno_text(code: int | None, fallback: str = "") -> str:
    """'No space left on device (ENOSPC)' for an errno."""
    if not code:
        return fallback
    return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"


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
        fsync_tree(tmp)  # the contents reach the disk before the rename makes them the target
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        _fsync_directory(target.parent)  # the renames themselves
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


def write_text_atomically(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a hidden temporary file renamed over it: a reader
    or a killed writer never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    _fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    """Make a directory's entries (renames, new files) durable; a no-op where directories cannot
    be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file under `root`, then the directories (deepest first): a rename of `root`
    after this never exposes files the disk does not hold yet (a power loss right after a
    rename could otherwise leave a complete-looking checkpoint of empty files)."""
    directories = []
    for current, _, files in os.walk(root):
        directories.append(Path(current))
        for name in files:
            _fsync_file(Path(current) / name)
    for directory in reversed(directories):
        _fsync_directory(directory)


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
