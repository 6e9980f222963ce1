"""Add & norm forward + backward, bf16, 16384 x 768: the Triton kernel, PyTorch, and a device copy.

One group per variant (with and without residual), three entries each:
  triton  kernels.layer_norm(x, w, b, eps, residual)
  torch   torch.nn.functional.layer_norm(x + residual, ...)   (the PyTorch twin)
  copy    a device-to-device copy moving the same number of bytes: the bandwidth ceiling

Recorded in extra_info:
  GB/s              moved_bytes / median time. moved_bytes is the Triton kernels' traffic
                    (`fwd_bwd_bytes`) for all three entries, so GB/s ratios are speed ratios.
  copy GB/s         (triton, torch) the copy's bandwidth, measured again inside the same test.
  fraction_of_copy  (triton, torch) GB/s / copy GB/s; the target for triton is >= 0.85.
  peak_extra_bytes  (triton, torch) torch.cuda.max_memory_allocated over one step, less the
                    memory held before it (inputs and upstream gradient).
Timings are wall-clock with a synchronisation inside the step, so they include the host's
launch overhead whenever that is longer than the GPU work.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import copy_step, measure_bandwidth, requires_cuda, synchronize
from mops import kernels
from mops.kernels import rowwise
from mops.kernels.layer_norm import MAX_WIDTH

ROWS, WIDTH, EPS = 16384, 768, 1e-12
DTYPE = torch.bfloat16
ROUNDS, WARMUP = 100, 10


def fwd_bwd_bytes(rows: int, width: int, elem: int, param_elem: int, residual: bool, programs: int) -> int:
    """Bytes the Triton forward + backward read and write.

    forward:  read x (+ residual), weight, bias; write y; write mean, rstd (fp32 per row)
    backward: read x (+ residual), dy, mean, rstd, weight; write dx (d residual is the same
              tensor); write the (2, G, N) fp32 partial sums; the reduction reads them and
              writes dweight, dbias
    """
    streams = (2 if residual else 1) + 1 + (2 if residual else 1) + 1 + 1  # fwd in, y, bwd in, dy, dx
    total = streams * rows * width * elem
    total += 2 * 2 * 4 * rows  # mean and rstd, written once and read once
    total += 5 * width * param_elem  # weight, bias, weight again, dweight, dbias
    total += 2 * 2 * programs * width * 4  # partial sums, written then read
    return total





@requires_cuda
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "noresidual"])
@pytest.mark.parametrize("impl", ["triton", "torch", "copy"])
def test_layer_norm_fwd_bwd_bf16(benchmark, impl, residual):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(ROWS, WIDTH, device="cuda", generator=g).to(DTYPE).requires_grad_()
    r = torch.randn(ROWS, WIDTH, device="cuda", generator=g).to(DTYPE).requires_grad_() if residual else None
    w = (1 + 0.1 * torch.randn(WIDTH, device="cuda", generator=g)).to(DTYPE).requires_grad_()
    b = (0.1 * torch.randn(WIDTH, device="cuda", generator=g)).to(DTYPE).requires_grad_()
    dy = torch.randn(ROWS, WIDTH, device="cuda", generator=g).to(DTYPE)
    leaves = [t for t in (x, r, w, b) if t is not None]
    block_n, tile_rows, _ = rowwise.row_tile(WIDTH, MAX_WIDTH)
    programs, _ = rowwise.backward_grid(-(-ROWS // tile_rows), x.device)
    nbytes = fwd_bwd_bytes(ROWS, WIDTH, x.element_size(), w.element_size(), residual, programs)

    def run(backend):
        def step():
            y = kernels.layer_norm(x, w, b, EPS, residual=r, backend=backend)
            torch.autograd.grad(y, leaves, dy)
            synchronize()

        return step

    step = copy_step(nbytes) if impl == "copy" else run(impl)
    step()  # compile / warm up
    benchmark.group = f"layer_norm fwd+bwd bf16 {ROWS}x{WIDTH} {'residual' if residual else 'no residual'}"
    benchmark.extra_info.update(
        impl=impl, rows=ROWS, width=WIDTH, dtype="bfloat16", residual=residual, moved_bytes=nbytes
    )
    measure_bandwidth(benchmark, step, nbytes, impl, ROUNDS, WARMUP)
