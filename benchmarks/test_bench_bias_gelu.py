"""Bias + exact GELU forward + backward, bf16, 16384 x 3072 (BERT-base's feed-forward width).

Entries: triton (kernels.bias_gelu), torch (F.gelu(x + bias), the PyTorch twin), copy (a
device copy moving the same bytes). Recorded in extra_info: `GB/s` = moved_bytes (the Triton
kernels' traffic, `fwd_bwd_bytes`, for every entry, so ratios are speed ratios) / median
time; for triton and torch also `copy GB/s` measured in the same test, `fraction_of_copy`,
and `peak_extra_bytes` (peak allocation over one step less what was held before it).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import copy_step, measure_bandwidth, requires_cuda, synchronize
from mops import kernels
from mops.kernels import rowwise
from mops.kernels.bias_gelu import MAX_BLOCK_N

ROWS, WIDTH = 16384, 3072
DTYPE = torch.bfloat16
ROUNDS, WARMUP = 100, 10


def fwd_bwd_bytes(rows: int, width: int, elem: int, programs: int) -> int:
    """Bytes the Triton forward + backward read and write.

    forward:  read x, bias; write y
    backward: read x, bias, dy; write dx; write the (G, N) fp32 partial sums of dbias; the
              reduction reads them and writes dbias
    """
    total = 5 * rows * width * elem  # x, y, x, dy, dx
    total += 3 * width * elem  # bias twice, dbias
    total += 2 * programs * width * 4  # partial sums, written then read
    return total





@requires_cuda
@pytest.mark.parametrize("impl", ["triton", "torch", "copy"])
def test_bias_gelu_fwd_bwd_bf16(benchmark, impl):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(ROWS, WIDTH, device="cuda", generator=g).to(DTYPE).requires_grad_()
    bias = (0.1 * torch.randn(WIDTH, device="cuda", generator=g)).to(DTYPE).requires_grad_()
    dy = torch.randn(ROWS, WIDTH, device="cuda", generator=g).to(DTYPE)
    block_n, tile_rows, _ = rowwise.row_tile(WIDTH, MAX_BLOCK_N)
    programs, _ = rowwise.backward_grid(-(-ROWS // tile_rows), x.device, -(-WIDTH // block_n))
    nbytes = fwd_bwd_bytes(ROWS, WIDTH, x.element_size(), programs)

    def run(backend):
        def step():
            y = kernels.bias_gelu(x, bias, backend=backend)
            torch.autograd.grad(y, (x, bias), dy)
            synchronize()

        return step

    step = copy_step(nbytes) if impl == "copy" else run(impl)
    step()
    benchmark.group = f"bias_gelu fwd+bwd bf16 {ROWS}x{WIDTH}"
    benchmark.extra_info.update(impl=impl, rows=ROWS, width=WIDTH, dtype="bfloat16", moved_bytes=nbytes)
    measure_bandwidth(benchmark, step, nbytes, impl, ROUNDS, WARMUP)
