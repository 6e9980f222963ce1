"""Every Triton launch goes through `launch`, so a test can count the kernel variants a run compiles.

Triton compiles one binary per *specialization* of a kernel: its constexpr values and launch
options (block sizes, num_warps, num_stages), the element type of each pointer and whether its
address is a multiple of 16 bytes, and for each integer argument its width (i32 / i64 / u64),
whether it equals 1 (then it becomes a constant) and whether it is a multiple of 16. A sequence
length that takes many values therefore costs at most a few binaries, but a constexpr that
follows the length would cost one per length. `record_launches` makes that count visible:

    with record_launches() as log:
        run_one_epoch()
    assert len(log.distinct()) <= 40
    log.by_kernel()  # {"attention.fwd": {Specialization(...), ...}, ...}

Recording works the same under the CPU interpreter (which compiles nothing) and on a GPU, so the
count a CPU test asserts is the number of binaries a GPU run of the same work would compile.
Outside `record_launches` the bookkeeping costs one truth test per launch.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

_TRITON_TYPES = {
    torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
    torch.int8: "i8", torch.int16: "i16", torch.int32: "i32", torch.int64: "i64",
    torch.uint8: "u8", torch.bool: "u1",
}


@dataclass(frozen=True)
class Specialization:
    """One compiled variant of a kernel: what Triton keys its binary cache on (device aside)."""

    kernel: str  # e.g. "attention.fwd"
    constants: tuple[tuple[str, Any], ...]  # constexpr values and launch options, sorted by name
    signature: tuple[str, ...]  # one entry per runtime argument, e.g. "*bf16:16", "i32:16", "i32", "=1", "fp32"


@dataclass(eq=False)  # compared by identity: nested blocks must find their own log
class LaunchLog:
    """The launches made inside one `record_launches` block, in order."""

    launches: list[Specialization] = field(default_factory=list)

    def distinct(self) -> set[Specialization]:
        return set(self.launches)

    def by_kernel(self) -> dict[str, set[Specialization]]:
        out: dict[str, set[Specialization]] = {}
        for spec in self.launches:
            out.setdefault(spec.kernel, set()).add(spec)
        return out


_active: list[LaunchLog] = []


@contextlib.contextmanager
def record_launches() -> Iterator[LaunchLog]:
    """Collect every kernel launch made inside the block (blocks may nest; each sees all launches)."""
    log = LaunchLog()
    _active.append(log)
    try:
        yield log
    finally:
        _active.remove(log)


def argument_signature(value: Any, specialize: bool = True) -> str:
    """How Triton 3.x types and specializes one runtime argument (its `specialize_impl`, in words).

    Integers: width by range; == 1 becomes a constant; a multiple of 16 is marked ":16".
    Tensors: "*" + element type; an address that is a multiple of 16 bytes is marked ":16".
    Floats and bools are never specialized. `specialize=False` is `do_not_specialize`.
    """
    if value is None:
        return "=None"
    if isinstance(value, bool):
        return "u1"
    if isinstance(value, int):
        if specialize and value == 1:
            return "=1"
        if -(2**31) <= value < 2**31:
            kind = "i32"
        elif 2**63 <= value < 2**64:
            kind = "u64"
        else:
            kind = "i64"
        return kind + (":16" if specialize and value % 16 == 0 else "")
    if isinstance(value, float):
        return "fp32"
    if isinstance(value, torch.Tensor):
        kind = "*" + _TRITON_TYPES.get(value.dtype, str(value.dtype).removeprefix("torch."))
        return kind + (":16" if specialize and value.data_ptr() % 16 == 0 else "")
    return type(value).__name__


def _kernel_params(kernel: Any) -> tuple[list[str], set[str], set[str]]:
    """(argument names, constexpr names, do-not-specialize names) of a JIT or interpreted kernel."""
    fn = kernel.fn
    params = inspect.signature(fn).parameters
    names = list(params)
    constexpr = {n for n, p in params.items() if "constexpr" in str(p.annotation)}
    dns = getattr(kernel, "do_not_specialize", None)
    if dns is None:  # the interpreter keeps jit's keyword arguments in `kwargs`
        dns = getattr(kernel, "kwargs", {}).get("do_not_specialize")
    not_specialized = {names[d] if isinstance(d, int) else d for d in (dns or [])}
    return names, constexpr, not_specialized


def specialization(name: str, kernel: Any, args: tuple, kwargs: dict) -> Specialization:
    """The Specialization that `kernel[grid](*args, **kwargs)` compiles, reported under `name`."""
    names, constexpr, not_specialized = _kernel_params(kernel)
    bound = dict(zip(names, args))
    options = {}
    for key, value in kwargs.items():
        if key in names:
            bound[key] = value
        else:
            options[key] = value  # num_warps, num_stages, ...
    constants = dict(options)
    signature = []
    for arg in names:
        if arg not in bound:
            continue  # a parameter with a default the launcher did not pass
        value = bound[arg]
        if arg in constexpr:
            constants[arg] = value
        else:
            signature.append(argument_signature(value, specialize=arg not in not_specialized))
    return Specialization(name, tuple(sorted(constants.items())), tuple(signature))


def launch(name: str, kernel: Any, grid: Any, *args: Any, **kwargs: Any) -> None:
    """`kernel[grid](*args, **kwargs)`, reported first to every active `record_launches` as `name`."""
    if _active:
        spec = specialization(name, kernel, args, kwargs)
        for log in _active:
            log.launches.append(spec)
    kernel[grid](*args, **kwargs)
