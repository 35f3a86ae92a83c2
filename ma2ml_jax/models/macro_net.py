"""Exactly-shaped FBNetV3-style inverted-residual network built from a decoded macro architecture.

The network's shape is a Python value (one compiled program per architecture): it is the reference
that the masked one-program networks are checked against, and the network of the naive baseline.

Decoded architecture (`ma2ml_jax.spaces.macro`):
  {"resolution": int, "stem": {"width", "stride"},
   "stages": [{"kernel", "expansion", "width", "depth", "stride", "se"}, ...], "head": {"width"}}

Regularisation strengths (dropout, stochastic depth) are call arguments that may be traced arrays,
so a new recipe never recompiles.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax

from ma2ml_jax.models.layers import Depthwise, batch_norm, classifier_dropout, drop_path, hard_swish


class Stage(NamedTuple):
    kernel: int
    expansion: int
    width: int
    depth: int
    stride: int
    se: bool


class MacroArch(NamedTuple):
    """A hashable macro architecture (a flax module attribute must be hashable)."""

    resolution: int
    stem_width: int
    stem_stride: int
    stages: tuple[Stage, ...]
    head_width: int

    @classmethod
    def from_config(cls, arch: Mapping[str, Any]) -> MacroArch:
        return cls(
            resolution=int(arch["resolution"]),
            stem_width=int(arch["stem"]["width"]),
            stem_stride=int(arch["stem"]["stride"]),
            stages=tuple(Stage(int(s["kernel"]), int(s["expansion"]), int(s["width"]),
                               int(s["depth"]), int(s["stride"]), bool(s["se"]))
                         for s in arch["stages"]),
            head_width=int(arch["head"]["width"]),
        )

    @property
    def num_blocks(self) -> int:
        return sum(s.depth for s in self.stages)


class SqueezeExcite(nn.Module):
    reduction: int = 4

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        s = x.mean(axis=(1, 2), keepdims=True)
        s = nn.relu(nn.Conv(max(8, c // self.reduction), (1, 1), name="reduce")(s))
        s = jax.nn.hard_sigmoid(nn.Conv(c, (1, 1), name="expand")(s))
        return x * s


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, kxk depthwise, optional SE, 1x1 project."""

    kernel: int
    expansion: int
    width: int
    stride: int
    se: bool
    depthwise_impl: str = "conv"  # see models.layers

    @nn.compact
    def __call__(self, x, train: bool, drop_path_rate=0.0):
        cin = x.shape[-1]
        h = x
        if self.expansion != 1:
            expand = nn.Conv(cin * self.expansion, (1, 1), use_bias=False, name="expand")
            h = hard_swish(batch_norm(train, "bn_expand")(expand(h)))
        h = Depthwise(self.kernel, self.stride, self.depthwise_impl, name="depthwise")(h)
        h = hard_swish(batch_norm(train, "bn_depthwise")(h))
        if self.se:
            h = SqueezeExcite(name="se")(h)
        project = nn.Conv(self.width, (1, 1), use_bias=False, name="project")
        h = batch_norm(train, "bn_project")(project(h))
        if self.stride == 1 and cin == self.width:
            if train:
                h = drop_path(h, drop_path_rate, self.make_rng("dropout"))
            h = h + x
        return h


class MacroNet(nn.Module):
    """The network of one macro architecture.

    Call: `logits = net.apply(variables, x, train, dropout=..., drop_path=...)` with x float32
    [B, H, W, C] (normalized); images of another size are resized to `arch.resolution`.
    """

    arch: MacroArch
    num_classes: int
    depthwise_impl: str = "conv"  # "taps" on CPU (models.layers)

    @nn.compact
    def __call__(self, x, train: bool = False, dropout=0.0, drop_path_rate=0.0):
        a = self.arch
        if x.shape[1:3] != (a.resolution, a.resolution):
            x = jax.image.resize(x, (x.shape[0], a.resolution, a.resolution, x.shape[3]),
                                 "bilinear")
        x = nn.Conv(a.stem_width, (3, 3), strides=a.stem_stride, use_bias=False, name="stem")(x)
        x = hard_swish(batch_norm(train, "bn_stem")(x))
        block, n_blocks = 0, max(1, a.num_blocks)
        for si, s in enumerate(a.stages):
            for d in range(s.depth):
                # Stochastic depth grows linearly with depth (Huang et al. 2016).
                rate = drop_path_rate * block / n_blocks
                x = MBConv(s.kernel, s.expansion, s.width, s.stride if d == 0 else 1, s.se,
                           self.depthwise_impl, name=f"stage{si}_block{d}")(x, train, rate)
                block += 1
        x = nn.Conv(a.head_width, (1, 1), use_bias=False, name="head")(x)
        x = hard_swish(batch_norm(train, "bn_head")(x))
        x = x.mean(axis=(1, 2))
        if train:
            x = classifier_dropout(x, dropout, self.make_rng("dropout"))
        return nn.Dense(self.num_classes, name="classifier")(x)
