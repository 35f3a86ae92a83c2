"""NASNet cell space: the NAS agent's action on CIFAR (MA2ML Sec. 4.2 Setting; Zoph et al. 2018).

The network stacks copies of two searched cells, a normal cell and a reduction cell. A cell has
`num_blocks` (5) sequential blocks; block b makes five decisions, in this order:

* ``{cell}/{b}/inputs/0`` and ``{cell}/{b}/inputs/1``: which hidden states the block reads, out of
  2 + b: 0 is the output of the cell two back (h_{k-2}), 1 that of the previous cell (h_{k-1}),
  2 + j the output of block j < b of this cell (the DARTS genotype convention);
* ``{cell}/{b}/ops/0`` and ``{cell}/{b}/ops/1``: the operation applied to each input, one of the 13
  `CELL_OPS`;
* ``{cell}/{b}/combine``: how the two results are merged, "add" or "concat".

The decoded config is readable as it stands:
``{"normal": [{"inputs": [i1, i2], "ops": [o1, o2], "combine": "add"|"concat"}] x 5,
"reduction": [...]}``. As in NASNet, a cell's output concatenates the block outputs that no block of
the cell reads (a network-builder concern, noted here so the two agree).

Size: per cell prod_b (2 + b)^2 x 13^2 x 2, two cells: log10 = 36.7, the paper's 10^37.
The network-level settings are not decisions: `CIFAR_CELL_LAYOUT` keeps the paper's 17 cells with
reduction cells at the 1-based positions 6 and 12 of ``config.model.reduction_cells`` (the paper's
"5th and 11th" read as 0-based indices; the reasons are given beside it).
"""

from __future__ import annotations

from typing import NamedTuple

from ma2ml_jax.spaces.base import Decision, Space

# NASNet's operation set (Zoph et al. 2018, Sec. 3), in token order.
CELL_OPS = (
    "identity",
    "conv_1x3_3x1",  # 1x3 then 3x1 convolution
    "conv_1x7_7x1",  # 1x7 then 7x1 convolution
    "dil_conv_3x3",  # 3x3 dilated convolution
    "avg_pool_3x3",
    "max_pool_3x3",
    "max_pool_5x5",
    "max_pool_7x7",
    "conv_1x1",
    "conv_3x3",
    "sep_conv_3x3",  # depthwise-separable convolutions
    "sep_conv_5x5",
    "sep_conv_7x7",
)
COMBINE = ("add", "concat")
CELL_TYPES = ("normal", "reduction")
NUM_CELL_INPUTS = 2  # a cell reads the outputs of the two previous cells


class CellLayout(NamedTuple):
    """How the searched cells are stacked into a network (fixed, not searched).

    Attributes:
      cells: total number of cells.
      reduction_cells: 1-based positions of the reduction cells (stride 2, channels doubled), as
        ``config.model.reduction_cells`` and the network builders take them.
    """

    cells: int = 17
    reduction_cells: tuple[int, ...] = (6, 12)


# MA2ML Sec. 4.2: "the whole network with 17 cells, and the 5th and 11th are reduction cells".
# Read as DARTS' 0-based cell indices (its network puts them at `layers // 3, 2 * layers // 3`,
# exactly 5 and 11 for 17 layers), i.e. 1-based positions 6 and 12: NASNet's 3N + 2 layout with
# N = 5 normal cells before, between and after the reductions. The 1-based reading of the same
# words would give 4, 5 and 6 normal cells, a layout neither NASNet nor DARTS uses.
CIFAR_CELL_LAYOUT = CellLayout()


def check_reduction_cells(cells: int, reduction_cells) -> None:
    """Raises ValueError unless `reduction_cells` are distinct 1-based positions in 1..`cells`."""
    positions = tuple(reduction_cells)
    if (any(not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= cells
            for r in positions) or len(set(positions)) != len(positions)):
        raise ValueError(
            f"reduction_cells={positions} must be distinct 1-based cell positions in 1..{cells} "
            f"(the first cell is 1; the paper's 17 cells have them at (6, 12), with 5 normal "
            f"cells before, between and after them)")


def cell_space(num_blocks: int = 5) -> Space:
    """The NASNet normal + reduction cell space.

    Args:
      num_blocks: blocks per cell (the paper: 5).

    Returns:
      A `Space` named "cell" with 2 x 5 x `num_blocks` decisions.
    """
    if not isinstance(num_blocks, int) or isinstance(num_blocks, bool) or num_blocks < 1:
        raise ValueError(f"num_blocks must be a positive int, got {num_blocks!r}")
    decisions = []
    for cell in CELL_TYPES:
        for b in range(num_blocks):
            inputs = tuple(range(NUM_CELL_INPUTS + b))
            decisions += [Decision(f"{cell}/{b}/inputs/0", inputs),
                          Decision(f"{cell}/{b}/inputs/1", inputs),
                          Decision(f"{cell}/{b}/ops/0", CELL_OPS),
                          Decision(f"{cell}/{b}/ops/1", CELL_OPS),
                          Decision(f"{cell}/{b}/combine", COMBINE)]
    return Space("cell", decisions)
