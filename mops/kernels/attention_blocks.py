"""Block sizes of the attention kernels: a small table per GPU architecture, never a sweep by default.

A run-time autotuning sweep compiles and times several configurations of each kernel for every
new key, on the user's clock (on an H100 the old sweep made a 25-second training budget run 17
steps). Here a launch looks its configuration up instead:

    launch_config(kernel, capability, dtype, head_dim, seq_len, saved) -> Config

keyed by the compute capability ("9.0"), the dtype family ("half" = fp16/bf16 on tensor cores,
"fp32" = exact ieee dots without them), a head-dim bucket (64, 128, 256: the padded BLOCK_D)
and a coarse length bucket (L <= 128, <= 512, longer). A choice saved by an earlier tuning run
for this GPU wins; then the architecture's row; then the "*" row, conservative enough for any
GPU with 99 KB of shared memory per block (sm_86/sm_89 consumer cards, unknown ones).
`capability=None` means the CPU interpreter, which gets small fixed blocks.

How the rows were chosen (fp16/bf16). The forward and dQ hold BLOCK_M query rows and stream
key blocks; dK/dV hold BLOCK_N key rows and stream query blocks. Shared memory per stage is
about 2 * BLOCK * BLOCK_D * 2 bytes (K and V, or Q and dO) on top of the resident tile, and the
fp32 accumulators must stay in registers (255 per thread). For d = 64 on sm_90/sm_80 that
allows 128-row query tiles with 64-key blocks and 3 stages (the Triton fused-attention
tutorial's and FlashAttention-2's d = 64 choices are of this size), and 128-key dK/dV tiles
with 8 warps; for d = 128 the dK/dV accumulators (2 x BLOCK_N x 128 fp32) limit BLOCK_N to 64
with 8 warps, and the forward keeps 128 x 64 (FlashAttention-2's d = 128 forward tile). Short
sequences (BERT's 32-128 tokens) get 64-row tiles: a 128-row tile over 48 tokens is mostly
padding. sm_86/sm_89 have 99 KB per block, so fewer stages or smaller tiles. fp32 inputs run
ieee dots on CUDA cores: small tiles everywhere.

Opt-in tuning. With MOPS_AUTOTUNE=1 the first launch of each key on a GPU times every candidate
of `candidates(...)` (the table's choice among them), keeps the fastest, and saves it to
`cache_path(gpu name)` (default ~/.cache/mops/autotune-<gpu>.json, or $MOPS_AUTOTUNE_CACHE).
Later runs read that file, with or without MOPS_AUTOTUNE, before the table. A cache file that
cannot be read is ignored with a warning.
"""

from __future__ import annotations

import functools
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mops.common.files import atomic_write_json
from mops.common.machine import gpu_name
from mops.kernels.dispatch import interpreter_enabled

KERNELS = ("fwd", "dkdv", "dq")
HEAD_DIM_BUCKETS = (64, 128, 256)  # BLOCK_D = max(16, next power of two of D) rounded up to these
LENGTH_BUCKETS = (128, 512)  # then "long"; lengths are coarse on purpose: one compile per bucket
AUTOTUNE_ENV = "MOPS_AUTOTUNE"
CACHE_ENV = "MOPS_AUTOTUNE_CACHE"


@dataclass(frozen=True)
class Config:
    """One launch configuration of an attention kernel."""

    BLOCK_M: int  # query rows a program holds (fwd, dq) or streams (dkdv)
    BLOCK_N: int  # key rows a program streams (fwd, dq) or holds (dkdv)
    num_warps: int
    num_stages: int

    def meta(self) -> dict[str, int]:
        """The keyword arguments of a Triton launch."""
        return asdict(self)


def _c(m: int, n: int, w: int, s: int) -> Config:
    return Config(m, n, w, s)


# ----------------------------------------------------------------------------- keys


def dtype_family(dtype: torch.dtype) -> str:
    if dtype in (torch.float16, torch.bfloat16):
        return "half"
    if dtype == torch.float32:
        return "fp32"
    raise ValueError(f"attention_blocks: no attention kernel for dtype {dtype}; use float16, bfloat16 or float32")


def head_dim_bucket(head_dim: int) -> int:
    for bucket in HEAD_DIM_BUCKETS:
        if head_dim <= bucket:
            return bucket
    raise ValueError(f"attention_blocks: head dims up to {HEAD_DIM_BUCKETS[-1]} are supported, got {head_dim}")


def length_bucket(seq_len: int) -> str:
    for bound in LENGTH_BUCKETS:
        if seq_len <= bound:
            return f"L<={bound}"
    return f"L>{LENGTH_BUCKETS[-1]}"


def arch(capability: tuple[int, int]) -> str:
    return f"{capability[0]}.{capability[1]}"


def config_key(kernel: str, dtype: torch.dtype, head_dim: int, seq_len: int) -> str:
    """The key a tuned choice is saved under (the cache file is per GPU): "fwd/half/d64/L<=512"."""
    if kernel not in KERNELS:
        raise ValueError(f"attention_blocks: kernel must be one of {KERNELS}, got {kernel!r}")
    return f"{kernel}/{dtype_family(dtype)}/d{head_dim_bucket(head_dim)}/{length_bucket(seq_len)}"


# ----------------------------------------------------------------------------- the table

# Under the CPU interpreter every program runs in Python: small fixed blocks, unequal in M and
# N so the tests catch a mix-up of the two (num_warps and num_stages mean nothing there).
INTERPRETER = {"fwd": _c(32, 16, 4, 1), "dkdv": _c(16, 32, 4, 1), "dq": _c(32, 16, 4, 1)}

_SHORT = "L<=128"
_ANY = "*"

# (arch, family, head-dim bucket, length bucket or "*") -> {kernel: Config}
TABLE: dict[tuple[str, str, int, str], dict[str, Config]] = {
    # sm_90 (H100, H200): 227 KB shared memory per block.
    ("9.0", "half", 64, _SHORT): {"fwd": _c(64, 64, 4, 3), "dkdv": _c(32, 64, 4, 3), "dq": _c(64, 32, 4, 3)},
    ("9.0", "half", 64, _ANY): {"fwd": _c(128, 64, 8, 3), "dkdv": _c(64, 128, 8, 2), "dq": _c(128, 64, 8, 2)},
    ("9.0", "half", 128, _SHORT): {"fwd": _c(64, 64, 4, 3), "dkdv": _c(32, 64, 8, 2), "dq": _c(64, 32, 4, 2)},
    ("9.0", "half", 128, _ANY): {"fwd": _c(128, 64, 8, 3), "dkdv": _c(32, 64, 8, 2), "dq": _c(64, 32, 4, 2)},
    ("9.0", "half", 256, _ANY): {"fwd": _c(64, 32, 8, 3), "dkdv": _c(16, 64, 8, 2), "dq": _c(64, 16, 8, 2)},
    # sm_80 (A100): 163 KB per block.
    ("8.0", "half", 64, _SHORT): {"fwd": _c(64, 64, 4, 3), "dkdv": _c(32, 64, 4, 3), "dq": _c(64, 32, 4, 3)},
    ("8.0", "half", 64, _ANY): {"fwd": _c(128, 64, 4, 3), "dkdv": _c(64, 128, 8, 2), "dq": _c(128, 64, 8, 2)},
    ("8.0", "half", 128, _SHORT): {"fwd": _c(64, 64, 4, 2), "dkdv": _c(32, 64, 8, 2), "dq": _c(64, 32, 4, 2)},
    ("8.0", "half", 128, _ANY): {"fwd": _c(128, 64, 8, 2), "dkdv": _c(32, 64, 8, 2), "dq": _c(64, 32, 4, 2)},
    ("8.0", "half", 256, _ANY): {"fwd": _c(64, 32, 8, 2), "dkdv": _c(16, 64, 8, 2), "dq": _c(64, 16, 8, 2)},
    # Anything else (sm_86 / sm_89 with 99 KB per block, unknown GPUs): the conservative rows.
    ("*", "half", 64, _ANY): {"fwd": _c(64, 64, 4, 3), "dkdv": _c(32, 64, 4, 3), "dq": _c(64, 32, 4, 3)},
    ("*", "half", 128, _ANY): {"fwd": _c(64, 32, 4, 3), "dkdv": _c(32, 64, 8, 2), "dq": _c(64, 32, 4, 2)},
    ("*", "half", 256, _ANY): {"fwd": _c(32, 32, 4, 2), "dkdv": _c(16, 32, 4, 2), "dq": _c(32, 16, 4, 2)},
    # fp32 inputs (exact dots on CUDA cores), every architecture.
    ("*", "fp32", 64, _ANY): {"fwd": _c(32, 32, 4, 2), "dkdv": _c(32, 16, 4, 2), "dq": _c(32, 32, 4, 2)},
    ("*", "fp32", 128, _ANY): {"fwd": _c(32, 16, 4, 2), "dkdv": _c(16, 32, 4, 2), "dq": _c(32, 16, 4, 2)},
    ("*", "fp32", 256, _ANY): {"fwd": _c(16, 16, 4, 1), "dkdv": _c(16, 16, 4, 1), "dq": _c(16, 16, 4, 1)},
}

# What MOPS_AUTOTUNE=1 times, per (kernel, family, head-dim bucket). Every table entry is one of these.
CANDIDATES: dict[tuple[str, str, int], list[Config]] = {
    ("fwd", "half", 64): [_c(128, 64, 8, 3), _c(128, 64, 4, 3), _c(128, 128, 8, 3), _c(64, 64, 4, 3), _c(64, 128, 4, 3),
                          _c(128, 32, 8, 3), _c(64, 32, 4, 3)],
    ("fwd", "half", 128): [_c(128, 64, 8, 3), _c(128, 64, 8, 2), _c(64, 64, 4, 3), _c(64, 64, 4, 2), _c(128, 32, 8, 3),
                           _c(64, 32, 4, 3)],
    ("fwd", "half", 256): [_c(64, 32, 8, 3), _c(64, 32, 8, 2), _c(64, 32, 4, 2), _c(32, 32, 4, 2), _c(64, 16, 4, 2)],
    ("dkdv", "half", 64): [_c(64, 128, 8, 2), _c(32, 128, 8, 3), _c(32, 128, 8, 2), _c(64, 64, 8, 2), _c(32, 64, 4, 3),
                           _c(16, 128, 8, 2)],
    ("dkdv", "half", 128): [_c(32, 64, 8, 2), _c(32, 128, 8, 2), _c(16, 128, 8, 2), _c(32, 64, 4, 2), _c(64, 64, 8, 2),
                            _c(16, 64, 4, 2)],
    ("dkdv", "half", 256): [_c(16, 64, 8, 2), _c(16, 32, 4, 2), _c(32, 32, 8, 2), _c(16, 64, 4, 2)],
    ("dq", "half", 64): [_c(128, 64, 8, 2), _c(128, 32, 8, 3), _c(64, 64, 4, 3), _c(64, 32, 4, 3), _c(128, 64, 8, 3),
                         _c(128, 32, 8, 2)],
    ("dq", "half", 128): [_c(64, 32, 4, 2), _c(64, 16, 4, 3), _c(64, 32, 4, 3), _c(128, 32, 8, 2), _c(64, 64, 8, 2),
                          _c(128, 16, 8, 3)],
    ("dq", "half", 256): [_c(64, 16, 8, 2), _c(32, 16, 4, 2), _c(32, 32, 8, 2), _c(64, 16, 4, 2)],
    ("fwd", "fp32", 64): [_c(32, 32, 4, 2), _c(32, 16, 4, 2), _c(16, 32, 4, 2), _c(16, 64, 4, 2)],
    ("fwd", "fp32", 128): [_c(32, 16, 4, 2), _c(16, 32, 4, 2), _c(16, 16, 4, 2), _c(32, 32, 4, 1)],
    ("fwd", "fp32", 256): [_c(16, 16, 4, 1), _c(16, 16, 4, 2), _c(32, 16, 4, 1)],
    ("dkdv", "fp32", 64): [_c(32, 16, 4, 2), _c(16, 32, 4, 2), _c(32, 32, 4, 2)],
    ("dkdv", "fp32", 128): [_c(16, 32, 4, 2), _c(32, 16, 4, 2), _c(16, 16, 4, 2)],
    ("dkdv", "fp32", 256): [_c(16, 16, 4, 1), _c(16, 16, 4, 2)],
    ("dq", "fp32", 64): [_c(32, 32, 4, 2), _c(32, 16, 4, 2), _c(16, 32, 4, 2), _c(16, 64, 4, 2), _c(64, 16, 4, 2)],
    ("dq", "fp32", 128): [_c(32, 16, 4, 2), _c(16, 32, 4, 2), _c(16, 16, 4, 2)],
    ("dq", "fp32", 256): [_c(16, 16, 4, 1), _c(16, 16, 4, 2)],
}


def launch_config(
    kernel: str,
    capability: tuple[int, int] | None,
    dtype: torch.dtype,
    head_dim: int,
    seq_len: int,
    saved: Mapping[str, Config] | None = None,
) -> Config:
    """The configuration of `kernel` ("fwd", "dkdv", "dq") for these inputs: a saved tuning
    choice, else the architecture's table row, else the conservative "*" row.
    `capability` None is the CPU interpreter."""
    key = config_key(kernel, dtype, head_dim, seq_len)  # also validates the arguments
    if capability is None:
        return INTERPRETER[kernel]
    if saved and key in saved:
        return saved[key]
    return TABLE[table_row(capability, dtype, head_dim, seq_len)][kernel]


def table_row(capability: tuple[int, int], dtype: torch.dtype, head_dim: int,
              seq_len: int) -> tuple[str, str, int, str]:
    """The TABLE key `launch_config` reads on a GPU of `capability` when no tuning choice is saved:
    the architecture's row for this length bucket, else its any-length row, else the same two
    rows of the "*" architecture. Named so that a report can say which row a launch used."""
    family, d, lb = dtype_family(dtype), head_dim_bucket(head_dim), length_bucket(seq_len)
    for row in ((arch(capability), family, d, lb), (arch(capability), family, d, _ANY), ("*", family, d, lb),
                ("*", family, d, _ANY)):
        if row in TABLE:
            return row
    raise AssertionError(f"attention_blocks: the table has no '*' row for {family} d{d}")  # a test guards this


def candidates(kernel: str, dtype: torch.dtype, head_dim: int) -> list[Config]:
    """The configurations MOPS_AUTOTUNE=1 times for this kernel and input kind."""
    return list(CANDIDATES[(kernel, dtype_family(dtype), head_dim_bucket(head_dim))])


# ----------------------------------------------------------------------------- tuning and its cache


def autotune_enabled() -> bool:
    return os.environ.get(AUTOTUNE_ENV, "0") not in ("", "0")


def cache_path(gpu_name: str) -> Path:
    """$MOPS_AUTOTUNE_CACHE, else ~/.cache/mops/autotune-<gpu name as a file name>.json."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    tag = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    root = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return root / "mops" / f"autotune-{tag}.json"


def load_saved(path: str | os.PathLike) -> dict[str, Config]:
    """The choices saved in `path`; {} when there is none. A file or entry that cannot be read is
    skipped with a warning that names it: a broken cache costs speed, never a run."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        choices = data["choices"]
        if not isinstance(choices, dict):
            raise TypeError(f"'choices' is a {type(choices).__name__}, not an object")
    except (OSError, ValueError, KeyError, TypeError) as error:
        warnings.warn(f"ignoring the autotuning cache {path}: {error}; the launch table is used instead", stacklevel=2)
        return {}
    saved = {}
    for key, value in choices.items():
        try:
            saved[key] = Config(**value)
        except TypeError as error:
            warnings.warn(f"ignoring entry {key!r} of the autotuning cache {path}: {error}", stacklevel=2)
    return saved


def save_choice(path: str | os.PathLike, gpu_name: str, key: str, config: Config) -> None:
    """Add one choice to the cache file (merging with what is there), written atomically."""
    choices = {k: asdict(v) for k, v in load_saved(path).items()}
    choices[key] = asdict(config)
    try:
        import triton

        version = triton.__version__
    except ImportError:  # pragma: no cover
        version = "unknown"
    atomic_write_json(path, {"gpu": gpu_name, "triton": version, "choices": dict(sorted(choices.items()))})


def tune(run: Callable[[Config], None], configs: Iterable[Config], timer: Callable[[Callable[[], None]], float]) -> Config:
    """The fastest of `configs` by `timer(lambda: run(config))` (lower is better). A configuration
    that fails to compile or launch (too much shared memory, too many registers) is skipped."""
    best, best_time, failures = None, float("inf"), []
    for config in configs:
        try:
            run(config)  # compile outside the timing
            elapsed = timer(functools.partial(run, config))
        except Exception as error:  # noqa: BLE001 - Triton raises several kinds for resource limits
            failures.append(f"{config}: {type(error).__name__}: {error}")
            continue
        if elapsed < best_time:
            best, best_time = config, elapsed
    if best is None:
        raise RuntimeError("autotuning: no configuration ran:\n  " + "\n  ".join(failures))
    return best


def _benchmark(fn: Callable[[], None]) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=5, rep=25))


@functools.lru_cache(maxsize=None)
def _device_facts(index: int) -> tuple[tuple[int, int], str]:
    return torch.cuda.get_device_capability(index), gpu_name(index)


_saved_by_path: dict[Path, dict[str, Config]] = {}


def config_for(
    kernel: str, device: torch.device, dtype: torch.dtype, head_dim: int, seq_len: int,
    run: Callable[[Config], None],
) -> Config:
    """The configuration a launcher uses on `device`; `run(config)` launches the kernel with it
    (called only when MOPS_AUTOTUNE=1 and this key has no saved choice yet). Under the
    interpreter (CPU tensors, or TRITON_INTERPRET=1 on a GPU machine) the interpreter's blocks."""
    if device.type != "cuda" or interpreter_enabled():
        return launch_config(kernel, None, dtype, head_dim, seq_len)
    index = device.index if device.index is not None else torch.cuda.current_device()
    capability, name = _device_facts(index)
    path = cache_path(name)
    if path not in _saved_by_path:
        _saved_by_path[path] = load_saved(path)
    saved = _saved_by_path[path]
    key = config_key(kernel, dtype, head_dim, seq_len)
    if key not in saved and autotune_enabled():
        saved[key] = tune(run, candidates(kernel, dtype, head_dim), _benchmark)
        save_choice(path, name, key, saved[key])
    return launch_config(kernel, capability, dtype, head_dim, seq_len, saved)
