"""The files of a run folder, and checkpoints that are data, never code.

A run folder is something people pass around (resume a copied run, export someone's run), so
its checkpoints are read with `torch.load(weights_only=True)`: tensors and plain containers
only. A pickle that asks for anything else (a function to call, a class to build) is refused
before it runs, and a file that is not a checkpoint at all (empty, truncated, a folder, another
file's bytes) is refused the same way, each with a message that names it and says what to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks of this kind
    fcntl = None

import torch

from mops.common.files import atomic_open, remove_temporaries

log = logging.getLogger(__name__)
RESULTS_FILE, LAST_FILE, BEST_FILE, LOCK_FILE = "results.json", "last.pt", "best.pt", ".lock"


class CheckpointRefused(RuntimeError):
    """A checkpoint that cannot be read safely: corrupt, or asking to run code."""


class InUse(RuntimeError):
    """Another process holds the lock of a run folder or a results file."""


@contextlib.contextmanager
def exclusive(lock: Path, what: str, remedy: str) -> Iterator[None]:
    """Hold `lock` exclusively while the block runs, so one process at a time writes `what`.

    An OS file lock (flock): the kernel releases it when the holder exits, however it exits, so a
    `kill -9` never leaves a stale lock behind. A second process is refused at once, told who
    holds it. Where the OS has no flock (Windows) nothing is locked.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                raise InUse(f"{what} is being written by another MOPS process ({holder}); {remedy}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, empty of meaning until the next holder


@contextlib.contextmanager
def hold_run_folder(folder: Path) -> Iterator[None]:
    """One writer per run folder: checkpoints, results and the run's record come from one run.
    Holding it, the writer first clears the temporary files a killed write left there."""
    with exclusive(folder / LOCK_FILE, str(folder), "wait for that run to end, or train into another --out folder"):
        for path in remove_temporaries(folder):
            log.info("removed %s, left by a write that was killed", path)
        yield


def save_checkpoint(contents: dict, path: Path) -> None:
    """Write `contents` (tensors and plain containers) so that a reader sees the old file or the new one."""
    with atomic_open(path, "wb") as handle:
        torch.save(contents, handle)


def load_checkpoint(path: Path, remedy: str, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint at `path` as data; CheckpointRefused naming the file and `remedy` otherwise."""
    if path.is_dir():
        raise CheckpointRefused(f"{path} is a folder, not a checkpoint; {remedy}")
    try:
        contents = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # what weights_only refuses: a global, a class, a call
        raise CheckpointRefused(
            f"{path} asks to run code or build objects when loaded, and MOPS loads checkpoints as data only "
            f"({str(err).splitlines()[0][:200]}); it was not written by this version of MOPS or was tampered "
            f"with: {remedy}") from err
    except (EOFError, RuntimeError, ValueError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointRefused(f"{path} is not a readable checkpoint ({type(err).__name__}: "
                                f"{str(err).splitlines()[0][:200] if str(err) else 'empty or cut short'}); "
                                f"{remedy}") from err
    if not isinstance(contents, dict):
        raise CheckpointRefused(f"{path} holds a {type(contents).__name__}, not a run checkpoint; {remedy}")
    return contents
