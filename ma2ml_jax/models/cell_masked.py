"""Masked NASNet cell network: one compiled program for every architecture of the cell space.

`CellNet` (`cell_net.py`) takes its architecture as a Python value, so each architecture is its
own XLA program. `MaskedCellNet` takes it as an input array (`CellArrays`) instead, in the spirit
of Single-Path NAS / FBNetV2 (DESIGN.md, "Throughput"): the parameters are those of the max-size
network, and the architecture only selects which of them run.

* Op choice: every op slot (cell k, block b, input j) holds the variables of one `CellOp` per
  (op, stride) variant it can take and runs them under a `jax.lax.switch` on the op index
  (`switch_variants`). Without vmap, XLA's conditional executes only the chosen branch, so the
  run-time cost is that of the chosen op. Under vmap with a batched index the switch becomes a
  select over all branches, so pipelines should be traced one after another ("unrolled"), not
  vmapped (DESIGN.md).
* Input choice: the states a block may read are stacked and dynamically indexed. In a reduction
  cell the two cell inputs are at twice the spatial size of the block outputs and take stride-2
  ops, so a slot of block b >= 1 gets both candidates (the cell input and the block output picked
  by the index) and its switch runs over 2 x 13 branches: stride-2 variants on the former,
  stride-1 variants on the latter.
* Combine: a switch between addition and concatenation + ReLU-conv1x1-BN.
* Cell output: NASNet concatenates the blocks no block reads, c x n_unused channels. Here the
  output is always num_blocks x c wide, block j at channel slice j, with the slices of read blocks
  zeroed, so the next cell's preprocessing 1x1 convolutions and the classifier have a fixed input
  width; only the kernel rows of unused slices matter (the others get exactly zero gradient).

`embed_variables` places an exactly-shaped `CellNet`'s variables into the masked network's (and
`extract_variables` takes them back out), so that the two compute the same function
(tests/test_cell_masked.py checks outputs, batch statistics and gradients); `active_mask` marks the
entries an architecture uses.

Compile time: the program holds every variant of every slot, about 15 ops per slot where the exact
network has one, so it compiles several times slower than one exact network (CPU, 4 cells of 5
blocks: forward ~4x, training gradient ~18x). It is paid once per shape, not per architecture.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ma2ml_jax.models.cell_net import (
    CellArch,
    CellOp,
    FactorizedReduce,
    ReLUConvBN,
    _bn,
    unused_blocks,
)
from ma2ml_jax.models.macro_net import classifier_dropout, drop_path
from ma2ml_jax.spaces.cell import CELL_OPS, CELL_TYPES, COMBINE, NUM_CELL_INPUTS

_DECISIONS_PER_BLOCK = 5  # inputs/0, inputs/1, ops/0, ops/1, combine (`cell_space` order)
_IDENTITY = CELL_OPS.index("identity")


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


def variant_name(op: str, stride: int) -> str:
    """Name of the submodule of an op slot holding `op` with `stride`."""
    return f"{op}_s{stride}"


class Variant(NamedTuple):
    """One branch of a `switch_variants`.

    Attributes:
      name: name of the branch's variables in the switching module ("" for none).
      module: unbound flax module holding the branch's variables, or None.
      fn: ``fn(run, *operands) -> y``; ``run(x)`` applies `module` with its variables to x.
    """

    name: str
    module: nn.Module | None
    fn: Callable[..., jax.Array]


def switch_variants(mdl: nn.Module, index: jax.Array, variants: Sequence[Variant],
                    operands: Sequence[jax.Array], train: bool) -> jax.Array:
    """`jax.lax.switch` over modules, each with its own params and batch statistics.

    Each variant's variables live under ``mdl``'s ``params/<name>`` and ``batch_stats/<name>``.
    flax's `nn.switch` hands every branch every variable of the module as a separate operand: the
    transpose of the switch then gives every branch a zero cotangent for each of the other
    variants' parameters, and in train mode every branch returns every variant's statistics, a
    program quadratic in the number of variants. Here each collection is packed into one flat
    vector that every branch takes and slices its own segment from, so a branch adds O(1)
    operands (on CPU this cut a 4-cell network's gradient compile from 414 s to 283 s). Packing
    copies the slot's parameters once per call, cheap next to the convolutions.

    Args:
      mdl: the module that owns the variables (call from its compact method).
      index: int32 scalar, the branch to run (clamped to range, as `lax.switch` does).
      variants: the branches; names of variants with variables must be distinct.
      operands: arrays passed to every branch's `fn`.
      train: BatchNorm uses batch statistics and updates the chosen variant's running ones.

    Returns:
      The chosen branch's output.
    """
    if mdl.is_initializing():
        # Run every branch to create its variables, then select: the init program stays free
        # of the switch (a jitted init with both took minutes to compile).
        outs = []
        for v in variants:
            def run(x, v=v):
                y, variables = v.module.init_with_output(mdl.make_rng("params"), x, False)
                if "params" in variables:
                    mdl.param(v.name, lambda _, p=variables["params"]: p)
                if "batch_stats" in variables:
                    mdl.variable("batch_stats", v.name, lambda s=variables["batch_stats"]: s)
                return y
            outs.append(v.fn(run, *operands))
        return jax.lax.dynamic_index_in_dim(jnp.stack(outs), index, keepdims=False)

    def pack(collection):
        trees = {v.name: mdl.get_variable(collection, v.name) for v in variants
                 if v.module is not None and mdl.has_variable(collection, v.name)}
        flats = {n: jax.flatten_util.ravel_pytree(t) for n, t in trees.items()}
        sizes = [flats[n][0].size for n in trees]
        starts = dict(zip(trees, np.cumsum([0] + sizes[:-1]).tolist()))
        segments = {n: (starts[n], flats[n][0].size, flats[n][1]) for n in trees}
        vector = (jnp.concatenate([flats[n][0] for n in trees]) if trees
                  else jnp.zeros((0,), jnp.float32))
        return vector, segments

    params, param_segments = pack("params")
    stats, stat_segments = pack("batch_stats")
    mutable = train and mdl.is_mutable_collection("batch_stats")

    def unpack(vector, segments, name):
        start, size, unravel = segments[name]
        return unravel(jax.lax.slice_in_dim(vector, start, start + size))

    def branch(v, params, stats, *ops):
        new_stats = stats

        def run(x):
            nonlocal new_stats
            variables = {}
            if v.name in param_segments:
                variables["params"] = unpack(params, param_segments, v.name)
            if v.name in stat_segments:
                variables["batch_stats"] = unpack(stats, stat_segments, v.name)
            if not mutable:
                return v.module.apply(variables, x, train)
            y, updated = v.module.apply(variables, x, train, mutable=["batch_stats"])
            if v.name in stat_segments:
                start = stat_segments[v.name][0]
                flat = jax.flatten_util.ravel_pytree(updated["batch_stats"])[0]
                new_stats = jax.lax.dynamic_update_slice_in_dim(new_stats, flat, start, 0)
            return y

        return v.fn(run, *ops), new_stats

    branches = [functools.partial(branch, v) for v in variants]
    y, stats = jax.lax.switch(index, branches, params, stats, *operands)
    if mutable:
        for name in stat_segments:
            mdl.put_variable("batch_stats", name, unpack(stats, stat_segments, name))
    return y


def _on_operand(run, *xs, operand: int):
    return run(xs[operand])


class MaskedOpSlot(nn.Module):
    """One op slot of a block: every (op, stride) variant it can take, run by a switch.

    Variables: ``{params, batch_stats}/<op>_s<stride>/...``, each the variables of
    ``CellOp(op, features, stride)`` (parameter-free variants have none).

    Attributes:
      features: channels c of the cell.
      strides: the strides the slot can take; branch `p * 13 + op` applies `CELL_OPS[op]` with
        stride `strides[p]` to operand p.
      depthwise_impl: "conv" or "taps" (see `cell_net.SepConv`).
    """

    features: int
    strides: tuple[int, ...]
    depthwise_impl: str = "conv"

    @nn.compact
    def __call__(self, xs: tuple[jax.Array, ...], branch: jax.Array, train: bool) -> jax.Array:
        """Applies the chosen variant.

        Args:
          xs: one input per stride, float[B, H_p, W_p, c]; stride-2 inputs at twice the size.
          branch: int32 scalar, `p * len(CELL_OPS) + op`.
          train: batch statistics for BatchNorm.

        Returns:
          float[B, H, W, c].
        """
        variants = [Variant(variant_name(op, s), CellOp(op, self.features, s, self.depthwise_impl,
                                                       parent=None),
                            functools.partial(_on_operand, operand=p))
                    for p, s in enumerate(self.strides) for op in CELL_OPS]
        return switch_variants(self, branch, variants, xs, train)


def _add(run, a, b):
    del run
    return a + b


def _concat(run, a, b):
    return run(jnp.concatenate([a, b], -1))


class MaskedCombine(nn.Module):
    """A block's combination, add or concat + ReLU-conv1x1-BN (variables under "concat")."""

    features: int

    @nn.compact
    def __call__(self, a, b, combine, train):
        variants = [Variant("", None, _add),
                    Variant("concat", ReLUConvBN(self.features, (1, 1), parent=None), _concat)]
        return switch_variants(self, combine, variants, (a, b), train)


def _slot_strides(reduction: bool, block: int) -> tuple[int, ...]:
    """Strides a slot of `block` can take; in a reduction cell, only cell inputs have stride 2."""
    if not reduction:
        return (1,)
    return (2,) if block == 0 else (2, 1)


class MaskedCell(nn.Module):
    """One cell whose blocks are given as arrays (one cell type's slice of `CellArrays`).

    Attributes:
      features: channels c of the cell.
      num_blocks: blocks per cell.
      reduction: a reduction cell (stride-2 ops on the cell inputs).
      reduce_prev: h_{k-2} has twice the spatial size of h_{k-1}.
      depthwise_impl: "conv" or "taps" (see `cell_net.SepConv`).
    """

    features: int
    num_blocks: int
    reduction: bool
    reduce_prev: bool
    depthwise_impl: str = "conv"

    @nn.compact
    def __call__(self, s0, s1, inputs, ops, combine, train, drop_path_rate=0.0):
        """Runs the cell.

        Args:
          s0: float[B, H0, W0, C0], h_{k-2} (H0 = 2 H1 when `reduce_prev`).
          s1: float[B, H1, W1, C1], h_{k-1}.
          inputs: int32[num_blocks, 2]; ops: int32[num_blocks, 2]; combine: int32[num_blocks].
          train: batch statistics and stochastic depth.
          drop_path_rate: stochastic-depth rate of this cell (may be traced).

        Returns:
          float[B, H, W, num_blocks * c], block j at channels [j c, (j + 1) c), zero for blocks
          that another block reads.
        """
        c, nb = self.features, self.num_blocks
        chex.assert_shape([inputs, ops], (nb, 2))
        chex.assert_shape(combine, (nb,))
        pre0 = (FactorizedReduce(c, name="preprocess0") if self.reduce_prev
                else ReLUConvBN(c, (1, 1), name="preprocess0"))
        s0 = pre0(s0, train)
        s1 = ReLUConvBN(c, (1, 1), name="preprocess1")(s1, train)
        cell_inputs = jnp.stack([s0, s1])  # [2, B, H1, W1, c]
        batch, height, width = s1.shape[:3]
        if self.reduction:
            height, width = height // 2, width // 2
        # States are written into fixed buffers so that a traced index can read any of them;
        # entries past the current block stay zero and a valid arch never reads them. A normal
        # cell keeps [h_{k-2}, h_{k-1}, blocks...] in one buffer; in a reduction cell the block
        # outputs are half the size of the cell inputs, so they get their own buffer.
        if self.reduction:
            states = jnp.zeros((nb, batch, height, width, c), s1.dtype)
            offset = 0
        else:
            states = jnp.concatenate([cell_inputs, jnp.zeros((nb,) + s1.shape, s1.dtype)])
            offset = NUM_CELL_INPUTS
        for b in range(nb):
            strides = _slot_strides(self.reduction, b)
            outs = []
            for j in range(2):
                i, op = inputs[b, j], ops[b, j]
                if not self.reduction:
                    xs = (jax.lax.dynamic_index_in_dim(states, i, keepdims=False),)
                    branch = op
                elif b == 0:
                    xs = (jax.lax.dynamic_index_in_dim(cell_inputs, i, keepdims=False),)
                    branch = op
                else:
                    xs = (jax.lax.dynamic_index_in_dim(cell_inputs, jnp.minimum(i, 1),
                                                       keepdims=False),
                          jax.lax.dynamic_index_in_dim(states, jnp.maximum(i - NUM_CELL_INPUTS, 0),
                                                       keepdims=False))
                    branch = (i >= NUM_CELL_INPUTS).astype(jnp.int32) * len(CELL_OPS) + op
                slot = MaskedOpSlot(c, strides, self.depthwise_impl, name=f"block{b}_op{j}")
                h = slot(xs, branch, train)
                if train:
                    # As in CellNet: stochastic depth on every op output but identity.
                    dropped = drop_path(h, drop_path_rate, self.make_rng("dropout"))
                    h = jnp.where(op == _IDENTITY, h, dropped)
                outs.append(h)
            h = MaskedCombine(c, name=f"block{b}_combine")(outs[0], outs[1], combine[b], train)
            states = states.at[offset + b].set(h)
        blocks = states[offset:]
        unused = unused_mask(inputs)
        blocks = jnp.where(unused[:, None, None, None, None], blocks, 0.0)
        # [nb, B, H, W, c] -> [B, H, W, nb * c], block j at slice j.
        return jnp.moveaxis(blocks, 0, -2).reshape(batch, height, width, nb * c)


class MaskedCellNet(nn.Module):
    """`CellNet` with the architecture as an input: one program for every cell architecture.

    Call: ``logits = net.apply(variables, x, train, dropout, drop_path_rate, arch)`` with x
    float32[B, H, W, C] and `arch` a `CellArrays` (may be traced). ``train=True`` needs
    ``rngs={"dropout": key}`` and ``mutable=["batch_stats"]``. Batch statistics of op variants
    not chosen stay unchanged.

    Attributes:
      num_classes: classifier outputs.
      cells: number of cells.
      reduction_cells: 1-based positions of the reduction cells.
      channels: channels of the first cells (doubled at each reduction cell).
      num_blocks: blocks per cell.
      stem_multiplier: the stem has `stem_multiplier * channels` channels.
      depthwise_impl: "conv" (XLA's grouped convolution) or "taps" (shifted multiply-adds, the
        fast choice on CPU; same parameters and function).
    """

    num_classes: int
    cells: int = 17
    reduction_cells: tuple[int, ...] = (6, 12)
    channels: int = 16
    num_blocks: int = 5
    stem_multiplier: int = 3
    depthwise_impl: str = "conv"

    @nn.compact
    def __call__(self, x, train: bool = False, dropout=0.0, drop_path_rate=0.0,
                 arch: CellArrays | None = None):
        """Logits float32[B, num_classes] of the architecture `arch` (see `CellNet`)."""
        if arch is None:
            raise ValueError("MaskedCellNet needs arch=CellArrays(...)")
        nb = self.num_blocks
        chex.assert_shape([arch.inputs, arch.ops], (len(CELL_TYPES), nb, 2))
        chex.assert_shape(arch.combine, (len(CELL_TYPES), nb))
        x = nn.Conv(self.channels * self.stem_multiplier, (3, 3), use_bias=False, name="stem")(x)
        x = _bn(train, "bn_stem")(x)
        s0 = s1 = x
        c, reduce_prev = self.channels, False
        for k in range(1, self.cells + 1):
            reduction = k in self.reduction_cells
            if reduction:
                c *= 2
            rate = drop_path_rate * (k - 1) / max(1, self.cells - 1)
            t = int(reduction)
            cell = MaskedCell(c, nb, reduction, reduce_prev, self.depthwise_impl, name=f"cell{k}")
            s0, s1 = s1, cell(s0, s1, arch.inputs[t], arch.ops[t], arch.combine[t], train, rate)
            reduce_prev = reduction
        x = s1.mean(axis=(1, 2))
        if train:
            x = classifier_dropout(x, dropout, self.make_rng("dropout"))
        return nn.Dense(self.num_classes, name="classifier")(x)


# --------------------------------------------------------------------------------- embedding
def _output_rows(blocks, channels: int) -> np.ndarray:
    """Channels of the masked cell output that hold the exact cell output's, in order."""
    return np.concatenate([np.arange(j * channels, (j + 1) * channels)
                           for j in unused_blocks(blocks)])


def _masked_to_exact(net: MaskedCellNet, arch: CellArch):
    """Maps a masked variable path to its exact `CellNet` path and kernel input rows.

    Returns:
      A function ``path -> (exact_path, rows)``: exact_path is None for variables the
      architecture does not use; rows (int[C_in_exact] or None), for a kernel reading a cell
      output, are the masked kernel's input rows holding the exact kernel's rows, in order.
    """
    channels, blocks_of = {}, {}
    c = net.channels
    for k in range(1, net.cells + 1):
        if k in net.reduction_cells:
            c *= 2
        channels[k] = c
        blocks_of[k] = arch.reduction if k in net.reduction_cells else arch.normal

    def cell_output_rows(m):  # m < 1 is the stem, equally wide in both networks
        return _output_rows(blocks_of[m], channels[m]) if m >= 1 else None

    def mapping(path: tuple[str, ...]):
        head, is_kernel = path[0], path[-1] == "kernel"
        if head in ("stem", "bn_stem"):
            return path, None
        if head == "classifier":
            return path, cell_output_rows(net.cells) if is_kernel else None
        k = int(head.removeprefix("cell"))
        reduction, reduce_prev = k in net.reduction_cells, (k - 1) in net.reduction_cells
        sub = path[1]
        if sub.startswith("preprocess"):
            which = int(sub.removeprefix("preprocess"))
            # CellNet names its preprocessing modules automatically, by class and call order.
            if which == 0:
                name = "FactorizedReduce_0" if reduce_prev else "ReLUConvBN_0"
            else:
                name = "ReLUConvBN_0" if reduce_prev else "ReLUConvBN_1"
            rows = cell_output_rows(k - 2 + which) if is_kernel else None
            return (head, name) + path[2:], rows
        b_str, kind = sub.removeprefix("block").split("_", 1)
        block = blocks_of[k][int(b_str)]
        if kind == "combine":  # path[2] == "concat"
            return ((head, f"block{b_str}_concat") + path[3:] if block.combine == "concat"
                    else None), None
        j = int(kind.removeprefix("op"))
        stride = 2 if reduction and block.inputs[j] < NUM_CELL_INPUTS else 1
        if path[2] != variant_name(block.ops[j], stride):
            return None, None
        return (head, sub) + path[3:], None

    return mapping


def _as_arch(arch, net: MaskedCellNet) -> CellArch:
    if not isinstance(arch, CellArch):
        arch = CellArch.from_config(arch)
    if len(arch.normal) != net.num_blocks or len(arch.reduction) != net.num_blocks:
        raise ValueError(f"arch has {len(arch.normal)}/{len(arch.reduction)} blocks, the network "
                         f"{net.num_blocks}")
    return arch


def _select_rows(x, rows):
    return x if rows is None else x[..., rows, :]  # kernel [..., C_in, C_out]


def embed_variables(exact_variables: Mapping[str, Any], arch: Mapping[str, Any] | CellArch,
                    masked_variables: Mapping[str, Any], net: MaskedCellNet) -> dict:
    """Places an exactly-shaped `CellNet`'s variables into a `MaskedCellNet`'s.

    The result computes, with ``arch=cell_arrays(arch)``, the same function as the exact network.
    Entries the architecture does not use (other op variants, unused concat convolutions, kernel
    rows of zeroed cell-output slices) keep their values from `masked_variables`.

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
            exact_path, rows = mapping(path)
            if exact_path is None:
                flat[path] = leaf
                continue
            if exact_path not in exact:
                raise ValueError(f"{col}/{'/'.join(exact_path)} missing from the exact variables")
            value = jnp.asarray(exact[exact_path], leaf.dtype)
            used.add(exact_path)
            flat[path] = leaf.at[..., rows, :].set(value) if rows is not None else value
            chex.assert_equal_shape([flat[path], leaf])
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
            exact_path, rows = mapping(path)
            if exact_path is not None:
                flat[exact_path] = _select_rows(leaf, rows)
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
            exact_path, rows = mapping(path)
            mask = np.full(np.shape(leaf), exact_path is not None)
            if exact_path is not None and rows is not None:
                mask[:] = False
                mask[..., rows, :] = True
            flat[path] = mask
        out[col] = traverse_util.unflatten_dict(flat)
    return out
