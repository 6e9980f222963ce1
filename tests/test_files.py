"""mops.common.files: a reader sees the old file or the whole new one, and a failed write leaves nothing."""

from __future__ import annotations

import json

import pytest

from mops.common.files import atomic_open, atomic_write, atomic_write_json, remove_temporaries


def test_text_bytes_and_json_land_whole_in_a_new_folder(tmp_path):
    assert atomic_write(tmp_path / "a" / "t.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"
    assert atomic_write(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert json.loads(atomic_write_json(tmp_path / "c.json", {"x": [1, 2]}).read_text()) == {"x": [1, 2]}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b.bin", "c.json", "t.txt"]  # no temporaries


def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = atomic_write(tmp_path / "results.json", "old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_open(target) as handle:
            handle.write("half of the new")
            raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_failure_before_the_first_write_creates_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(tmp_path / "new.csv", "w", newline=""):
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_written_file_gets_the_mode_a_plain_open_would_give(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert (atomic_write(tmp_path / "atomic.txt", "x").stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


def test_only_whole_file_modes_are_accepted(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb', got 'a'"):
        with atomic_open(tmp_path / "x", "a"):
            pass


def test_remove_temporaries_clears_only_what_atomic_writes_leave(tmp_path):
    (tmp_path / ".results.json.x1.tmp").write_text("{")
    (tmp_path / ".best.pt.y2.tmp").write_bytes(b"")
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "notes.tmp").write_text("mine")  # not a name atomic_open makes
    assert [p.name for p in remove_temporaries(tmp_path)] == [".best.pt.y2.tmp", ".results.json.x1.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp", "results.json"]
