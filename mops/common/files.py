"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

Every result, checkpoint, manifest, table and plot MOPS writes goes through `atomic_open`:
the content goes to a temporary file in the same folder, which is renamed over the target
only once it is complete. A failure (an exception) leaves the target as it was and no
temporary file behind; a kill before the rename leaves one (`.NAME.*.tmp`), which
`remove_temporaries` clears when the folder's next writer starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; rename it to `path` when the block ends cleanly.

    The parent folder is created. Text mode defaults to UTF-8.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "w":
        open_kwargs.setdefault("encoding", "utf-8")
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; a result file gets what open() would give it
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete what killed `atomic_open` writes left in `folder` (call it holding the folder's
    only writer's lock: a live write's temporary file looks the same). Returns what went."""
    found = sorted(Path(folder).glob(".*.tmp"))
    for path in found:
        path.unlink(missing_ok=True)
    return found


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write(path: str | os.PathLike, payload: str | bytes) -> Path:
    """Write `payload` (text or bytes) to `path` atomically; returns the path."""
    with atomic_open(path, "wb" if isinstance(payload, bytes) else "w") as handle:
        handle.write(payload)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """`obj` as JSON (with a final newline) written to `path` atomically."""
    return atomic_write(path, json.dumps(obj, indent=indent) + "\n")
