"""mops.kernels.rowwise: the one launch rule of the row-wise kernels (layer norm, bias + GELU).

The rule, as these tests state it:
  * BLOCK_N is the row width rounded up to a power of two, at most the op's widest block
    (layer norm: MAX_WIDTH, the whole row; bias + GELU: MAX_BLOCK_N, more columns take more blocks);
  * ROWS makes a tile of about 4096 elements (one row at least);
  * num_warps is one per 512 elements of the tile, from 1 to 16;
  * the backward grid aims at 2 programs per SM on a GPU (shared among the column blocks) and at
    4 under the interpreter, each program walking an equal run of row tiles.

The expected values come from each op's formulas written out below (independent of the rule's
own code), and from a table of the values at the widths the ops run at.
"""

from __future__ import annotations

import importlib
import math
import subprocess
import sys

import pytest
import torch

import mops.kernels
from mops.kernels import rowwise
from mops.kernels.bias_gelu import MAX_BLOCK_N
from mops.kernels.layer_norm import MAX_WIDTH
from mops.kernels.rowwise import BackwardGrid, RowTile, backward_grid, row_tile

# Widths the ops run at: BERT's hidden and feed-forward widths, the limits, and widths that are
# not powers of two (the tests' 1000, odd and one-past-a-power widths).
WIDTHS = [1, 2, 3, 5, 100, 128, 129, 384, 500, 768, 1000, 1023, 1024, 1025, 1536, 3000, 3072, 4096,
          4097, 5000, 8192, 8193, 12000, 16384]


def power_of_2_at_least(n: int) -> int:
    return 2 ** math.ceil(math.log2(n))


def expected_layer_norm_tile(width: int) -> tuple[int, int, int]:
    """Layer norm's (BLOCK_N, ROWS, num_warps): the whole row in one block."""
    block_n = power_of_2_at_least(width)
    rows = max(1, 4096 // block_n)
    return block_n, rows, min(16, max(1, rows * block_n // 512))


def expected_bias_gelu_tile(width: int) -> tuple[int, int, int]:
    """Bias + GELU's (BLOCK_N, ROWS, num_warps): at most 1024 columns a block."""
    block_n = min(1024, power_of_2_at_least(width))
    rows = max(1, 4096 // block_n)
    return block_n, rows, min(16, max(1, rows * block_n // 512))


def expected_backward_grid(num_tiles: int, sm_count: int | None, column_blocks: int = 1) -> tuple[int, int]:
    """(programs, tiles per program) of layer norm's backward (one column block) and of bias + GELU's;
    sm_count None is the interpreter."""
    if sm_count is not None:
        target = 2 * sm_count if column_blocks == 1 else max(1, 2 * sm_count // column_blocks)
    else:
        target = 4
    per_program = math.ceil(num_tiles / max(1, min(target, num_tiles)))
    return math.ceil(num_tiles / per_program), per_program


# ----------------------------------------------------------------------------- the tile


# width -> (layer norm's (BLOCK_N, ROWS, num_warps), bias + GELU's)
SPEC = {
    1: ((1, 4096, 8), (1, 4096, 8)),
    3: ((4, 1024, 8), (4, 1024, 8)),
    128: ((128, 32, 8), (128, 32, 8)),  # BERT-tiny
    384: ((512, 8, 8), (512, 8, 8)),
    768: ((1024, 4, 8), (1024, 4, 8)),  # BERT-base: 4 rows padded to 1024
    1000: ((1024, 4, 8), (1024, 4, 8)),
    1024: ((1024, 4, 8), (1024, 4, 8)),
    1536: ((2048, 2, 8), (1024, 4, 8)),
    3072: ((4096, 1, 8), (1024, 4, 8)),  # BERT-base's feed-forward: 3 column blocks for bias + GELU
    4096: ((4096, 1, 8), (1024, 4, 8)),
    8192: ((8192, 1, 16), (1024, 4, 8)),
    16384: ((16384, 1, 16), (1024, 4, 8)),  # layer norm's MAX_WIDTH
}


@pytest.mark.parametrize("width", sorted(SPEC))
def test_tile_of_each_op_at_the_widths_they_run(width):
    layer_norm_tile, bias_gelu_tile = SPEC[width]
    assert row_tile(width, MAX_WIDTH) == layer_norm_tile
    assert row_tile(width, MAX_BLOCK_N) == bias_gelu_tile
    assert (layer_norm_tile, bias_gelu_tile) == (expected_layer_norm_tile(width), expected_bias_gelu_tile(width))


def test_tile_follows_each_ops_formula_at_every_width_layer_norm_accepts():
    for width in range(1, MAX_WIDTH + 1):
        assert row_tile(width, MAX_WIDTH) == expected_layer_norm_tile(width), width
        assert row_tile(width, MAX_BLOCK_N) == expected_bias_gelu_tile(width), width


def test_tile_holds_about_4096_elements_with_16_a_thread():
    for width in WIDTHS:
        for max_block in (MAX_WIDTH, MAX_BLOCK_N):
            tile = row_tile(width, max_block)
            assert isinstance(tile, RowTile)
            assert tile.block_n >= min(width, max_block) and tile.block_n & (tile.block_n - 1) == 0
            assert tile.rows * tile.block_n == max(4096, tile.block_n)
            assert tile.num_warps == min(16, tile.rows * tile.block_n // (32 * 16))


def test_a_row_needs_an_element():
    with pytest.raises(ValueError, match="at least one element"):
        row_tile(0, MAX_WIDTH)


def test_next_power_of_2_is_tritons():
    triton = pytest.importorskip("triton")
    assert [rowwise.next_power_of_2(n) for n in range(1, 20000)] == [triton.next_power_of_2(n) for n in range(1, 20000)]


# ----------------------------------------------------------------------------- the backward grid


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device 0 with 132 SMs (an H100 SXM) and device 1 with 66, on any machine."""
    counts = {0: 132, 1: 66}
    monkeypatch.setattr(rowwise, "sm_count", lambda index: counts[index])
    return counts


def test_backward_grid_on_a_gpu_is_two_programs_per_sm(fake_gpu):
    gpu = torch.device("cuda", 0)
    # layer norm, BERT-base, 16384 rows of 768: 4096 tiles of 4 rows -> 264 programs wanted, 256 of 16 tiles
    assert backward_grid(4096, gpu) == BackwardGrid(programs=256, tiles_per_program=16)
    # bias + GELU, 16384 rows of 3072: 3 column blocks share the 264 -> 88 row programs of 47 tiles
    assert backward_grid(4096, gpu, column_blocks=3) == BackwardGrid(programs=88, tiles_per_program=47)
    # fewer tiles than programs wanted: one tile each
    assert backward_grid(100, gpu) == BackwardGrid(programs=100, tiles_per_program=1)
    # more column blocks than programs wanted: still one program per column block
    assert backward_grid(4096, gpu, column_blocks=1000) == BackwardGrid(programs=1, tiles_per_program=4096)


def test_backward_grid_under_the_interpreter_is_four_programs():
    cpu = torch.device("cpu")
    assert backward_grid(12, cpu) == BackwardGrid(programs=4, tiles_per_program=3)
    assert backward_grid(13, cpu) == BackwardGrid(programs=4, tiles_per_program=4)
    assert backward_grid(3, cpu) == BackwardGrid(programs=3, tiles_per_program=1)
    assert backward_grid(4096, cpu, column_blocks=3) == BackwardGrid(programs=4, tiles_per_program=1024)


def test_backward_grid_reads_the_current_device_when_none_is_named(fake_gpu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert backward_grid(4096, torch.device("cuda")) == BackwardGrid(*expected_backward_grid(4096, 66))


@pytest.mark.parametrize("sm", [None, 1, 7, 108, 132], ids=lambda sm: "interpreter" if sm is None else f"{sm}-sms")
def test_backward_grid_follows_each_ops_formula(monkeypatch, sm):
    device = torch.device("cpu") if sm is None else torch.device("cuda", 0)
    if sm is not None:
        monkeypatch.setattr(rowwise, "sm_count", lambda index: sm)
    for num_tiles in range(1, 2049):
        for column_blocks in (1, 2, 3, 4, 16, 300):
            grid = backward_grid(num_tiles, device, column_blocks)
            assert grid == expected_backward_grid(num_tiles, sm, column_blocks), (num_tiles, column_blocks)
            programs, per_program = grid
            assert (programs - 1) * per_program < num_tiles <= programs * per_program  # no program idle


def test_rowwise_imports_without_triton():
    """The rule is plain Python: it is read and used where Triton is not installed."""
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch\n"
            "from mops.kernels import rowwise\n"
            "print(rowwise.row_tile(768, 16384), rowwise.backward_grid(12, torch.device('cpu')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["RowTile(block_n=1024,", "rows=4,", "num_warps=8)",
                                   "BackwardGrid(programs=4,", "tiles_per_program=3)"]


# ----------------------------------------------------------------------------- the ops


@pytest.fixture
def launched(monkeypatch):
    """(name, grid, BLOCK_N, ROWS, num_warps) of each layer-norm and bias + GELU kernel launch."""
    seen = []
    for name in ("mops.kernels.layer_norm", "mops.kernels.bias_gelu"):
        module = importlib.import_module(name)

        def record(kernel_name, kernel, grid, *args, _launch=module.launch, **kwargs):
            seen.append((kernel_name, grid, kwargs.get("BLOCK_N"), kwargs.get("ROWS"), kwargs.get("num_warps")))
            _launch(kernel_name, kernel, grid, *args, **kwargs)

        monkeypatch.setattr(module, "launch", record)
    return seen


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter's backward grid")
def test_the_ops_launch_what_the_rule_says(launched):
    x = torch.randn(57, 1000, requires_grad=True)
    weight, bias = torch.randn(1000, requires_grad=True), torch.randn(1000, requires_grad=True)
    mops.kernels.layer_norm(x, weight, bias, 1e-5, backend="triton").sum().backward()
    h = torch.randn(9, 3072, requires_grad=True)
    mops.kernels.bias_gelu(h, torch.randn(3072, requires_grad=True), backend="triton").sum().backward()
    assert [launch for launch in launched if launch[0] != "sum_partials"] == [
        # 57 rows of 1000 in 15 tiles of 4 rows; 4 backward programs of 4 tiles
        ("layer_norm.fwd", (15,), 1024, 4, 8),
        ("layer_norm.bwd", (4,), 1024, 4, 8),
        # 9 rows of 3072: 3 tiles of 4 rows by 3 column blocks; 3 backward programs of 1 tile by 3
        ("bias_gelu.fwd", (3, 3), 1024, 4, 8),
        ("bias_gelu.bwd", (3, 3), 1024, 4, 8),
    ]
