"""What a kill or a power loss leaves behind: the metrics log rewritten on resume survives a kill
during the rewrite, and atomic writes reach the disk (fsync) before their rename."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ngrpo.trainer.checkpoints import _truncate_metrics
from ngrpo.utils.io import write_atomically, write_text_atomically


class Killed(BaseException):
    """A kill in the middle of a write (nothing catches it)."""


def test_a_kill_while_resume_rewrites_the_metrics_log_leaves_it_whole(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "type": "train"}) + "\n" for s in range(1, 5)))
    original = path.read_text()
    real = Path.write_text

    def killed_half_way(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise Killed

    monkeypatch.setattr(Path, "write_text", killed_half_way)
    with pytest.raises(Killed):
        _truncate_metrics(path, 2)  # resume from step 2: steps 3 and 4 are dropped
    monkeypatch.undo()
    assert path.read_text() == original  # the history is intact; the next resume redoes it
    _truncate_metrics(path, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


def _record_syncs(monkeypatch) -> list[tuple]:
    """Events in order: ("fsync", path of the descriptor) and ("rename", source, target)."""
    events: list[tuple] = []
    real_fsync, real_rename, real_replace = os.fsync, Path.rename, os.replace

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def rename(self, target):
        events.append(("rename", Path(self), Path(target)))
        return real_rename(self, target)

    def replace(source, target):
        events.append(("rename", Path(source), Path(target)))
        return real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_atomic_writes_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "old.txt").write_text("previous")  # replaced: renamed away first

    def write(tmp: Path) -> None:
        (tmp / "model.bin").write_bytes(b"weights")
        (tmp / "optimizer").mkdir()
        (tmp / "optimizer" / "shard.bin").write_bytes(b"state")

    events = _record_syncs(monkeypatch)
    write_atomically(tmp_path / "ckpt", write)
    write_text_atomically(tmp_path / "metrics.jsonl", "{}\n")
    monkeypatch.undo()

    renames = [i for i, e in enumerate(events) if e[0] == "rename"]
    into_place = next(i for i in renames if events[i][2] == tmp_path / "ckpt")
    tmp = events[into_place][1]
    synced_before = {e[1] for e in events[:into_place] if e[0] == "fsync"}
    for name in ("model.bin", "optimizer/shard.bin", "optimizer", "."):
        assert (tmp / name).resolve() in synced_before, name
    assert ("fsync", tmp_path) in events[into_place:]  # the renames made durable
    text = next(i for i in renames if events[i][2] == tmp_path / "metrics.jsonl")
    assert ("fsync", events[text][1]) in events[:text]
    assert ("fsync", tmp_path) in events[text:]
