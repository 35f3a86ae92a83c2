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

`embed_variables` places an exactly-shaped `CellNet`'s variables into the masked network's (and
`extract_variables` takes them back out), so that the two compute the same function
(tests/test_cell_masked.py checks outputs, batch statistics and gradients); `active_mask` marks the
entries an architecture uses. A superkernel is initialized as the exact network initializes the
chosen operation's kernel (`superkernel`), so a pipeline starts from the same distribution.

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
from ma2ml_jax.models.layers import depthwise
from ma2ml_jax.models.macro_net import classifier_dropout, drop_path
from ma2ml_jax.spaces.cell import CELL_OPS, CELL_TYPES, COMBINE, NUM_CELL_INPUTS

_DECISIONS_PER_BLOCK = 5  # inputs/0, inputs/1, ops/0, ops/1, combine (`cell_space` order)
_IDENTITY = CELL_OPS.index("identity")

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


def _family_table(family: str) -> np.ndarray:
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


def variant_name(op: str, stride: int) -> str:
    """Name of the submodule of an op slot holding `op` with `stride`."""
    return f"{op}_s{stride}"


class Variant(NamedTuple):
    """One branch of a `switch_variants`.

    Attributes:
      name: name of the branch's variables in the switching module ("" for none).
      module: unbound flax module holding the branch's variables, or None.
      fn: ``fn(run, *operands) -> y``; ``run(*args)`` applies `module` with its variables to
        args (``module(*args, train)``).
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
            def run(*args, v=v):
                y, variables = v.module.init_with_output(mdl.make_rng("params"), *args, False)
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

        def run(*args):
            nonlocal new_stats
            variables = {}
            if v.name in param_segments:
                variables["params"] = unpack(params, param_segments, v.name)
            if v.name in stat_segments:
                variables["batch_stats"] = unpack(stats, stat_segments, v.name)
            if not mutable:
                return v.module.apply(variables, *args, train)
            y, updated = v.module.apply(variables, *args, train, mutable=["batch_stats"])
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


# ------------------------------------------------------------------------------ superkernels
def superkernel(mdl: nn.Module, shape: tuple[int, ...], axes: tuple[int, ...],
                k: jax.Array) -> jax.Array:
    """The parameter "kernel" of `shape`, its active taps the centred k along each of `axes`.

    Initialized as `lecun_normal` initializes the k-tap kernel of the chosen operation (the fan-in
    counts k taps per masked axis, not `shape`'s), so the active taps start from the exact
    network's distribution.

    Args:
      mdl: the module that owns the parameter (call from its compact method).
      shape: the superkernel's shape, e.g. [K, K, C_in, C_out] (odd K).
      axes: the masked axes, each of size K.
      k: int32 scalar, the active taps per masked axis (odd, <= K; may be traced).

    Returns:
      The kernel with the taps outside the centred k x ... x k block zeroed (they get zero
      gradient).
    """
    k_max = shape[axes[0]]
    k = jnp.asarray(k)

    def init(key, shape, dtype=jnp.float32):
        w = nn.initializers.lecun_normal()(key, shape, dtype)
        return w * jnp.sqrt((k_max / k.astype(jnp.float32)) ** len(axes)).astype(dtype)

    w = mdl.param("kernel", init, shape)
    ring = (k_max - k) // 2
    taps = jnp.arange(k_max)
    inside = ((taps >= ring) & (taps < k_max - ring)).astype(w.dtype)
    for a in axes:
        w = w * inside.reshape([k_max if i == a else 1 for i in range(w.ndim)])
    return w


class SuperConv(nn.Module):
    """A convolution without bias whose `kernel_max` taps serve every smaller odd kernel.

    Computes `nn.Conv(features, (k, k) or (1, k) or (k, 1), strides=stride, padding="SAME")` of
    the centred taps (`superkernel`), or a depthwise convolution (`layers.depthwise`).

    Attributes:
      features: output channels (depthwise: the input's).
      kernel_max: (K_h, K_w); axes of size 1 are not masked.
      stride: (s_h, s_w).
      depthwise: a depthwise convolution (kernel [K_h, K_w, 1, C]).
      depthwise_impl: "conv" or "taps" (`layers.depthwise`).
    """

    features: int
    kernel_max: tuple[int, int]
    stride: tuple[int, int]
    depthwise: bool = False
    depthwise_impl: str = "conv"

    @nn.compact
    def __call__(self, x: jax.Array, k: jax.Array) -> jax.Array:
        """Float[B, H', W', features] of x float[B, H, W, C_in]; k: active taps per masked axis."""
        axes = tuple(a for a in (0, 1) if self.kernel_max[a] > 1)
        c_in = 1 if self.depthwise else x.shape[-1]
        w = superkernel(self, (*self.kernel_max, c_in, self.features), axes, k)
        for a in axes:
            # SAME padding centres every odd kernel of >= 3 taps on one input pixel, but a 1-tap
            # kernel with stride 2 on an even size samples the pixel before that centre.
            if self.stride[a] == 2 and x.shape[1 + a] % 2 == 0:
                w = jnp.where(k == 1, jnp.roll(w, -1, axis=a), w)
        if self.depthwise:
            return depthwise(x, w.astype(x.dtype), self.stride[0], self.depthwise_impl)
        return jax.lax.conv_general_dilated(x, w.astype(x.dtype), self.stride, "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))


class ConvFamily(nn.Module):
    """conv_1x1 and conv_3x3: ReLU, a 3x3 superkernel, BN (`CellOp`'s ReLUConvBN_0)."""

    features: int
    stride: int

    @nn.compact
    def __call__(self, x, op, train):
        k = jnp.asarray(_family_table("conv"))[op]
        return _ReLUSuperConvBN(self.features, self.stride, name="ReLUConvBN_0")(x, k, train)


class _ReLUSuperConvBN(nn.Module):
    features: int
    stride: int

    @nn.compact
    def __call__(self, x, k, train):
        x = SuperConv(self.features, (3, 3), (self.stride,) * 2, name="Conv_0")(nn.relu(x), k)
        return _bn(train, "BatchNorm_0")(x)


class FactorizedFamily(nn.Module):
    """conv_1x3_3x1 and conv_1x7_7x1: ReLU, a 1x7 then a 7x1 superkernel, BN (as `CellOp`)."""

    features: int
    stride: int

    @nn.compact
    def __call__(self, x, op, train):
        k = jnp.asarray(_family_table("factorized"))[op]
        c, s = self.features, self.stride
        x = SuperConv(c, (1, 7), (1, s), name="Conv_0")(nn.relu(x), k)
        return _bn(train, "BatchNorm_0")(SuperConv(c, (7, 1), (s, 1), name="Conv_1")(x, k))


class SepConvFamily(nn.Module):
    """sep_conv_3x3/5x5/7x7: `cell_net.SepConv` with 7x7 depthwise superkernels."""

    features: int
    stride: int
    depthwise_impl: str = "conv"

    @nn.compact
    def __call__(self, x, op, train):
        k = jnp.asarray(_family_table("sep_conv"))[op]
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
            x = _bn(train, f"bn{i}")(nn.Conv(self.features, (1, 1), use_bias=False,
                                             name=f"pointwise{i}")(x))
        return x


def _pools(x: jax.Array, op: jax.Array, stride: int) -> jax.Array:
    """The pooling `op` picks (3x3 average without padded pixels, 3/5/7 max), SAME padding."""
    s = (stride, stride)
    branches = [lambda x: nn.avg_pool(x, (3, 3), s, padding="SAME", count_include_pad=False)]
    branches += [lambda x, k=k: nn.max_pool(x, (k, k), s, padding="SAME") for k in (3, 5, 7)]
    return jax.lax.switch(jnp.asarray(_family_table("pool"))[op], branches, x)


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
        branch = source * len(FAMILIES) + jnp.asarray(_family_table(""))[op]
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
                    h = jnp.where(op == _IDENTITY, h, dropped)
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
        x = _bn(train, "bn_stem")(x)
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


# --------------------------------------------------------------------------------- embedding
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
