"""The cell space's architecture as arrays, and the operation families of the masked network.

`CellArrays` holds a decoded cell architecture (`spaces.cell`) as int32 arrays, so that a jitted
program takes it as an input (`cell_arrays` from a decoded architecture, `cell_arrays_from_tokens`
straight from the space's tokens). `FAMILIES` groups the 13 operations into the 6 families that
share one module in `cell_masked.MaskedCellNet`; `family_table` maps an operation index to its
family or to its member (kernel size) within a family.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ma2ml_jax.models.cell_net import CellArch
from ma2ml_jax.spaces.cell import CELL_OPS, CELL_TYPES, COMBINE, NUM_CELL_INPUTS

_DECISIONS_PER_BLOCK = 5  # inputs/0, inputs/1, ops/0, ops/1, combine (`cell_space` order)
IDENTITY = CELL_OPS.index("identity")

# Operation families: the operations of a family share one module (a superkernel); the member is
# the kernel size the operation uses (its index among the poolings for "pool").
FAMILIES = ("identity", "pool", "conv", "dil_conv", "factorized", "sep_conv")
POOLS = ("avg_pool_3x3", "max_pool_3x3", "max_pool_5x5", "max_pool_7x7")
OP_FAMILY = {
    "identity": ("identity", 0),
    "conv_1x3_3x1": ("factorized", 3),
    "conv_1x7_7x1": ("factorized", 7),
    "dil_conv_3x3": ("dil_conv", 3),
    **{p: ("pool", i) for i, p in enumerate(POOLS)},
    "conv_1x1": ("conv", 1),
    "conv_3x3": ("conv", 3),
    "sep_conv_3x3": ("sep_conv", 3),
    "sep_conv_5x5": ("sep_conv", 5),
    "sep_conv_7x7": ("sep_conv", 7),
}
KERNEL_MAX = {"conv": 3, "factorized": 7, "sep_conv": 7}  # the superkernel's taps per axis
assert set(OP_FAMILY) == set(CELL_OPS) and {f for f, _ in OP_FAMILY.values()} == set(FAMILIES)


def family_table(family: str) -> np.ndarray:
    """int32[len(CELL_OPS)]: each op's index into FAMILIES, or, for `family`, its members (other
    ops get the family's largest member, so an unused branch stays well defined).
    """
    if family == "":
        return np.asarray([FAMILIES.index(OP_FAMILY[op][0]) for op in CELL_OPS], np.int32)
    members = [m for f, m in OP_FAMILY.values() if f == family]
    return np.asarray([OP_FAMILY[op][1] if OP_FAMILY[op][0] == family else max(members)
                       for op in CELL_OPS], np.int32)


class CellArrays(NamedTuple):
    """A cell architecture as int32 arrays; axis 0 is the cell type (0 normal, 1 reduction).

    Leading batch axes (e.g. pipelines, for vmap) may precede every field's shape.

    Attributes:
      inputs: int32[2, num_blocks, 2], state each op reads: 0 = h_{k-2}, 1 = h_{k-1}, 2 + j = block
        j of the cell (must be < 2 + b for block b).
      ops: int32[2, num_blocks, 2], index into `CELL_OPS` of the op applied to each input.
      combine: int32[2, num_blocks], index into `COMBINE` (0 add, 1 concat).
    """

    inputs: jax.Array
    ops: jax.Array
    combine: jax.Array


def cell_arrays(arch: Mapping[str, Any] | CellArch) -> CellArrays:
    """The `CellArrays` of a decoded architecture (`cell_space().decode(...)`) or a `CellArch`.

    Args:
      arch: ``{"normal": [{"inputs", "ops", "combine"}] * num_blocks, "reduction": [...]}``.

    Returns:
      CellArrays with int32 fields [2, num_blocks, 2], [2, num_blocks, 2], [2, num_blocks].
    """
    if not isinstance(arch, CellArch):
        arch = CellArch.from_config(arch)
    cells = (arch.normal, arch.reduction)
    if len(arch.normal) != len(arch.reduction):
        raise ValueError(f"normal and reduction cells differ in length: {len(arch.normal)} vs "
                         f"{len(arch.reduction)}")
    for name, blocks in zip(CELL_TYPES, cells):
        for b, block in enumerate(blocks):
            if any(not 0 <= i < NUM_CELL_INPUTS + b for i in block.inputs):
                raise ValueError(f"{name} block {b} reads {block.inputs}; valid: "
                                 f"0..{NUM_CELL_INPUTS + b - 1}")
            for op in block.ops:
                if op not in CELL_OPS:
                    raise ValueError(f"unknown cell op {op!r}; valid: {CELL_OPS}")
            if block.combine not in COMBINE:
                raise ValueError(f"unknown combine {block.combine!r}; valid: {COMBINE}")
    return CellArrays(
        inputs=jnp.asarray([[b.inputs for b in c] for c in cells], jnp.int32),
        ops=jnp.asarray([[[CELL_OPS.index(o) for o in b.ops] for b in c] for c in cells],
                        jnp.int32),
        combine=jnp.asarray([[COMBINE.index(b.combine) for b in c] for c in cells], jnp.int32),
    )


def cell_arrays_from_tokens(tokens: jax.Array) -> CellArrays:
    """`CellArrays` straight from `cell_space` tokens, traceable (no decode round trip).

    The cell space's tokens are the choice indices themselves (inputs 0..1+b, op indices into
    `CELL_OPS`, combine indices into `COMBINE`), in the order cell type, block, then
    (inputs/0, inputs/1, ops/0, ops/1, combine).

    Args:
      tokens: int[..., 2 * num_blocks * 5], actions of `cell_space(num_blocks)`.

    Returns:
      CellArrays with leading axes `...`.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    per_cell = tokens.shape[-1] // len(CELL_TYPES)
    if tokens.shape[-1] % (len(CELL_TYPES) * _DECISIONS_PER_BLOCK):
        raise ValueError(f"cell tokens must have 2 * num_blocks * 5 entries, got {tokens.shape}")
    t = tokens.reshape(tokens.shape[:-1] + (len(CELL_TYPES), per_cell // _DECISIONS_PER_BLOCK,
                                            _DECISIONS_PER_BLOCK))
    return CellArrays(inputs=t[..., 0:2], ops=t[..., 2:4], combine=t[..., 4])


def unused_mask(inputs: jax.Array) -> jax.Array:
    """Blocks that no block of the cell reads (NASNet's cell output), as a mask.

    Args:
      inputs: int[..., num_blocks, 2] input indices of one cell type (or several: any leading
        axes).

    Returns:
      bool[..., num_blocks]: True where the block's output goes into the cell output.
    """
    num_blocks = inputs.shape[-2]
    block_ids = NUM_CELL_INPUTS + jnp.arange(num_blocks)
    read = (inputs[..., :, :, None] == block_ids).any(axis=(-3, -2))
    return ~read
