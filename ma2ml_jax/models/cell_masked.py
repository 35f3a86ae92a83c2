"""Masked NASNet cell network: one compiled program for every architecture of the cell space.

`CellNet` (`cell_net.py`) takes its architecture as a Python value, so each architecture is its
own XLA program. `MaskedCellNet` takes it as an input array (`CellArrays`) instead, in the spirit
of Single-Path NAS / FBNetV2 (DESIGN.md, "Throughput"): the parameters are those of the max-size
network, and the architecture only selects which of them run.

* Op choice: every op slot (cell, block b, input j) runs the chosen operation under a
  `jax.lax.switch` (`switch_variants`). Operations of one family share one module with a masked
  superkernel (`FAMILIES`): the 7x7 separable convolution serves sep_conv_3x3/5x5/7x7 with zeroed
  outer taps, the 1x7 + 7x1 pair serves conv_1x3_3x1 and conv_1x7_7x1, the 3x3 convolution serves
  conv_1x1 and conv_3x3, and the four poolings are one parameter-free branch; so a slot switches
  over 6 branches, not 13. Zeroed taps compute exactly what the smaller kernel computes (SAME
  padding centres every odd kernel on the same input pixel; the one exception, a 1x1 kernel with
  stride 2 on an even size, is shifted to the pixel it samples). Without vmap, XLA's conditional
  executes only the chosen branch. Under vmap with a batched index the switch becomes a select over
  all branches, so pipelines should be traced one after another ("unrolled"), not vmapped
  (DESIGN.md).
* Input choice: the states a block may read are stacked and dynamically indexed. In a reduction
  cell the two cell inputs are at twice the spatial size of the block outputs and take stride-2
  ops, so a slot of block b >= 1 gets both candidates (the cell input and the block output picked
  by the index) and its switch runs over 2 x 6 branches: stride-2 variants on the former,
  stride-1 variants on the latter.
* Combine: a switch between addition and concatenation + ReLU-conv1x1-BN.
* Cell output: NASNet concatenates the blocks no block reads, c x n_unused channels. Here the
  output is always num_blocks x c wide, block j at channel slice j, with the slices of read blocks
  zeroed, so the next cell's preprocessing 1x1 convolutions and the classifier have a fixed input
  width; only the kernel rows of unused slices matter (the others get exactly zero gradient).
* Depth: consecutive cells whose inputs and output share one shape (the normal cells of a stage
  after its first) also share their architecture, so they run as one `nn.scan` over parameters
  stacked on a leading axis (`cell_runs`): one compiled cell body per kind of cell (the first
  cells, a reduction cell, the first normal cell after it, the other normal cells), however many
  cells a stage has.

The architecture's arrays (`CellArrays`) and the operation families are in `cell_encoding`, the
switch and the superkernels in `masking`, the transfer of weights from and to an exactly-shaped
`CellNet` (which the tests use to show that the two compute the same function) in
`cell_transfer`.

Compile and step time (docs/BENCHMARKS.md, "Compile time of the cell network"): the program holds
every branch of every slot of every kind of cell, so it compiles slower than one exact network, but
once per shape, not per architecture, and no slower for more cells per stage. XLA:CPU runs
convolutions inside control flow (switch, scan) on a slow path, so on CPU the exact networks are
the default for the cell space (`evaluate.resolve_network`). `op_families=False` (one branch per
operation) and `scan_cells=False` (one module per cell) build the same function without either
structure, for measurement.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ma2ml_jax.models.cell_encoding import (
    FAMILIES,
    IDENTITY,
    CellArrays,
    cell_arrays,
    cell_arrays_from_tokens,
    family_table,
    unused_mask,
)
from ma2ml_jax.models.cell_net import (
    CellOp,
    FactorizedReduce,
    ReLUConvBN,
)
from ma2ml_jax.models.layers import batch_norm, classifier_dropout, drop_path
from ma2ml_jax.models.masking import SuperConv, Variant, switch_variants
from ma2ml_jax.spaces.cell import CELL_OPS, CELL_TYPES, NUM_CELL_INPUTS

__all__ = ["CellArrays", "CellRun", "MaskedCellNet", "cell_arrays", "cell_arrays_from_tokens",
           "cell_runs", "unused_mask", "variant_name"]


def variant_name(op: str, stride: int) -> str:
    """Name of the submodule of an op slot holding `op` with `stride`."""
    return f"{op}_s{stride}"


class ConvFamily(nn.Module):
    """conv_1x1 and conv_3x3: ReLU, a 3x3 superkernel, BN (`CellOp`'s ReLUConvBN_0)."""

    features: int
    stride: int

    @nn.compact
    def __call__(self, x, op, train):
        k = jnp.asarray(family_table("conv"))[op]
        return _ReLUSuperConvBN(self.features, self.stride, name="ReLUConvBN_0")(x, k, train)


class _ReLUSuperConvBN(nn.Module):
    features: int
    stride: int

    @nn.compact
    def __call__(self, x, k, train):
        x = SuperConv(self.features, (3, 3), (self.stride,) * 2, name="Conv_0")(nn.relu(x), k)
        return batch_norm(train, "BatchNorm_0")(x)


class FactorizedFamily(nn.Module):
    """conv_1x3_3x1 and conv_1x7_7x1: ReLU, a 1x7 then a 7x1 superkernel, BN (as `CellOp`)."""

    features: int
    stride: int

    @nn.compact
    def __call__(self, x, op, train):
        k = jnp.asarray(family_table("factorized"))[op]
        c, s = self.features, self.stride
        x = SuperConv(c, (1, 7), (1, s), name="Conv_0")(nn.relu(x), k)
        return batch_norm(train, "BatchNorm_0")(SuperConv(c, (7, 1), (s, 1), name="Conv_1")(x, k))


class SepConvFamily(nn.Module):
    """sep_conv_3x3/5x5/7x7: `cell_net.SepConv` with 7x7 depthwise superkernels."""

    features: int
    stride: int
    depthwise_impl: str = "conv"

    @nn.compact
    def __call__(self, x, op, train):
        k = jnp.asarray(family_table("sep_conv"))[op]
        return _SuperSepConv(self.features, self.stride, self.depthwise_impl,
                             name="SepConv_0")(x, k, train)


class _SuperSepConv(nn.Module):
    features: int
    stride: int
    depthwise_impl: str

    @nn.compact
    def __call__(self, x, k, train):
        for i, stride in enumerate((self.stride, 1)):
            x = SuperConv(x.shape[-1], (7, 7), (stride, stride), True, self.depthwise_impl,
                          name=f"depthwise{i}")(nn.relu(x), k)
            x = batch_norm(train, f"bn{i}")(nn.Conv(self.features, (1, 1), use_bias=False,
                                             name=f"pointwise{i}")(x))
        return x


def _pools(x: jax.Array, op: jax.Array, stride: int) -> jax.Array:
    """The pooling `op` picks (3x3 average without padded pixels, 3/5/7 max), SAME padding."""
    s = (stride, stride)
    branches = [lambda x: nn.avg_pool(x, (3, 3), s, padding="SAME", count_include_pad=False)]
    branches += [lambda x, k=k: nn.max_pool(x, (k, k), s, padding="SAME") for k in (3, 5, 7)]
    return jax.lax.switch(jnp.asarray(family_table("pool"))[op], branches, x)


def _family_variant(family: str, features: int, stride: int, operand: int,
                    depthwise_impl: str) -> Variant:
    """The branch of `family` with `stride`, applied to operand `operand` (the op index is the
    last operand).
    """
    name = variant_name(family, stride)

    def on_operand(run, *operands):
        return run(operands[operand], operands[-1])

    if family == "identity":
        if stride == 1:
            return Variant(name, None, lambda run, *operands: operands[operand])
        # A stride-2 identity is CellOp's factorized reduction (variables FactorizedReduce_0).
        module = CellOp("identity", features, 2, parent=None)
        return Variant(name, module, lambda run, *operands: run(operands[operand]))
    if family == "pool":
        return Variant(name, None,
                       lambda run, *operands: _pools(operands[operand], operands[-1], stride))
    if family == "dil_conv":
        module = CellOp("dil_conv_3x3", features, stride, parent=None)
        return Variant(name, module, lambda run, *operands: run(operands[operand]))
    module = {"conv": ConvFamily(features, stride, parent=None),
              "factorized": FactorizedFamily(features, stride, parent=None),
              "sep_conv": SepConvFamily(features, stride, depthwise_impl, parent=None)}[family]
    return Variant(name, module, on_operand)


def _on_operand(run, *xs, operand: int):
    return run(xs[operand])


class MaskedOpSlot(nn.Module):
    """One op slot of a block: every variant it can take, run by a switch.

    Variables: ``{params, batch_stats}/<family>_s<stride>/...``, each family's module (see
    `FAMILIES`; a stride-2 identity and dil_conv_3x3 hold `CellOp`'s variables, the poolings and a
    stride-1 identity none). With `op_families=False`, one variant per operation instead:
    ``<op>_s<stride>/...``, the variables of ``CellOp(op, features, stride)``.

    Attributes:
      features: channels c of the cell.
      strides: the strides the slot can take; operand p of the call takes stride `strides[p]`.
      depthwise_impl: "conv" or "taps" (see `cell_net.SepConv`).
      op_families: one branch per family (True) or per operation.
    """

    features: int
    strides: tuple[int, ...]
    depthwise_impl: str = "conv"
    op_families: bool = True

    @nn.compact
    def __call__(self, xs: tuple[jax.Array, ...], source: jax.Array, op: jax.Array,
                 train: bool) -> jax.Array:
        """Applies the chosen variant.

        Args:
          xs: one input per stride, float[B, H_p, W_p, c]; stride-2 inputs at twice the size.
          source: int32 scalar, the operand p the op applies to.
          op: int32 scalar, index into `CELL_OPS`.
          train: batch statistics for BatchNorm.

        Returns:
          float[B, H, W, c].
        """
        c, impl = self.features, self.depthwise_impl
        if not self.op_families:
            variants = [Variant(variant_name(o, s), CellOp(o, c, s, impl, parent=None),
                                functools.partial(_on_operand, operand=p))
                        for p, s in enumerate(self.strides) for o in CELL_OPS]
            return switch_variants(self, source * len(CELL_OPS) + op, variants, xs, train)
        variants = [_family_variant(f, c, s, p, impl)
                    for p, s in enumerate(self.strides) for f in FAMILIES]
        branch = source * len(FAMILIES) + jnp.asarray(family_table(""))[op]
        return switch_variants(self, branch, variants, (*xs, op), train)


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

    Called as the body of a scan over cells: ``(s0, s1), _ = cell((s0, s1), rate, ...)``
    returns the next cell's inputs (h_{k-1}, this cell's output).

    Attributes:
      features: channels c of the cell.
      num_blocks: blocks per cell.
      reduction: a reduction cell (stride-2 ops on the cell inputs).
      reduce_prev: h_{k-2} has twice the spatial size of h_{k-1}.
      depthwise_impl: "conv" or "taps" (see `cell_net.SepConv`).
      op_families: see `MaskedOpSlot`.
      train: batch statistics and stochastic depth.
    """

    features: int
    num_blocks: int
    reduction: bool
    reduce_prev: bool
    depthwise_impl: str = "conv"
    op_families: bool = True
    train: bool = False

    @nn.compact
    def __call__(self, carry, drop_path_rate, inputs, ops, combine):
        """Runs the cell.

        Args:
          carry: (s0, s1): s0 float[B, H0, W0, C0], h_{k-2} (H0 = 2 H1 when `reduce_prev`); s1
            float[B, H1, W1, C1], h_{k-1}.
          drop_path_rate: stochastic-depth rate of this cell (may be traced).
          inputs: int32[num_blocks, 2]; ops: int32[num_blocks, 2]; combine: int32[num_blocks].

        Returns:
          ((s1, out), None): out float[B, H, W, num_blocks * c], block j at channels
          [j c, (j + 1) c), zero for blocks that another block reads.
        """
        s0, s1 = carry
        c, nb, train = self.features, self.num_blocks, self.train
        chex.assert_shape([inputs, ops], (nb, 2))
        chex.assert_shape(combine, (nb,))
        pre0 = (FactorizedReduce(c, name="preprocess0") if self.reduce_prev
                else ReLUConvBN(c, (1, 1), name="preprocess0"))
        h0 = pre0(s0, train)
        h1 = ReLUConvBN(c, (1, 1), name="preprocess1")(s1, train)
        cell_inputs = jnp.stack([h0, h1])  # [2, B, H1, W1, c]
        batch, height, width = h1.shape[:3]
        if self.reduction:
            height, width = height // 2, width // 2
        # States are written into fixed buffers so that a traced index can read any of them;
        # entries past the current block stay zero and a valid arch never reads them. A normal
        # cell keeps [h_{k-2}, h_{k-1}, blocks...] in one buffer; in a reduction cell the block
        # outputs are half the size of the cell inputs, so they get their own buffer.
        if self.reduction:
            states = jnp.zeros((nb, batch, height, width, c), h1.dtype)
            offset = 0
        else:
            states = jnp.concatenate([cell_inputs, jnp.zeros((nb,) + h1.shape, h1.dtype)])
            offset = NUM_CELL_INPUTS
        for b in range(nb):
            strides = _slot_strides(self.reduction, b)
            outs = []
            for j in range(2):
                i, op = inputs[b, j], ops[b, j]
                source = jnp.zeros((), jnp.int32)
                if not self.reduction:
                    xs = (jax.lax.dynamic_index_in_dim(states, i, keepdims=False),)
                elif b == 0:
                    xs = (jax.lax.dynamic_index_in_dim(cell_inputs, i, keepdims=False),)
                else:
                    xs = (jax.lax.dynamic_index_in_dim(cell_inputs, jnp.minimum(i, 1),
                                                       keepdims=False),
                          jax.lax.dynamic_index_in_dim(states, jnp.maximum(i - NUM_CELL_INPUTS, 0),
                                                       keepdims=False))
                    source = (i >= NUM_CELL_INPUTS).astype(jnp.int32)
                slot = MaskedOpSlot(c, strides, self.depthwise_impl, self.op_families,
                                    name=f"block{b}_op{j}")
                h = slot(xs, source, op, train)
                if train:
                    # As in CellNet: stochastic depth on every op output but identity.
                    dropped = drop_path(h, drop_path_rate, self.make_rng("dropout"))
                    h = jnp.where(op == IDENTITY, h, dropped)
                outs.append(h)
            h = MaskedCombine(c, name=f"block{b}_combine")(outs[0], outs[1], combine[b], train)
            states = states.at[offset + b].set(h)
        blocks = states[offset:]
        unused = unused_mask(inputs)
        blocks = jnp.where(unused[:, None, None, None, None], blocks, 0.0)
        # [nb, B, H, W, c] -> [B, H, W, nb * c], block j at slice j.
        out = jnp.moveaxis(blocks, 0, -2).reshape(batch, height, width, nb * c)
        return (s1, out), None


class CellRun(NamedTuple):
    """Consecutive cells first..last (1-based) of one kind: one module, scanned when several.

    Attributes:
      first, last: the cells of the run.
      features: channels c of its cells.
      reduction: reduction cells (stride-2 ops on the cell inputs).
      reduce_prev: h_{k-2} has twice the spatial size of h_{k-1}.
    """

    first: int
    last: int
    features: int
    reduction: bool
    reduce_prev: bool

    @property
    def name(self) -> str:
        """The module name: "cell<k>" for one cell, "cells<first>_<last>" for a scanned run."""
        return f"cell{self.first}" if self.first == self.last else \
            f"cells{self.first}_{self.last}"

    @property
    def cells(self) -> range:
        return range(self.first, self.last + 1)


def cell_runs(cells: int, reduction_cells: Sequence[int], channels: int, num_blocks: int,
              stem_multiplier: int, scan: bool = True) -> tuple[CellRun, ...]:
    """The network's cells grouped into runs of one kind (one compiled body each).

    Cells k and k + 1 share a kind when they see inputs of the same shapes and have the same
    channels and cell type; then both inputs and the output of each have one shape, and the run
    is a scan. With `scan=False` every cell is its own run.

    Returns:
      The runs in order; e.g. 17 cells with reductions at 6 and 12 (5 blocks): cell1, cell2,
      cells3_5, cell6, cell7, cells8_11, cell12, cell13, cells14_17.
    """
    stem = (stem_multiplier * channels, 0)  # (channels, reductions so far) of a state
    states, c, level = (stem, stem), channels, 0
    runs: list[CellRun] = []
    last_key = None
    for k in range(1, cells + 1):
        reduction = k in reduction_cells
        if reduction:
            c, level = 2 * c, level + 1
        reduce_prev = states[0][1] < states[1][1]
        key = (reduction, c, states)
        if scan and key == last_key:
            runs[-1] = runs[-1]._replace(last=k)
        else:
            runs.append(CellRun(k, k, c, reduction, reduce_prev))
        last_key = key
        states = (states[1], (num_blocks * c, level))
    return tuple(runs)


class MaskedCellNet(nn.Module):
    """`CellNet` with the architecture as an input: one program for every cell architecture.

    Call: ``logits = net.apply(variables, x, train, dropout, drop_path_rate, arch)`` with x
    float32[B, H, W, C] and `arch` a `CellArrays` (may be traced). ``train=True`` needs
    ``rngs={"dropout": key}`` and ``mutable=["batch_stats"]``. Batch statistics of op variants
    not chosen stay unchanged.

    Variables: stem, bn_stem, classifier, and one module per `CellRun`: "cell<k>" for a single
    cell, "cells<first>_<last>" for a scanned run, each of its leaves stacked over the run's cells
    on a leading axis.

    Attributes:
      num_classes: classifier outputs.
      cells: number of cells.
      reduction_cells: 1-based positions of the reduction cells.
      channels: channels of the first cells (doubled at each reduction cell).
      num_blocks: blocks per cell.
      stem_multiplier: the stem has `stem_multiplier * channels` channels.
      depthwise_impl: "conv" (XLA's grouped convolution) or "taps" (shifted multiply-adds, the
        fast choice on CPU; same parameters and function).
      op_families: one branch per operation family with a superkernel (True) or per operation.
      scan_cells: cells of one kind as one `nn.scan` (True) or one module per cell.
    """

    num_classes: int
    cells: int = 17
    reduction_cells: tuple[int, ...] = (6, 12)
    channels: int = 16
    num_blocks: int = 5
    stem_multiplier: int = 3
    depthwise_impl: str = "conv"
    op_families: bool = True
    scan_cells: bool = True

    def runs(self) -> tuple[CellRun, ...]:
        return cell_runs(self.cells, self.reduction_cells, self.channels, self.num_blocks,
                         self.stem_multiplier, self.scan_cells)

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
        x = batch_norm(train, "bn_stem")(x)
        carry = (x, x)
        for run in self.runs():
            t = int(run.reduction)
            cell_arch = (arch.inputs[t], arch.ops[t], arch.combine[t])
            # Stochastic depth grows linearly with depth, as in CellNet.
            rates = drop_path_rate * jnp.asarray([(k - 1) / max(1, self.cells - 1)
                                                  for k in run.cells], jnp.float32)
            settings = dict(features=run.features, num_blocks=nb, reduction=run.reduction,
                            reduce_prev=run.reduce_prev, depthwise_impl=self.depthwise_impl,
                            op_families=self.op_families, train=train, name=run.name)
            if len(run.cells) == 1:
                carry, _ = MaskedCell(**settings)(carry, rates[0], *cell_arch)
                continue
            scanned = nn.scan(MaskedCell, variable_axes={"params": 0, "batch_stats": 0},
                              split_rngs={"params": True, "dropout": True},
                              in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
                              length=len(run.cells))
            carry, _ = scanned(**settings)(carry, rates, *cell_arch)
        x = carry[1].mean(axis=(1, 2))
        if train:
            x = classifier_dropout(x, dropout, self.make_rng("dropout"))
        return nn.Dense(self.num_classes, name="classifier")(x)

