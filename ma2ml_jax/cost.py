"""FLOPs and parameter counts of a decoded architecture, without building or compiling it.

Convention: "FLOPs" are the multiply-adds of the convolution and dense layers for one image, the
convention of the NAS papers (MnasNet, FBNetV3, MA2ML's 600M constraint). Normalization,
activations, pooling and additions are not counted. XLA's cost analysis counts a multiply-add as 2
flops and also counts those element-wise ops, so 2 x `flops` sits a few percent below it (the tests
bound the gap). Parameters are the trainable ones: convolution and dense weights and biases, and
the BatchNorm scale and bias (not its running statistics).

The counts follow `models.macro_net.MacroNet`, `models.cell_net.CellNet` and
`models.layerwise_net.LayerwiseNet` layer by layer; the tests compare them with the real networks
(parameters exactly, FLOPs against XLA).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from ma2ml_jax.models.cell_net import NUM_CELL_INPUTS, CellArch, unused_blocks
from ma2ml_jax.models.macro_net import MacroArch


class Cost(NamedTuple):
    flops: int  # multiply-adds of one forward pass on one image
    params: int  # trainable parameters

    def __add__(self, other):  # NamedTuple + would concatenate
        return Cost(self.flops + other.flops, self.params + other.params)


ZERO = Cost(0, 0)


def _out(size: int, stride: int) -> int:
    return math.ceil(size / stride)  # SAME padding


def conv(h: int, w: int, cin: int, cout: int, kh: int, kw: int, stride=(1, 1), groups: int = 1,
         bias: bool = False, bn: bool = False) -> tuple[Cost, int, int]:
    """Cost of one convolution on an [h, w, cin] input; returns (cost, out_h, out_w)."""
    ho, wo = _out(h, stride[0]), _out(w, stride[1])
    per_out = kh * kw * (cin // groups)
    flops = ho * wo * cout * per_out
    params = per_out * cout + (cout if bias else 0) + (2 * cout if bn else 0)
    return Cost(flops, params), ho, wo


def dense(cin: int, cout: int) -> Cost:
    return Cost(cin * cout, cin * cout + cout)


# ------------------------------------------------------------------------------------ macro
def macro_cost(arch: Mapping[str, Any] | MacroArch, num_classes: int,
               in_channels: int = 3) -> Cost:
    """Cost of `MacroNet(arch, num_classes)` on one image at the architecture's resolution."""
    a = arch if isinstance(arch, MacroArch) else MacroArch.from_config(arch)
    h = w = a.resolution
    total, h, w = conv(h, w, in_channels, a.stem_width, 3, 3, (a.stem_stride,) * 2, bn=True)
    c = a.stem_width
    for s in a.stages:
        for d in range(s.depth):
            stride = s.stride if d == 0 else 1
            mid = c * s.expansion
            if s.expansion != 1:
                cost, _, _ = conv(h, w, c, mid, 1, 1, bn=True)
                total += cost
            cost, h, w = conv(h, w, mid, mid, s.kernel, s.kernel, (stride, stride), groups=mid,
                              bn=True)
            total += cost
            if s.se:
                r = max(8, mid // 4)
                total += conv(1, 1, mid, r, 1, 1, bias=True)[0] + conv(1, 1, r, mid, 1, 1,
                                                                         bias=True)[0]
            cost, _, _ = conv(h, w, mid, s.width, 1, 1, bn=True)
            total += cost
            c = s.width
    cost, _, _ = conv(h, w, c, a.head_width, 1, 1, bn=True)
    return total + cost + dense(a.head_width, num_classes)


# ------------------------------------------------------------------------------------ cell
def _cell_op_cost(op: str, h: int, w: int, c: int, stride: int) -> tuple[Cost, int, int]:
    s = (stride, stride)
    if op == "identity":
        return (_factorized_reduce(h, w, c, c) if stride == 2 else (ZERO, h, w))
    if op in ("conv_1x3_3x1", "conv_1x7_7x1"):
        k = 3 if op == "conv_1x3_3x1" else 7
        a, h1, w1 = conv(h, w, c, c, 1, k, (1, stride))
        b, h2, w2 = conv(h1, w1, c, c, k, 1, (stride, 1), bn=True)
        return a + b, h2, w2
    if op == "dil_conv_3x3":
        return conv(h, w, c, c, 3, 3, s, bn=True)
    if op == "avg_pool_3x3" or op.startswith("max_pool_"):
        return ZERO, _out(h, stride), _out(w, stride)
    if op in ("conv_1x1", "conv_3x3"):
        k = int(op[-1])
        return conv(h, w, c, c, k, k, s, bn=True)
    if op.startswith("sep_conv_"):
        k, total = int(op[-1]), ZERO
        for st in (stride, 1):
            dw, h, w = conv(h, w, c, c, k, k, (st, st), groups=c)
            pw, _, _ = conv(h, w, c, c, 1, 1, bn=True)
            total += dw + pw
        return total, h, w
    raise ValueError(f"unknown cell op {op!r}")


def _factorized_reduce(h: int, w: int, cin: int, cout: int) -> tuple[Cost, int, int]:
    a, ho, wo = conv(h, w, cin, cout // 2, 1, 1, (2, 2))
    b, _, _ = conv(h, w, cin, cout - cout // 2, 1, 1, (2, 2))
    return a + b + Cost(0, 2 * cout), ho, wo


def cell_cost(arch: Mapping[str, Any] | CellArch, num_classes: int, *, cells: int = 17,
              reduction_cells: tuple[int, ...] = (6, 12), channels: int = 16,
              image_size: int = 32, in_channels: int = 3, stem_multiplier: int = 3) -> Cost:
    """Cost of `CellNet(arch, num_classes, cells, reduction_cells, channels)` on one image."""
    a = arch if isinstance(arch, CellArch) else CellArch.from_config(arch)
    h = w = image_size
    total, _, _ = conv(h, w, in_channels, channels * stem_multiplier, 3, 3, bn=True)
    # (spatial size, channels) of h_{k-2} and h_{k-1}
    prev = [(h, channels * stem_multiplier), (h, channels * stem_multiplier)]
    c, reduce_prev = channels, False
    for k in range(1, cells + 1):
        reduction = k in reduction_cells
        if reduction:
            c *= 2
        blocks = a.reduction if reduction else a.normal
        (h0, c0), (h1, c1) = prev
        if reduce_prev:
            cost, _, _ = _factorized_reduce(h0, h0, c0, c)
        else:
            cost, _, _ = conv(h0, h0, c0, c, 1, 1, bn=True)
        total += cost + conv(h1, h1, c1, c, 1, 1, bn=True)[0]
        sizes = [h1, h1]
        for b in blocks:
            out = []
            for i, op in zip(b.inputs, b.ops):
                stride = 2 if reduction and i < NUM_CELL_INPUTS else 1
                cost, ho, _ = _cell_op_cost(op, sizes[i], sizes[i], c, stride)
                total += cost
                out.append(ho)
            if b.combine == "concat":
                total += conv(out[0], out[0], 2 * c, c, 1, 1, bn=True)[0]
            sizes.append(out[0])
        out_size = sizes[NUM_CELL_INPUTS + unused_blocks(blocks)[0]]
        prev = [prev[1], (out_size, c * len(unused_blocks(blocks)))]
        reduce_prev = reduction
    return total + dense(prev[1][1], num_classes)


# ------------------------------------------------------------------------------------ layerwise
def layerwise_cost(arch, num_classes: int, image_shape: tuple[int, int, int]) -> Cost:
    """Cost of `LayerwiseNet(arch, num_classes)` (a `models.layerwise_net.LayerwiseArch`) on one
    image of `image_shape`; shapes (clamped poolings included) from `layerwise_net.plan`.
    """
    from ma2ml_jax.models.layerwise_net import plan

    total = ZERO
    for layer, s in zip(arch.layers, plan(arch, image_shape)):
        if layer.type == "conv":
            total += conv(s.in_h, s.in_w, s.in_c, layer.features, layer.kernel, layer.kernel,
                          (layer.stride, layer.stride), bn=True)[0]
        elif layer.type == "dense":
            total += dense(s.in_c, layer.features)
    last = plan(arch, image_shape)[-1]
    flat = last.out_c if last.out_h == 0 else last.out_h * last.out_w * last.out_c
    return total + dense(flat, num_classes)


def count(kind: str, arch: Mapping[str, Any], num_classes: int, image_shape: tuple[int, int, int],
          model_config=None, flops_classes: int = 0) -> Cost:
    """Cost of the network of a decoded architecture of space `kind` ('macro' or 'cell'; or
    'layerwise' with a `LayerwiseArch`).

    flops_classes > 0 counts the FLOPs with a classifier of that many outputs (`reward.
    flops_classes`: a proxy task's network counted as the deployed one, e.g. ImageNet-200's at
    1000 classes); the parameters stay those of the `num_classes` network.
    """
    counted = _count(kind, arch, num_classes, image_shape, model_config)
    if flops_classes and flops_classes != num_classes:
        flops = _count(kind, arch, flops_classes, image_shape, model_config).flops
        counted = counted._replace(flops=flops)
    return counted


def _count(kind, arch, num_classes, image_shape, model_config) -> Cost:
    if kind == "layerwise":
        return layerwise_cost(arch, num_classes, image_shape)
    if kind == "macro":
        return macro_cost(arch, num_classes, image_shape[-1])
    if kind == "cell":
        return cell_cost(arch, num_classes, cells=model_config.cells,
                         reduction_cells=tuple(model_config.reduction_cells),
                         channels=model_config.cell_channels, image_size=image_shape[0],
                         in_channels=image_shape[-1])
    raise ValueError(f"no cost model for space kind {kind!r}; valid: 'macro', 'cell'")
