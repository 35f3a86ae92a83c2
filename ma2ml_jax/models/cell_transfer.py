"""Weights between an exactly-shaped `CellNet` and the masked `MaskedCellNet`.

`embed_variables` places an exact network's variables into the masked network's (and
`extract_variables` takes them back out), so that the two compute the same function
(tests/test_cell_masked.py checks outputs, batch statistics and gradients); `active_mask` marks the
entries an architecture uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import chex
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ma2ml_jax.models.cell_encoding import KERNEL_MAX, OP_FAMILY
from ma2ml_jax.models.cell_masked import CellRun, MaskedCellNet, variant_name
from ma2ml_jax.models.cell_net import CellArch, unused_blocks
from ma2ml_jax.spaces.cell import NUM_CELL_INPUTS


class _Place(NamedTuple):
    """Where an exact network's array lives in a masked one: ``masked[cell][index]``.

    Attributes:
      cell: position along the stacked-cells axis of a scanned run; None for other leaves.
      path: the exact network's variable path.
      index: index into the (per-cell) masked leaf; None for the whole leaf.
    """

    cell: int | None
    path: tuple[str, ...]
    index: tuple | None


def _output_rows(blocks, channels: int) -> np.ndarray:
    """Channels of the masked cell output that hold the exact cell output's, in order."""
    return np.concatenate([np.arange(j * channels, (j + 1) * channels)
                           for j in unused_blocks(blocks)])


def _rows(rows: np.ndarray | None) -> tuple | None:
    """Index of a kernel's input rows (axis -2 of [..., C_in, C_out])."""
    return None if rows is None else (Ellipsis, rows, slice(None))


def _superkernel_index(family: str, op: str, rest: tuple[str, ...]) -> tuple | None:
    """Index of the exact op's kernel in its family's superkernel (None: the whole leaf)."""
    if rest[-1] != "kernel" or family not in KERNEL_MAX or "pointwise" in rest[-2]:
        return None
    k_max, k = KERNEL_MAX[family], OP_FAMILY[op][1]
    taps = slice((k_max - k) // 2, (k_max + k) // 2)
    if family == "factorized":  # Conv_0 is 1 x k, Conv_1 is k x 1
        return (slice(None), taps) if rest[0] == "Conv_0" else (taps,)
    return (taps, taps)


def _masked_to_exact(net: MaskedCellNet, arch: CellArch):
    """Maps a masked variable path to where the exact `CellNet`'s arrays live in it.

    Returns:
      A function ``path -> [_Place]``: empty for variables the architecture does not use; one
      place per cell of a scanned run that uses it.
    """
    runs = {run.name: run for run in net.runs()}
    channels, blocks_of = {}, {}
    for run in runs.values():
        for k in run.cells:
            channels[k] = run.features
            blocks_of[k] = arch.reduction if run.reduction else arch.normal

    def cell_output_rows(m):  # m < 1 is the stem, equally wide in both networks
        return _output_rows(blocks_of[m], channels[m]) if m >= 1 else None

    def in_cell(run: CellRun, k: int, path: tuple[str, ...]):
        """(exact path, index) of a path inside cell k's module, or (None, None)."""
        head, sub, is_kernel = f"cell{k}", path[0], path[-1] == "kernel"
        if sub.startswith("preprocess"):
            which = int(sub.removeprefix("preprocess"))
            # CellNet names its preprocessing modules automatically, by class and call order.
            if which == 0:
                name = "FactorizedReduce_0" if run.reduce_prev else "ReLUConvBN_0"
            else:
                name = "ReLUConvBN_0" if run.reduce_prev else "ReLUConvBN_1"
            rows = cell_output_rows(k - 2 + which) if is_kernel else None
            return (head, name) + path[1:], _rows(rows)
        b_str, kind = sub.removeprefix("block").split("_", 1)
        block = blocks_of[k][int(b_str)]
        if kind == "combine":  # path[1] == "concat"
            return ((head, f"block{b_str}_concat") + path[2:] if block.combine == "concat"
                    else None), None
        j = int(kind.removeprefix("op"))
        op = block.ops[j]
        stride = 2 if run.reduction and block.inputs[j] < NUM_CELL_INPUTS else 1
        if not net.op_families:
            return ((head, sub) + path[2:], None) if path[1] == variant_name(op, stride) \
                else (None, None)
        family = OP_FAMILY[op][0]
        if path[1] != variant_name(family, stride):
            return None, None
        return (head, sub) + path[2:], _superkernel_index(family, op, path[2:])

    def mapping(path: tuple[str, ...]) -> list[_Place]:
        head, is_kernel = path[0], path[-1] == "kernel"
        if head in ("stem", "bn_stem"):
            return [_Place(None, path, None)]
        if head == "classifier":
            return [_Place(None, path, _rows(cell_output_rows(net.cells)) if is_kernel
                           else None)]
        run = runs[head]
        stacked = len(run.cells) > 1
        places = []
        for i, k in enumerate(run.cells):
            exact_path, index = in_cell(run, k, path[1:])
            if exact_path is not None:
                places.append(_Place(i if stacked else None, exact_path, index))
        return places

    return mapping


def _as_arch(arch, net: MaskedCellNet) -> CellArch:
    if not isinstance(arch, CellArch):
        arch = CellArch.from_config(arch)
    if len(arch.normal) != net.num_blocks or len(arch.reduction) != net.num_blocks:
        raise ValueError(f"arch has {len(arch.normal)}/{len(arch.reduction)} blocks, the network "
                         f"{net.num_blocks}")
    return arch


def _take(leaf, place: _Place):
    per_cell = leaf if place.cell is None else leaf[place.cell]
    return per_cell if place.index is None else per_cell[place.index]


def _put(leaf, place: _Place, value):
    per_cell = leaf if place.cell is None else leaf[place.cell]
    value = jnp.asarray(value, leaf.dtype)
    if place.index is None:
        chex.assert_equal_shape([per_cell, value])
        per_cell = value
    else:
        chex.assert_equal_shape([per_cell[place.index], value])
        per_cell = per_cell.at[place.index].set(value)
    return per_cell if place.cell is None else leaf.at[place.cell].set(per_cell)


def embed_variables(exact_variables: Mapping[str, Any], arch: Mapping[str, Any] | CellArch,
                    masked_variables: Mapping[str, Any], net: MaskedCellNet) -> dict:
    """Places an exactly-shaped `CellNet`'s variables into a `MaskedCellNet`'s.

    The result computes, with ``arch=cell_arrays(arch)``, the same function as the exact network.
    Entries the architecture does not use (other op families, unused concat convolutions, kernel
    rows of zeroed cell-output slices, the outer taps of a superkernel) keep their values from
    `masked_variables`.

    Args:
      exact_variables: variables of ``CellNet(CellArch.from_config(arch), ...)`` with the same
        num_classes, cells, reduction_cells, channels and stem_multiplier as `net`.
      arch: the decoded architecture (or `CellArch`).
      masked_variables: variables of `net` (e.g. from `net.init`), the template.
      net: the masked network.

    Returns:
      Masked variables, same tree structure and shapes as `masked_variables`.
    """
    mapping = _masked_to_exact(net, _as_arch(arch, net))
    out = {}
    for col, template in masked_variables.items():
        exact = traverse_util.flatten_dict(exact_variables.get(col, {}))
        flat, used = {}, set()
        for path, leaf in traverse_util.flatten_dict(template).items():
            value = jnp.asarray(leaf)
            for place in mapping(path):
                if place.path not in exact:
                    raise ValueError(f"{col}/{'/'.join(place.path)} missing from the exact "
                                     "variables")
                used.add(place.path)
                value = _put(value, place, exact[place.path])
            flat[path] = value
        if set(exact) - used:
            raise ValueError(f"exact {col} variables with no masked place: {set(exact) - used}")
        out[col] = traverse_util.unflatten_dict(flat)
    return out


def extract_variables(masked_variables: Mapping[str, Any], arch: Mapping[str, Any] | CellArch,
                      net: MaskedCellNet) -> dict:
    """The inverse of `embed_variables`: the exactly-shaped `CellNet` variables of `arch`.

    Args:
      masked_variables: variables of `net`.
      arch: the decoded architecture (or `CellArch`).
      net: the masked network.

    Returns:
      Variables of ``CellNet(CellArch.from_config(arch), ...)`` with `net`'s settings.
    """
    mapping = _masked_to_exact(net, _as_arch(arch, net))
    out = {}
    for col, tree in masked_variables.items():
        flat = {}
        for path, leaf in traverse_util.flatten_dict(tree).items():
            for place in mapping(path):
                flat[place.path] = _take(leaf, place)
        out[col] = traverse_util.unflatten_dict(flat)
    return out


def active_mask(masked_variables: Mapping[str, Any], arch: Mapping[str, Any] | CellArch,
                net: MaskedCellNet) -> dict:
    """Which entries of the masked variables `arch` uses (the rest get zero gradient).

    Args:
      masked_variables: variables of `net` (only shapes are read).
      arch: the decoded architecture (or `CellArch`).
      net: the masked network.

    Returns:
      A tree like `masked_variables` of bool numpy arrays.
    """
    mapping = _masked_to_exact(net, _as_arch(arch, net))
    out = {}
    for col, tree in masked_variables.items():
        flat = {}
        for path, leaf in traverse_util.flatten_dict(tree).items():
            mask = np.zeros(np.shape(leaf), bool)
            for place in mapping(path):
                per_cell = mask if place.cell is None else mask[place.cell]  # a view
                per_cell[... if place.index is None else place.index] = True
            flat[path] = mask
        out[col] = traverse_util.unflatten_dict(flat)
    return out

