"""Masked modules: a switch over branches with their own variables, and superkernels.

`switch_variants` runs one of several flax modules under `jax.lax.switch`, each with its own
parameters and batch statistics; `superkernel` / `SuperConv` let one kernel of the largest size
serve every smaller odd kernel by zeroing its outer taps. `cell_masked.MaskedCellNet` builds its op
slots from both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from ma2ml_jax.models.layers import depthwise


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

