"""The launch rule of the row-wise kernels (layer norm, bias + GELU), written once.

Every row-wise op streams (M, N) tensors in tiles of whole rows, so one rule serves them all:
the block from the row width, the rows of a tile and the warps from the block, the backward
grid from the SM count. An op says only how wide a block may be. Plain Python, no Triton: the
rule can be read, tested and used for planning on any machine.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

# Elements one program holds per tensor (ROWS * BLOCK_N).
TILE_ELEMENTS = 4096
# Elements of a tile per warp: 16 a thread per tensor, two 16-byte loads in bf16.
ELEMENTS_PER_WARP = 512
MAX_WARPS = 16
# Backward programs per streaming multiprocessor on a GPU, and in total under the interpreter.
BWD_PROGRAMS_PER_SM = 2
BWD_PROGRAMS_INTERPRETED = 4


class RowTile(NamedTuple):
    """What one program of a row-wise kernel holds, and the warps it runs with."""

    block_n: int  # columns: the row width rounded up to a power of two, at most the op's widest block
    rows: int  # rows of the tile, so that rows * block_n is about TILE_ELEMENTS
    num_warps: int


class BackwardGrid(NamedTuple):
    """The backward grid along the rows: `programs` programs, each walking `tiles_per_program`
    consecutive row tiles (the last one fewer)."""

    programs: int
    tiles_per_program: int


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (n >= 1)."""
    return 1 << (n - 1).bit_length()


@functools.lru_cache(maxsize=None)
def row_tile(width: int, max_block: int) -> RowTile:
    """The tile for rows of `width` elements, in blocks of at most `max_block` columns (a power of two).

    A program holds about TILE_ELEMENTS elements of each tensor: 4 rows of 768 (padded to 1024),
    one row of 8192. With ELEMENTS_PER_WARP a warp, the warps grow with the tile: 8 for 4096
    elements, 16 for 8192 or more. A row wider than `max_block` takes several column blocks;
    an op that needs the whole row in one program (layer norm) refuses wider rows.
    """
    if width < 1:
        raise ValueError(f"rowwise: a row needs at least one element, got width {width}")
    block_n = min(max_block, next_power_of_2(width))
    rows = max(1, TILE_ELEMENTS // block_n)
    num_warps = min(MAX_WARPS, max(1, rows * block_n // ELEMENTS_PER_WARP))
    return RowTile(block_n, rows, num_warps)


@functools.lru_cache(maxsize=None)
def sm_count(device_index: int) -> int:
    """Streaming multiprocessors of CUDA device `device_index`, asked once."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def backward_grid(num_tiles: int, device: torch.device, column_blocks: int = 1) -> BackwardGrid:
    """The backward grid for `num_tiles` row tiles, beside `column_blocks` blocks of columns.

    On a GPU, BWD_PROGRAMS_PER_SM programs per SM in all (the target shared among the column
    blocks): at ~100 registers a thread and 8 warps, two fit on an SM at once, so the grid runs
    as about one wave and each program streams a long run of rows. The interpreter runs programs
    one after another, so there BWD_PROGRAMS_INTERPRETED in all. The grid is fixed by the shape
    and the device, so a rerun sums the same rows in the same order.
    """
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        target = max(1, BWD_PROGRAMS_PER_SM * sm_count(index) // column_blocks)
    else:
        target = BWD_PROGRAMS_INTERPRETED
    per_program = math.ceil(num_tiles / max(1, min(target, num_tiles)))
    return BackwardGrid(math.ceil(num_tiles / per_program), per_program)
