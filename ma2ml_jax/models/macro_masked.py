"""The macro space's max-size network with the architecture as an input array (one program).

Every architecture of a macro space (one resolution) runs in ONE compiled program, the approach of
Single-Path NAS and FBNetV2: the network holds the largest kernel, expansion, width and depth of
each stage, and the architecture arrives as int32 arrays (`MacroArrays`) that
  * mask channels: every conv output keeps its first `width` (or `cin * expansion`) channels; the
    mask comes after BatchNorm, which would otherwise turn the zeros into its bias;
  * zero-pad kernels: a k x k depthwise kernel is the centre of the k_max x k_max one (with SAME
    padding both see the same input pixels, for stride 1 and 2);
  * gate depth: blocks past a stage's depth pass their input through (they are residual blocks);
  * select the expansion-1 block (no expand convolution) against the expanded one.
Masked-out weights get zero gradient, and with the weights of an exactly-shaped `MacroNet` embedded
(`embed_params`) the output equals that network's.

Fixed per stage (single-choice decisions in every variant): stride and squeeze-excitation.
Resolution is static: pipelines are bucketed by it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ma2ml_jax.models.layers import (
    batch_norm,
    classifier_dropout,
    depthwise_taps,
    drop_path,
    hard_swish,
)
from ma2ml_jax.spaces.macro import MacroSpec


class StageBounds(NamedTuple):
    kernel: int  # largest kernel
    expansion: int  # largest expansion
    width: int  # largest width
    depth: int  # largest depth
    stride: int
    se: bool


class MacroBounds(NamedTuple):
    """The static shape of the max-size network of a macro space (hashable)."""

    stem_width: int
    stem_stride: int
    stages: tuple[StageBounds, ...]
    head_width: int

    @classmethod
    def from_spec(cls, spec: MacroSpec) -> MacroBounds:
        stages, width = [], None
        for s in spec.stages:
            width = max(s.width) if s.width is not None else width  # tied: previous stage's
            stages.append(StageBounds(max(s.kernel), max(s.expansion), width, max(s.depth),
                                      s.stride, s.se))
        return cls(max(spec.stem_width), spec.stem_stride, tuple(stages), max(spec.head_width))

    @classmethod
    def from_space(cls, space) -> MacroBounds:
        """From a macro `Space`'s decisions (a stage without a width decision ties the previous)."""
        choices = {d.name: d.choices for d in space.decisions}
        n_stages = 1 + max(int(n.split("/")[1]) for n in choices if n.startswith("stages/"))
        stages, width = [], None
        for i in range(n_stages):
            c = lambda k, i=i: choices[f"stages/{i}/{k}"]  # noqa: E731
            width = max(c("width")) if f"stages/{i}/width" in choices else width
            stages.append(StageBounds(max(c("kernel")), max(c("expansion")), width,
                                      max(c("depth")), c("stride")[0], c("se")[0]))
        return cls(max(choices["stem/width"]), choices["stem/stride"][0], tuple(stages),
                   max(choices["head/width"]))


class MacroArrays(NamedTuple):
    """One macro architecture as arrays (stack them over pipelines for vmap).

    Attributes:
      stem_width: int32[]; kernel, expansion, width, depth: int32[S]; head_width: int32[].
    """

    stem_width: jax.Array
    kernel: jax.Array
    expansion: jax.Array
    width: jax.Array
    depth: jax.Array
    head_width: jax.Array


def macro_arrays(arch: Mapping[str, Any]) -> MacroArrays:
    """Decoded macro architecture -> `MacroArrays` (numpy int32)."""
    st = arch["stages"]
    col = lambda k: np.array([int(s[k]) for s in st], np.int32)  # noqa: E731
    return MacroArrays(np.int32(arch["stem"]["width"]), col("kernel"), col("expansion"),
                       col("width"), col("depth"), np.int32(arch["head"]["width"]))


def _mask(n_active, size):
    """float32[size]: 1 for the first `n_active` channels."""
    return (jnp.arange(size) < n_active).astype(jnp.float32)



def _fit(x, channels):
    """Zero-pad or crop the channel axis to `channels` (cropped channels are masked zeros)."""
    c = x.shape[-1]
    if c < channels:
        return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, channels - c)])
    return x[..., :channels]


class MaskedSqueezeExcite(nn.Module):
    reduction: int = 4

    @nn.compact
    def __call__(self, x, mid):
        c_max = x.shape[-1]
        r_max = max(8, c_max // self.reduction)
        r = jnp.maximum(8, mid // self.reduction)
        s = x.mean(axis=(1, 2), keepdims=True)
        s = nn.relu(nn.Conv(r_max, (1, 1), name="reduce")(s)) * _mask(r, r_max)
        s = jax.nn.hard_sigmoid(nn.Conv(c_max, (1, 1), name="expand")(s))
        return x * s


class MaskedDepthwise(nn.Module):
    """A depthwise k_max x k_max convolution whose active kernel is the centred k x k.

    Attributes:
      impl: "taps" (`depthwise_taps`, fast on CPU) or "conv" (XLA's grouped convolution, for
        accelerators).
    """

    features: int
    kernel_max: int
    stride: int
    impl: str = "conv"

    @nn.compact
    def __call__(self, x, kernel):
        k = self.kernel_max
        w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, self.features))
        ring = (k - kernel) // 2
        idx = jnp.arange(k)
        inside = (idx >= ring) & (idx < k - ring)
        w = w * (inside[:, None] & inside[None, :])[:, :, None, None]
        if self.impl == "taps":
            return depthwise_taps(x, w, self.stride)
        return jax.lax.conv_general_dilated(
            x, w, (self.stride, self.stride), "SAME", feature_group_count=self.features,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))


class MaskedMBConv(nn.Module):
    """An inverted residual block of the max-size network (see `macro_net.MBConv`)."""

    bounds: StageBounds
    in_max: int
    stride: int
    depthwise_impl: str = "conv"

    @nn.compact
    def __call__(self, x, cin, kernel, expansion, width, train, drop_path_rate):
        b = self.bounds
        mid_max = self.in_max * b.expansion
        mid = cin * expansion
        mid_mask = _mask(mid, mid_max)
        expand = nn.Conv(mid_max, (1, 1), use_bias=False, name="expand")
        expanded = hard_swish(batch_norm(train, "bn_expand")(expand(x)))
        # Expansion 1 has no expand convolution in the exact network.
        h = jnp.where(expansion == 1, _fit(x, mid_max), expanded * mid_mask)
        h = MaskedDepthwise(mid_max, b.kernel, self.stride, self.depthwise_impl,
                            name="depthwise")(h, kernel)
        h = hard_swish(batch_norm(train, "bn_depthwise")(h)) * mid_mask
        if b.se:
            h = MaskedSqueezeExcite(name="se")(h, mid)
        project = nn.Conv(b.width, (1, 1), use_bias=False, name="project")
        h = batch_norm(train, "bn_project")(project(h))
        h = h * _mask(width, b.width)
        if self.stride == 1:
            residual = h + _fit(x, b.width)
            if train:
                residual = drop_path(h, drop_path_rate, self.make_rng("dropout")) + _fit(x, b.width)
            h = jnp.where(cin == width, residual, h)
        return h


class MaskedMacroNet(nn.Module):
    """The max-size network of a macro space; the architecture is the `arch` call argument.

    Call: `logits = net.apply(variables, x, train, dropout, drop_path_rate, arch)` with x float32
    [B, resolution, resolution, C] (normalized) and `arch` a `MacroArrays`.
    """

    bounds: MacroBounds
    num_classes: int
    resolution: int
    depthwise_impl: str = "conv"  # see `MaskedDepthwise`

    @nn.compact
    def __call__(self, x, train: bool = False, dropout=0.0, drop_path_rate=0.0, arch=None):
        b, a = self.bounds, arch
        if x.shape[1:3] != (self.resolution, self.resolution):
            x = jax.image.resize(x, (x.shape[0], self.resolution, self.resolution, x.shape[3]),
                                 "bilinear")
        x = nn.Conv(b.stem_width, (3, 3), strides=b.stem_stride, use_bias=False, name="stem")(x)
        x = hard_swish(batch_norm(train, "bn_stem")(x)) * _mask(a.stem_width, b.stem_width)
        cin, in_max = a.stem_width, b.stem_width
        n_blocks = jnp.maximum(1, a.depth.sum())
        block = jnp.zeros((), jnp.int32)  # index of the block among the active ones
        for si, s in enumerate(b.stages):
            for d in range(s.depth):
                rate = drop_path_rate * block / n_blocks
                y = MaskedMBConv(s, in_max, s.stride if d == 0 else 1, self.depthwise_impl,
                                 name=f"stage{si}_block{d}")(
                    x, cin, a.kernel[si], a.expansion[si], a.width[si], train, rate)
                if d == 0:
                    x = y  # every stage has at least one block
                else:  # blocks past the stage's depth pass their input through
                    x = jnp.where(d < a.depth[si], y, x)
                block = block + (d < a.depth[si])
                cin, in_max = a.width[si], s.width
        x = nn.Conv(b.head_width, (1, 1), use_bias=False, name="head")(x)
        x = hard_swish(batch_norm(train, "bn_head")(x)) * _mask(a.head_width, b.head_width)
        x = x.mean(axis=(1, 2))
        if train:
            x = classifier_dropout(x, dropout, self.make_rng("dropout"))
        return nn.Dense(self.num_classes, name="classifier")(x)


def embed_params(exact: Mapping[str, Any], masked_template: Mapping[str, Any]) -> dict:
    """Writes an exactly-shaped `MacroNet`'s variables into the max-size network's.

    Every exact array goes to the same path, in the leading slice of each axis, except the
    spatial axes of depthwise kernels, which are centred. Arrays of the max-size network that the
    exact network lacks (blocks past its depth, an expand conv of an expansion-1 block) keep the
    template's values.
    """
    exact_flat = dict(jax.tree_util.tree_flatten_with_path(exact)[0])
    out = []
    leaves, treedef = jax.tree_util.tree_flatten_with_path(masked_template)
    for path, value in leaves:
        src = exact_flat.get(path)
        if src is None:
            out.append(value)
            continue
        keys = [getattr(p, "key", None) for p in path]
        value = np.array(value)
        if "depthwise" in keys and value.ndim == 4:
            off = (value.shape[0] - src.shape[0]) // 2
            value[...] = 0
            value[off:off + src.shape[0], off:off + src.shape[1], :, :src.shape[3]] = src
        else:
            value[tuple(slice(0, n) for n in src.shape)] = src
        out.append(value)
    return jax.tree_util.tree_unflatten(treedef, out)
