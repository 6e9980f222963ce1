"""The results file: one JSON object per measured run, one run per line (JSONL).

A sweep runs for hours and may be killed at any moment, so the file is append-only rather than
rewritten through a temporary file: each finished run is one `os.write` of one whole line on an
O_APPEND descriptor, then fsync. A killed writer loses at most the run it was writing, and a
line torn by a crash is reported and skipped by the reader instead of breaking the file.
Several sweep shards can write their own files (``results.shard-0-of-4.jsonl``, ...) and
`read_records` merges them.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Paths = str | os.PathLike | Iterable[str | os.PathLike]

DONE_STATUSES = ("ok", "oom")  # an OOM run would OOM again; a failed one is worth retrying


class TornLineWarning(UserWarning):
    """A line of a results file that is not a JSON object (usually cut short by a crash)."""


def run_id(config: dict[str, Any]) -> str:
    """A stable id of a run's config: the first 16 hex digits of sha256 over sorted-key JSON.

    Key order never matters; values do exactly as JSON writes them (1 and 1.0 differ, a tuple
    equals a list). A config that JSON cannot write raises TypeError.
    """
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def append_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append `record` as one line, durably: single write on an O_APPEND fd, then fsync.

    If the file ends in a torn line (its writer was killed mid-line), a newline is written
    first so that this record starts on a line of its own.
    """
    line = json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n"
    if "\n" in line[:-1]:  # json.dumps escapes newlines in strings; this guards the invariant
        raise ValueError("a record must serialise to one line")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = line.encode()
        if _ends_mid_line(path):
            data = b"\n" + data
        written = os.write(fd, data)
        while written < len(data):  # short writes are rare on regular files (disk full, signals)
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def _ends_mid_line(path: Path) -> bool:
    try:
        with open(path, "rb") as existing:
            existing.seek(0, os.SEEK_END)
            if existing.tell() == 0:
                return False
            existing.seek(-1, os.SEEK_END)
            return existing.read(1) != b"\n"
    except OSError:
        return False


def expand_paths(paths: Paths, missing_ok: bool = False) -> list[Path]:
    """Files named by `paths`: plain paths and glob patterns, each pattern's matches sorted.

    A path or pattern that names nothing raises FileNotFoundError unless `missing_ok`.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    for item in paths:
        text = os.fspath(item)
        matches = sorted(glob.glob(text)) if glob.has_magic(text) else ([text] if os.path.exists(text) else [])
        if not matches and not missing_ok:
            raise FileNotFoundError(f"no results file matches {text!r}")
        for match in matches:
            if Path(match) not in found:
                found.append(Path(match))
    return found


def read_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of one file, in file order. Lines that are not JSON objects are skipped with a
    TornLineWarning naming the file and line; a record without run_id gets one from its config."""
    records = []
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            torn = not raw.endswith(b"\n")
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                where = "last line, cut short" if torn else "not valid JSON"
                warnings.warn(f"{path}:{number}: skipped ({where}: {error})", TornLineWarning, stacklevel=2)
                continue
            if not isinstance(record, dict):
                warnings.warn(f"{path}:{number}: skipped (not a JSON object)", TornLineWarning, stacklevel=2)
                continue
            if not isinstance(record.get("config", {}), dict) or not isinstance(record.get("run_id", ""), str):
                warnings.warn(f"{path}:{number}: skipped (its config is no JSON object or its run_id no string)",
                              TornLineWarning, stacklevel=2)
                continue
            if "run_id" not in record:
                if not isinstance(record.get("config"), dict):
                    warnings.warn(f"{path}:{number}: skipped (neither run_id nor config)", TornLineWarning, stacklevel=2)
                    continue
                record["run_id"] = run_id(record["config"])
            records.append(record)
    return records


def read_records(paths: Paths) -> list[dict[str, Any]]:
    """All runs in the given files and globs (shards merged), one record per run_id.

    Duplicates of a run_id (a retried run, or the same run in two shards) resolve to the latest
    "ok" record if there is one, else to the latest record of any status. "Latest" is reading
    order: files in the order given (each glob's matches sorted by name), lines top to bottom.
    Runs come back in the order their run_id first appears.
    """
    chosen: dict[str, dict[str, Any]] = {}
    for path in expand_paths(paths):
        for record in read_file(path):
            key = record["run_id"]
            previous = chosen.get(key)
            if previous is None or record.get("status") == "ok" or previous.get("status") != "ok":
                chosen[key] = record
    return list(chosen.values())


def completed_ids(paths: Paths, done: Iterable[str] = DONE_STATUSES) -> set[str]:
    """run_ids a resumed sweep may skip: those with any record whose status is in `done`.

    Missing files are fine (nothing done yet). By default "ok" and "oom" are done and "failed"
    runs are retried.
    """
    done = set(done)
    finished = set()
    for path in expand_paths(paths, missing_ok=True):
        for record in read_file(path):
            if record.get("status") in done:
                finished.add(record["run_id"])
    return finished
