"""Exactly-shaped NASNet network built from a decoded normal + reduction cell.

Structure (Zoph et al. 2018, in the DARTS formulation the paper's CIFAR setting shares):
  stem 3x3 conv -> `cells` cells (reduction cells at the 1-based positions `reduction_cells`,
  channels doubled there) -> global average pool -> dropout -> classifier.
A cell reads h_{k-2} and h_{k-1}, brings each to the cell's channels with ReLU-conv1x1-BN (a
factorized reduction when h_{k-2} is twice the spatial size), then runs its 5 blocks. Block b
applies op1 to input 1 and op2 to input 2 and combines them by addition, or by concatenation
followed by a ReLU-conv1x1-BN back to the cell's channels (so every hidden state has the same
width). The cell's output concatenates the blocks that no block of the cell reads, as in
NASNet. In a reduction cell the ops applied to the two cell inputs have stride 2.

Decoded architecture (`ma2ml_jax.spaces.cell`):
  {"normal": [{"inputs": [i1, i2], "ops": [o1, o2], "combine": "add" | "concat"}] * 5,
   "reduction": [...]}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from ma2ml_jax.models.layers import batch_norm, classifier_dropout, drop_path

NUM_CELL_INPUTS = 2


class Block(NamedTuple):
    inputs: tuple[int, int]
    ops: tuple[str, str]
    combine: str


class CellArch(NamedTuple):
    normal: tuple[Block, ...]
    reduction: tuple[Block, ...]

    @classmethod
    def from_config(cls, arch: Mapping[str, Any]) -> CellArch:
        def blocks(cell):
            return tuple(Block(tuple(int(i) for i in b["inputs"]), tuple(b["ops"]),
                               str(b["combine"])) for b in cell)

        return cls(blocks(arch["normal"]), blocks(arch["reduction"]))


def unused_blocks(blocks: tuple[Block, ...]) -> list[int]:
    """Blocks whose output no later block of the cell reads: concatenated into the cell output."""
    read = {i - NUM_CELL_INPUTS for b in blocks for i in b.inputs if i >= NUM_CELL_INPUTS}
    return [j for j in range(len(blocks)) if j not in read]



class ReLUConvBN(nn.Module):
    features: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    dilation: int = 1

    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(self.features, self.kernel, strides=self.stride,
                    kernel_dilation=self.dilation, use_bias=False)(nn.relu(x))
        return batch_norm(train)(x)


class FactorizedReduce(nn.Module):
    """Halves the spatial size with two offset stride-2 1x1 convolutions (DARTS)."""

    features: int

    @nn.compact
    def __call__(self, x, train):
        x = nn.relu(x)
        a = nn.Conv(self.features // 2, (1, 1), strides=2, use_bias=False)(x)
        b = nn.Conv(self.features - self.features // 2, (1, 1), strides=2, use_bias=False)(
            jnp.pad(x[:, 1:, 1:], ((0, 0), (0, 1), (0, 1), (0, 0))))
        return batch_norm(train)(jnp.concatenate([a, b], -1))


class SepConv(nn.Module):
    """(ReLU, depthwise kxk, pointwise 1x1, BN) twice; the first has the stride (DARTS).

    `depthwise_impl` "taps" computes the depthwise convolutions as shifted multiply-adds (same
    result and parameters; XLA's grouped convolution is a slow path on CPU, see
    `layers.depthwise_taps`).
    """

    features: int
    kernel: int
    stride: int
    depthwise_impl: str = "conv"

    @nn.compact
    def __call__(self, x, train):
        from ma2ml_jax.models.macro_masked import MaskedDepthwise

        for i, stride in enumerate((self.stride, 1)):
            c = x.shape[-1]
            x = MaskedDepthwise(c, self.kernel, stride, self.depthwise_impl,
                                name=f"depthwise{i}")(nn.relu(x), self.kernel)
            x = batch_norm(train, f"bn{i}")(nn.Conv(self.features, (1, 1), use_bias=False,
                                             name=f"pointwise{i}")(x))
        return x


class CellOp(nn.Module):
    """One of the 13 NASNet operations, with stride 1 or 2."""

    op: str
    features: int
    stride: int
    depthwise_impl: str = "conv"

    @nn.compact
    def __call__(self, x, train):
        s, c = self.stride, self.features
        op = self.op
        if op == "identity":
            return x if s == 1 else FactorizedReduce(c)(x, train)
        if op in ("conv_1x3_3x1", "conv_1x7_7x1"):
            k = 3 if op == "conv_1x3_3x1" else 7
            x = nn.Conv(c, (1, k), strides=(1, s), use_bias=False)(nn.relu(x))
            return batch_norm(train)(nn.Conv(c, (k, 1), strides=(s, 1), use_bias=False)(x))
        if op == "dil_conv_3x3":
            return ReLUConvBN(c, (3, 3), (s, s), dilation=2)(x, train)
        if op == "avg_pool_3x3":
            return nn.avg_pool(x, (3, 3), (s, s), padding="SAME", count_include_pad=False)
        if op.startswith("max_pool_"):
            k = int(op[-1])
            return nn.max_pool(x, (k, k), (s, s), padding="SAME")
        if op in ("conv_1x1", "conv_3x3"):
            k = int(op[-1])
            return ReLUConvBN(c, (k, k), (s, s))(x, train)
        if op.startswith("sep_conv_"):
            return SepConv(c, int(op[-1]), s, self.depthwise_impl)(x, train)
        raise ValueError(f"unknown cell op {op!r}")


class Cell(nn.Module):
    blocks: tuple[Block, ...]
    features: int
    reduction: bool
    reduce_prev: bool  # h_{k-2} has twice the spatial size of h_{k-1}
    depthwise_impl: str = "conv"

    @nn.compact
    def __call__(self, s0, s1, train, drop_path_rate=0.0):
        c = self.features
        s0 = FactorizedReduce(c)(s0, train) if self.reduce_prev else \
            ReLUConvBN(c, (1, 1))(s0, train)
        s1 = ReLUConvBN(c, (1, 1))(s1, train)
        states = [s0, s1]
        for b, block in enumerate(self.blocks):
            outs = []
            for j in range(2):
                i, op = block.inputs[j], block.ops[j]
                stride = 2 if self.reduction and i < NUM_CELL_INPUTS else 1
                h = CellOp(op, c, stride, self.depthwise_impl, name=f"block{b}_op{j}")(
                    states[i], train)
                if train and op != "identity":
                    h = drop_path(h, drop_path_rate, self.make_rng("dropout"))
                outs.append(h)
            if block.combine == "add":
                h = outs[0] + outs[1]
            else:
                h = ReLUConvBN(c, (1, 1), name=f"block{b}_concat")(
                    jnp.concatenate(outs, -1), train)
            states.append(h)
        return jnp.concatenate([states[NUM_CELL_INPUTS + j] for j in unused_blocks(self.blocks)],
                               -1)


class CellNet(nn.Module):
    """The network of one normal + reduction cell pair.

    Call: `logits = net.apply(variables, x, train, dropout=..., drop_path_rate=...)`, x float32
    [B, H, W, C] normalized.
    """

    arch: CellArch
    num_classes: int
    cells: int = 17
    reduction_cells: tuple[int, ...] = (6, 12)
    channels: int = 16
    stem_multiplier: int = 3
    depthwise_impl: str = "conv"  # "taps" on CPU (see SepConv)

    @nn.compact
    def __call__(self, x, train: bool = False, dropout=0.0, drop_path_rate=0.0):
        x = nn.Conv(self.channels * self.stem_multiplier, (3, 3), use_bias=False, name="stem")(x)
        x = batch_norm(train, "bn_stem")(x)
        s0 = s1 = x
        c, reduce_prev = self.channels, False
        for k in range(1, self.cells + 1):
            reduction = k in self.reduction_cells
            if reduction:
                c *= 2
            # Stochastic depth grows linearly with depth, as in the macro network.
            rate = drop_path_rate * (k - 1) / max(1, self.cells - 1)
            cell = Cell(self.arch.reduction if reduction else self.arch.normal, c, reduction,
                        reduce_prev, self.depthwise_impl, name=f"cell{k}")
            s0, s1 = s1, cell(s0, s1, train, rate)
            reduce_prev = reduction
        x = s1.mean(axis=(1, 2))
        if train:
            x = classifier_dropout(x, dropout, self.make_rng("dropout"))
        return nn.Dense(self.num_classes, name="classifier")(x)
