"""Registers, spills and shared memory of every kernel configuration, measured without a GPU.

A kernel that needs more than 255 registers a thread spills the rest to local memory: it
still runs, only slower, and nothing says so. One whose shared memory exceeds its
architecture's limit per block fails at launch, on the user's GPU. Both are properties of the
compiled binary, so they can be read ahead of time on any Linux machine with Triton:
`triton.compile` builds a kernel for a GPUTarget of our choosing, and the ptxas Triton bundles
reports registers and spills (`-v`) as it assembles the PTX. This module does that for every
configuration the launchers can pick on one architecture:

    records = measure((9, 0))    # [Resources(kernel, configuration, target, registers, ...), ...]
    python -m mops.kernels.resources --capability 9.0 --json results/kernel-resources-sm90-triton-3.9.json

Configurations. The launchers say which arguments a kernel gets: each op runs once on small CPU
tensors under the interpreter, inside `record_launches`, and each recorded specialization
(pointer types, integer specializations, constexprs) becomes the one a GPU compiles by swapping
in what a GPU launch chooses: for the attention kernels, every block-table row
`attention_blocks.launch_config` can return on that architecture (each dtype, head-dim bucket
and length bucket, with and without dropout, with a padding mask); for `sum_partials`, its GPU
blocks. Layer norm, bias + GELU (`rowwise.row_tile`) and AdamW choose their blocks from the
width alone, so their recorded launches are the GPU ones; they run at BERT's widths and up to
the launchers' limits. Each launch is compiled from the kernel its module lists under the
launch's name in LAUNCHED_KERNELS.

Registers and spills come from the ptxas log of Triton's own cubin stage (TRITON_DUMP_PTXAS_LOG):
the ptxas binary and its flags differ between Triton versions and move the count (3.9 adds
--regAllocOptLevel=2, 7 registers fewer on one attention forward). Shared memory is what Triton
allocates (`metadata.shared`) plus any static shared memory ptxas reports.

Processes. Recording needs the interpreter (TRITON_INTERPRET=1 before `kernels` is imported;
where it is off, a child process records). Compiling needs it off, and not only for our kernels:
Triton's own library functions are interpreter objects too, and once the interpreter has run a
kernel that calls another, `triton.language` stays patched in that process. So child processes
without it compile, one per core.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from mops.common.files import atomic_write_json
from mops.kernels import attention_blocks as lc
from mops.kernels import rowwise
from mops.kernels.adamw import LAUNCHED_KERNELS as ADAMW_KERNELS
from mops.kernels.adamw import adamw_step
from mops.kernels.attention import LAUNCHED_KERNELS as ATTENTION_KERNELS
from mops.kernels.attention import attention_dropout_mask, attention_with_seed
from mops.kernels.bias_gelu import LAUNCHED_KERNELS as BIAS_GELU_KERNELS
from mops.kernels.bias_gelu import MAX_BLOCK_N, bias_gelu
from mops.kernels.dispatch import interpreter_enabled
from mops.kernels.launches import Specialization, record_launches
from mops.kernels.layer_norm import LAUNCHED_KERNELS as LAYER_NORM_KERNELS
from mops.kernels.layer_norm import MAX_WIDTH, SUM_PARTIALS_GPU_BLOCKS, layer_norm

MAX_REGISTERS = 255  # per thread; ptxas spills what does not fit
# Shared memory one block may use (the opt-in maximum Triton checks at launch), per architecture.
SHARED_PER_BLOCK = {"9.0": 227 * 1024, "8.0": 163 * 1024, "8.6": 99 * 1024, "8.9": 99 * 1024}

# Launch name (what `record_launches` reports) -> the jit kernel it runs.
KERNELS = {**ATTENTION_KERNELS, **LAYER_NORM_KERNELS, **BIAS_GELU_KERNELS, **ADAMW_KERNELS}
# Hidden and feed-forward widths from BERT-tiny to BERT-large (the layer-norm limit is added below).
WIDTHS = (128, 384, 768, 1024, 1536, 3072, 4096, 8192)
# (label, activation dtype, parameter dtype): one precision each, and autocast's bf16 activations
# with fp32 parameters (a bf16 linear output plus an fp32 bias).
PRECISIONS = (
    ("fp32", torch.float32, torch.float32),
    ("fp16", torch.float16, torch.float16),
    ("bf16", torch.bfloat16, torch.bfloat16),
    ("bf16 x, fp32 params", torch.bfloat16, torch.float32),
)
ATTENTION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# One dtype per block choice (the tests' quick set): fp16 gets the blocks bf16 gets, and the
# elementwise kernels choose theirs from the width alone.
ONE_DTYPE = ((torch.float16, torch.float32), PRECISIONS[:1])
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int8: "i8"}
_ROOT = Path(__file__).resolve().parents[2]  # where the child processes run `python -m mops.kernels.resources`

Launch = tuple[Specialization, str, str]  # (a GPU launch, its dtypes in words, what uses it)


@dataclass(frozen=True)
class KernelConfig:
    """One binary to compile: a launch's specialization as the target architecture compiles it."""

    spec: Specialization
    label: str  # the dtypes, in words: "bf16"
    used_for: tuple[str, ...]  # the table rows or widths that launch it


@dataclass(frozen=True)
class Resources:
    """What one compiled configuration uses per thread (registers, spills) and per block (shared)."""

    kernel: str  # the launch name, "attention.fwd"
    configuration: str  # dtypes, constexprs and launch options
    target: str  # what ptxas compiled for: "sm_90a"
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    shared_bytes: int
    used_for: tuple[str, ...] = ()

    @property
    def spills(self) -> bool:
        return self.spill_store_bytes > 0 or self.spill_load_bytes > 0


@dataclass(frozen=True)
class PtxasUsage:
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    static_shared_bytes: int
    target: str | None


# ----------------------------------------------------------------------------- ptxas


def parse_ptxas(log: str) -> PtxasUsage:
    """Read `ptxas -v` output: registers of the busiest function, spills and static shared memory
    summed over functions (Triton inlines everything, so there is one), and the target."""
    registers = [int(n) for n in re.findall(r"Used (\d+) registers", log)]
    if not registers:
        raise ValueError(f"no 'Used N registers' line in the ptxas output:\n{log}")
    spills = [(int(s), int(l)) for s, l in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)]
    target = re.search(r"for '(sm_\w+)'", log)
    return PtxasUsage(
        registers=max(registers),
        spill_store_bytes=sum(s for s, _ in spills),
        spill_load_bytes=sum(l for _, l in spills),
        static_shared_bytes=sum(int(n) for n in re.findall(r"(\d+) bytes smem", log)),
        target=target.group(1) if target else None,
    )


# ----------------------------------------------------------------------------- configurations


def _capability(capability: tuple[int, int] | str) -> tuple[int, int]:
    if isinstance(capability, str):
        major, _, minor = capability.partition(".")
        return int(major), int(minor or 0)
    return tuple(capability)  # type: ignore[return-value]


def _recorded(op: Callable[..., Any], *args: Any, backward: bool = False, **kwargs: Any) -> list[Specialization]:
    """The distinct launches `op(*args, **kwargs)` makes (and the backward of its sum), in order."""
    with record_launches() as log:
        out = op(*args, **kwargs)
        if backward:
            out.sum().backward()
    return list(dict.fromkeys(log.launches))


def _with(spec: Specialization, **constants: Any) -> Specialization:
    return Specialization(spec.kernel, tuple(sorted({**dict(spec.constants), **constants}.items())), spec.signature)


def _table_row(capability: tuple[int, int], dtype: torch.dtype, d: int, length: int) -> str:
    """The TABLE row `launch_config` reads for this launch, as "9.0/half/d64/L<=128"."""
    arch, family, head_dim, lengths = lc.table_row(capability, dtype, d, length)
    return f"{arch}/{family}/d{head_dim}/{lengths}"


@functools.cache
def _attention_launches(dtypes: tuple[torch.dtype, ...]) -> tuple[tuple[Specialization, torch.dtype, int], ...]:
    """(launch, dtype, head dim) of the attention kernels, as the interpreter runs them."""
    out = []
    for dtype, d, dropout in itertools.product(dtypes, lc.HEAD_DIM_BUCKETS, (0.0, 0.1)):
        # H = 2 and L = 20 stay plain runtime integers, as BERT's 12 heads and padded lengths do
        # (a 1 would be compiled in as a constant, a multiple of 16 marked as one).
        q, k, v = (torch.randn(1, 2, 20, d, dtype=dtype, requires_grad=True) for _ in range(3))
        mask = torch.ones(1, 20, dtype=torch.int64)
        mask[0, 15:] = 0
        launched = _recorded(attention_with_seed, q, k, v, mask, None, dropout, seed=5, backward=True)
        out += [(spec, dtype, d) for spec in launched]
    mask_launches = _recorded(attention_dropout_mask, 5, 1, 2, 20, 0.1, "cpu")
    return tuple(out + [(spec, torch.int8, 0) for spec in mask_launches])


def _attention(capability: tuple[int, int], dtypes: tuple[torch.dtype, ...]) -> list[Launch]:
    """The attention launches with the blocks of every table row `launch_config` picks on `capability`."""
    out = []
    lengths = (*lc.LENGTH_BUCKETS, lc.LENGTH_BUCKETS[-1] + 1)  # one length in each bucket
    for spec, dtype, d in _attention_launches(dtypes):
        label = DTYPE_NAMES[dtype]
        name = spec.kernel.removeprefix("attention.")
        if name not in lc.KERNELS:  # the delta and dropout-mask kernels: fixed blocks
            out.append((spec, label, f"d{d}" if d else "tests"))
            continue
        for length in lengths:
            config = lc.launch_config(name, capability, dtype, d, length)
            row = _table_row(capability, dtype, d, length)
            out.append((_with(spec, **config.meta()), label, row))
    return out


@functools.cache
def _elementwise(precisions: tuple[tuple[str, torch.dtype, torch.dtype], ...]) -> tuple[Launch, ...]:
    """(launch, dtypes, width or variant) of layer norm, bias + GELU and AdamW on a GPU."""
    out = []
    for (label, act, param), width in itertools.product(precisions, sorted({*WIDTHS, MAX_WIDTH})):
        # Five row tiles of either op's largest: each backward program walks two or more (a run
        # of 1 would be compiled in as a constant).
        rows = 5 * max(rowwise.row_tile(width, block).rows for block in (MAX_WIDTH, MAX_BLOCK_N))
        x, residual = (torch.randn(rows, width, dtype=act, requires_grad=True) for _ in range(2))
        weight, bias = (torch.randn(width, dtype=param, requires_grad=True) for _ in range(2))

        launched = _recorded(layer_norm, x, weight, bias, 1e-12, residual, backend="triton", backward=True)
        launched += _recorded(bias_gelu, x, bias, backend="triton", backward=True)
        for spec in launched:
            if spec.kernel == "sum_partials":
                spec = _with(spec, **SUM_PARTIALS_GPU_BLOCKS)
            out.append((spec, label, f"width {width}"))
    single = [(label, param) for label, act, param in precisions if act == param]
    for (label, param), decay in itertools.product(single, (0.0, 0.01)):
        tensors = [[torch.randn(5000, dtype=param) for _ in range(3)] for _ in range(4)]  # p, g, m, v
        launched = _recorded(adamw_step, *tensors, step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                             weight_decay=decay, correct_bias=True, backend="triton")
        out += [(spec, label, "decay" if decay else "no decay") for spec in launched]
    return tuple(out)


def configurations(capability: tuple[int, int] | str, every_dtype: bool = True) -> list[KernelConfig]:
    """Every kernel configuration the launchers can pick on `capability`, each binary once.
    `every_dtype=False`: the same block choices in one dtype each (ONE_DTYPE)."""
    capability = _capability(capability)
    if not interpreter_enabled():
        return _configurations_in_child(capability, every_dtype)
    dtypes, precisions = (ATTENTION_DTYPES, PRECISIONS) if every_dtype else ONE_DTYPE
    found: dict[Specialization, tuple[str, list[str]]] = {}
    for spec, label, use in [*_attention(capability, dtypes), *_elementwise(precisions)]:
        if spec.kernel not in KERNELS:
            raise KeyError(f"resources: launch {spec.kernel!r} is in no kernel module's LAUNCHED_KERNELS; "
                           "add it to the LAUNCHED_KERNELS of the module that launches it")
        uses = found.setdefault(spec, (label, []))[1]
        if use not in uses:
            uses.append(use)
    return [KernelConfig(spec, label, tuple(uses)) for spec, (label, uses) in found.items()]


def _configurations_in_child(capability: tuple[int, int], every_dtype: bool) -> list[KernelConfig]:
    """`configurations` recorded by a child process under the interpreter (this one has none)."""
    command = [sys.executable, "-m", "mops.kernels.resources", "--capability", lc.arch(capability), "--list"]
    command += [] if every_dtype else ["--one-dtype"]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(command, env=env, cwd=_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"recording the launches in a child process failed:\n{done.stderr[-4000:]}")
    listed = done.stdout
    return [_config_from_json(item) for item in json.loads(listed)]


def _config_to_json(config: KernelConfig) -> dict:
    return {"kernel": config.spec.kernel, "constants": config.spec.constants, "signature": config.spec.signature,
            "label": config.label, "used_for": config.used_for}


def _config_from_json(item: dict) -> KernelConfig:
    spec = Specialization(item["kernel"], tuple(tuple(c) for c in item["constants"]), tuple(item["signature"]))
    return KernelConfig(spec, item["label"], tuple(item["used_for"]))


# ----------------------------------------------------------------------------- compiling


def triton_and_knobs() -> tuple[ModuleType, Any]:
    """(triton, triton.knobs), or an error that says what this module needs."""
    try:
        import triton
        from triton import knobs
    except ImportError as error:
        raise RuntimeError(f"mops.kernels.resources needs Triton >= 3.6 with `triton.knobs` ({error})") from error
    version = tuple(int(part) for part in re.findall(r"\d+", triton.__version__)[:2])
    if version < (3, 6):
        raise RuntimeError(f"mops.kernels.resources needs Triton >= 3.6 (its ASTSource and knobs), found {triton.__version__}")
    if not hasattr(knobs.nvidia, "dump_ptxas_log"):
        raise RuntimeError(f"mops.kernels.resources needs triton.knobs.nvidia.dump_ptxas_log, which Triton "
                           f"{triton.__version__} lacks")
    return triton, knobs


def _ast_source(fn: Any, signature: dict[str, str], constexprs: dict[str, Any], divisible: dict[str, int]) -> Any:
    """triton.compile's source for `fn`. Triton 3.3 to 3.9 (so 3.6+) take one type per parameter
    ("constexpr" for the constant ones), constexprs by name and attributes keyed by the parameter's
    index path; 3.2 and older (an AttrsDescriptor, integer keys) are not supported."""
    from triton.compiler import ASTSource

    names = list(fn.arg_names)
    attrs = {(names.index(n),): [["tt.divisibility", d]] for n, d in divisible.items()}
    return ASTSource(fn, signature, constexprs, attrs)


def _source_and_options(fn: Any, spec: Specialization) -> tuple[Any, dict[str, Any]]:
    """The ASTSource and options Triton's launcher would build for a launch recorded as `spec`."""
    names = list(fn.arg_names)
    constants = dict(spec.constants)
    constexprs = {k: v for k, v in constants.items() if k in names}
    options = {k: v for k, v in constants.items() if k not in names}  # num_warps, num_stages
    runtime = [n for n in names if n not in constexprs]
    if len(runtime) != len(spec.signature):
        raise ValueError(f"{spec.kernel}: {len(spec.signature)} recorded arguments for parameters {runtime}")
    types, divisible = {}, {}
    for name, sig in zip(runtime, spec.signature):
        if sig.startswith("="):  # an integer equal to 1 (or None): Triton compiles it in as a constant
            constexprs[name] = None if sig == "=None" else int(sig[1:])
        else:
            kind, _, multiple = sig.partition(":")
            types[name] = kind
            if multiple:
                divisible[name] = int(multiple)
    signature = {n: types.get(n, "constexpr") for n in names}
    return _ast_source(fn, signature, constexprs, divisible), options


def _compile(source: Any, target: Any, options: dict[str, Any]) -> tuple[Any, str]:
    """(compiled kernel, ptxas -v log). The log is what Triton's own cubin stage prints with
    TRITON_DUMP_PTXAS_LOG: the same ptxas binary and flags as the real build (both change between
    Triton versions, and the flags move the count). A kernel from Triton's cache was assembled
    earlier: its PTX goes through that stage again for the log."""
    triton, knobs = triton_and_knobs()
    printed = io.StringIO()
    with knobs.nvidia.scope(), contextlib.redirect_stdout(printed):
        knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(source, target=target, options=options)
        if "registers" not in printed.getvalue():
            from triton.compiler.compiler import make_backend

            backend = make_backend(target)
            parsed = backend.parse_options(dict(options))
            backend.make_cubin(compiled.asm["ptx"], dict(compiled.metadata._asdict()), parsed, target.arch)
    return compiled, printed.getvalue()


def compile_launch(fn: Any, spec: Specialization, capability: tuple[int, int] | str) -> Any:
    """`fn` compiled for `capability` as the launch `spec` specializes it: Triton's CompiledKernel,
    whose `asm` holds the PTX and the cubin, for reading the instructions themselves. Needs the
    interpreter off (see Processes); no ptxas log is taken."""
    from triton.backends.compiler import GPUTarget

    triton, _ = triton_and_knobs()
    major, minor = _capability(capability)
    source, options = _source_and_options(fn, spec)
    return triton.compile(source, target=GPUTarget("cuda", 10 * major + minor, 32), options=options)


def _measure_one(config: KernelConfig, capability: tuple[int, int]) -> Resources:
    """Compile one configuration for `capability` and read what it uses."""
    from triton.backends.compiler import GPUTarget

    fn = KERNELS[config.spec.kernel]
    target = GPUTarget("cuda", 10 * capability[0] + capability[1], 32)
    source, options = _source_and_options(fn, config.spec)
    compiled, log = _compile(source, target, options)
    usage = parse_ptxas(log)
    described = " ".join(f"{k}={v}" for k, v in config.spec.constants)
    return Resources(
        kernel=config.spec.kernel,
        configuration=f"{config.label} {described}",
        target=usage.target or f"sm_{target.arch}",
        registers=usage.registers,
        spill_store_bytes=usage.spill_store_bytes,
        spill_load_bytes=usage.spill_load_bytes,
        shared_bytes=compiled.metadata.shared + usage.static_shared_bytes,
        used_for=config.used_for,
    )


def ptxas_version(capability: tuple[int, int] | str) -> str:
    """The version of the ptxas Triton assembles for `capability` with ("unknown" where its helper moved)."""
    major, minor = _capability(capability)
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return str(get_ptxas(10 * major + minor).version)
    except (ImportError, AttributeError, TypeError):
        return "unknown"


def default_workers() -> int:
    """One compiling process per core this process may use, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores))


def measure(capability: tuple[int, int] | str, configs: Sequence[KernelConfig] | None = None,
            workers: int | None = None) -> list[Resources]:
    """Resources of every configuration (default: `configurations(capability)`), in order.

    Compiled by `workers` child processes without the interpreter: under TRITON_INTERPRET=1 even
    Triton's own library functions are interpreter objects, and once the interpreter has run a
    kernel that calls another, `triton.language` stays patched for it in that process.
    """
    capability = _capability(capability)
    configs = list(configurations(capability) if configs is None else configs)
    workers = max(1, min(workers or default_workers(), len(configs)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    records: list[Resources | None] = [None] * len(configs)
    with tempfile.TemporaryDirectory(prefix="kernel-resources-") as folder:
        children = []
        try:
            for i in range(workers):  # worker i takes configurations i, i + workers, ...
                todo, done, log = (Path(folder) / f"{i}.{name}" for name in ("todo.json", "done.json", "log"))
                todo.write_text(json.dumps([_config_to_json(c) for c in configs[i::workers]]))
                command = [sys.executable, "-m", "mops.kernels.resources", "--capability", lc.arch(capability),
                           "--compile", str(todo), "--json", str(done)]
                with open(log, "w") as output:
                    child = subprocess.Popen(command, env=env, cwd=_ROOT, stdout=output, stderr=subprocess.STDOUT)
                children.append((child, done, log))
            for i, (child, done, log) in enumerate(children):
                if child.wait() != 0:
                    raise RuntimeError(f"compiling for sm_{capability[0]}{capability[1]} failed:\n"
                                       f"{log.read_text()[-4000:]}")
                records[i::workers] = [_record_from_json(r) for r in json.loads(done.read_text())]
        finally:
            for child, _, _ in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
    return records  # type: ignore[return-value]


def _record_from_json(item: dict) -> Resources:
    return Resources(**{**item, "used_for": tuple(item["used_for"])})


# ----------------------------------------------------------------------------- limits


def problems(record: Resources, capability: tuple[int, int] | str) -> list[str]:
    """What is wrong with `record` on `capability`: spills, too much shared memory, too many registers."""
    arch = lc.arch(_capability(capability))
    found = []
    if record.spills:
        found.append(f"spills {record.spill_store_bytes} bytes stored / {record.spill_load_bytes} bytes loaded")
    limit = SHARED_PER_BLOCK.get(arch)
    if limit is not None and record.shared_bytes > limit:
        found.append(f"{record.shared_bytes} bytes of shared memory > {limit}")
    if record.registers > MAX_REGISTERS:
        found.append(f"{record.registers} registers > {MAX_REGISTERS}")
    return found


def describe(record: Resources) -> str:
    return f"{record.kernel} [{record.configuration}] on {record.target}"


# ----------------------------------------------------------------------------- command line


def _table(records: Sequence[Resources], capability: tuple[int, int] | str) -> str:
    from tabulate import tabulate

    rows = [(r.kernel, r.configuration, r.target, r.registers, r.spill_store_bytes, r.spill_load_bytes,
             r.shared_bytes, "; ".join(problems(r, capability))) for r in records]
    headers = ["kernel", "configuration", "target", "registers", "spill stores", "spill loads", "shared", "problem"]
    return tabulate(rows, headers=headers, tablefmt="github")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mops.kernels.resources", description=__doc__.split("\n\n")[0])
    parser.add_argument("--capability", default="9.0", help="compute capability to compile for: 9.0, 8.0, ...")
    parser.add_argument("--json", help="write the records here (atomically)")
    parser.add_argument("--workers", type=int, default=None, help="compiling processes (default: one per core, <= 8)")
    parser.add_argument("--one-dtype", action="store_true", help="each block choice in one dtype (the tests' set)")
    parser.add_argument("--list", action="store_true", help="print the configurations as JSON; compile nothing")
    parser.add_argument("--compile", metavar="CONFIGS", help=argparse.SUPPRESS)  # a worker of `measure`
    args = parser.parse_args(argv)
    capability = _capability(args.capability)
    if args.list:
        print(json.dumps([_config_to_json(c) for c in configurations(capability, not args.one_dtype)]))
        return 0
    if args.compile:
        if interpreter_enabled():
            raise RuntimeError("mops.kernels.resources --compile: Triton cannot compile with TRITON_INTERPRET=1 set")
        configs = [_config_from_json(item) for item in json.loads(Path(args.compile).read_text())]
        atomic_write_json(args.json, [asdict(_measure_one(c, capability)) for c in configs])
        return 0
    triton, _ = triton_and_knobs()
    records = measure(capability, configurations(capability, not args.one_dtype), workers=args.workers)
    print(_table(records, capability))
    if args.json:
        atomic_write_json(args.json, {
            "capability": lc.arch(capability),
            "triton": triton.__version__,
            "ptxas": ptxas_version(capability),
            "limits": {"registers": MAX_REGISTERS, "shared_bytes": SHARED_PER_BLOCK.get(lc.arch(capability))},
            "records": [asdict(r) for r in records],
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
