"""The CNN of a layerwise pipeline (Iranfar et al.): a fixed layer graph, searched hyper-parameters.

`LayerwiseArch.from_pipeline(spec, pipeline)` turns the decoded actions of every layer agent into
a hashable architecture; `plan(arch, image_shape)` infers every layer's shapes without building
anything (the network and `cost.layerwise_cost` both follow it); `LayerwiseNet` is the
exactly-shaped flax network (one compiled program per architecture, like `MacroNet`).

Layers: a convolution is conv (SAME padding, no bias) -> BatchNorm -> ReLU; a pooling of size s is
a max-pool of window s and stride s (VALID, as Keras' MaxPooling2D); a dense layer flattens its
input, then Dense -> ReLU -> dropout (the recipe's rate). A layer with several inputs concatenates
them on the channel axis, the larger ones first resized to the smallest spatial size. The output
layer (Dense to the classes) is not searched and flattens its input (VGG's flatten).

Invalid combinations are clamped, not failed: strides and poolings could shrink the feature map
below one pixel (five poolings of size 3 on 32x32 images: 32 -> 10 -> 3 -> 1 -> 0), so a pooling
window larger than its input is clamped to the input (output 1x1) and a strided convolution of a
1x1 map stays 1x1 (SAME padding). `plan` reports every clamped layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ma2ml_jax.models.layers import batch_norm, classifier_dropout
from ma2ml_jax.spaces.layerwise import LayerwiseSpec, agent_name


class LayerArch(NamedTuple):
    """One layer with its chosen values.

    Attributes:
      type: "conv", "pool" or "dense".
      features: output channels (conv) or units (dense); 0 for a pooling.
      kernel: kernel size (conv) or pool size; 0 for dense.
      stride: conv stride or pool size; 0 for dense.
      inputs: indices of the layers it takes (); the image.
    """

    type: str
    features: int
    kernel: int
    stride: int
    inputs: tuple[int, ...]


class LayerwiseArch(NamedTuple):
    """A hashable layerwise architecture (a flax module attribute must be hashable)."""

    layers: tuple[LayerArch, ...]

    @classmethod
    def from_pipeline(cls, spec: LayerwiseSpec, pipeline: Mapping[str, Any]) -> LayerwiseArch:
        """From the decoded pipeline {"layer00": {"type": "conv", ...}, ...} of `spec`."""
        layers = []
        for i, layer in enumerate(spec.layers):
            cfg = pipeline[agent_name(i)]
            if cfg["type"] != layer.type:
                raise ValueError(f"{agent_name(i)} is a {layer.type} layer, got {cfg!r}")
            if layer.type == "conv":
                layers.append(LayerArch("conv", int(cfg["kernels"]), int(cfg["kernel_size"]),
                                        int(cfg["stride"]), layer.inputs))
            elif layer.type == "pool":
                layers.append(LayerArch("pool", 0, int(cfg["size"]), int(cfg["size"]),
                                        layer.inputs))
            else:
                layers.append(LayerArch("dense", int(cfg["units"]), 0, 0, layer.inputs))
        return cls(tuple(layers))


class LayerShape(NamedTuple):
    """Shapes around one layer: input (after merging its inputs) and output.

    For a dense layer (and anything after one) h = w = 0 and c is the flat feature count.
    `window` is the pooling window actually used; `clamped` is True where a pooling window was
    cut to its input or a convolution's stride had no pixels left to skip.
    """

    in_h: int
    in_w: int
    in_c: int
    out_h: int
    out_w: int
    out_c: int
    window: tuple[int, int]
    clamped: bool


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def plan(arch: LayerwiseArch, image_shape: tuple[int, int, int]) -> tuple[LayerShape, ...]:
    """Every layer's input and output shapes on one image of `image_shape` (H, W, C)."""
    outs: list[tuple[int, int, int]] = []
    shapes = []
    for layer in arch.layers:
        if not layer.inputs:
            h, w, c = image_shape
        else:
            ins = [outs[j] for j in layer.inputs]
            if any(s[0] == 0 for s in ins):  # a flat input: every input is flattened
                h, w, c = 0, 0, sum(s[2] if s[0] == 0 else s[0] * s[1] * s[2] for s in ins)
            else:
                h, w, c = min(s[0] for s in ins), min(s[1] for s in ins), sum(s[2] for s in ins)
        window, clamped = (0, 0), False
        if layer.type == "conv":
            oh, ow, oc = _ceil_div(h, layer.stride), _ceil_div(w, layer.stride), layer.features
            clamped = layer.stride > 1 and (h == 1 or w == 1)
        elif layer.type == "pool":
            window = (min(layer.kernel, h), min(layer.kernel, w))
            oh, ow, oc = h // window[0], w // window[1], c
            clamped = window != (layer.kernel, layer.kernel)
        else:
            flat = c if h == 0 else h * w * c
            h, w, c = 0, 0, flat
            oh, ow, oc = 0, 0, layer.features
        shapes.append(LayerShape(h, w, c, oh, ow, oc, window, clamped))
        outs.append((oh, ow, oc))
    return tuple(shapes)


def clamped_layers(arch: LayerwiseArch, image_shape: tuple[int, int, int]) -> list[int]:
    """Indices of the layers whose pooling window or stride `plan` clamped."""
    return [i for i, s in enumerate(plan(arch, image_shape)) if s.clamped]


def _merge(xs: list[jax.Array]) -> jax.Array:
    """Concatenates layer outputs on the channel axis (resized to the smallest map).

    If any input is flat (a dense layer's), every input is flattened first.
    """
    if len(xs) == 1:
        return xs[0]
    if any(x.ndim == 2 for x in xs):
        return jnp.concatenate([x.reshape(x.shape[0], -1) for x in xs], axis=-1)
    h, w = min(x.shape[1] for x in xs), min(x.shape[2] for x in xs)
    xs = [x if x.shape[1:3] == (h, w) else
          jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), "linear") for x in xs]
    return jnp.concatenate(xs, axis=-1)


class LayerwiseNet(nn.Module):
    """The network of one layerwise architecture.

    Call: `logits = net.apply(variables, x, train, dropout, drop_path_rate)` with x float32
    [B, H, W, C] (normalized) -> float32[B, num_classes]. `drop_path_rate` is accepted for the
    trainer's common signature and unused (there are no residual branches to drop).
    """

    arch: LayerwiseArch
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False, dropout=0.0, drop_path_rate=0.0):
        del drop_path_rate
        shapes = plan(self.arch, tuple(x.shape[1:]))
        outs: list[jax.Array] = []
        for i, (layer, shape) in enumerate(zip(self.arch.layers, shapes)):
            h = x if not layer.inputs else _merge([outs[j] for j in layer.inputs])
            if layer.type == "conv":
                h = nn.Conv(layer.features, (layer.kernel, layer.kernel), strides=layer.stride,
                            padding="SAME", use_bias=False, name=f"conv{i}")(h)
                h = batch_norm(train, f"bn{i}")(h)
                h = nn.relu(h)
            elif layer.type == "pool":
                h = nn.max_pool(h, shape.window, strides=shape.window, padding="VALID")
            else:
                h = nn.relu(nn.Dense(layer.features, name=f"dense{i}")(h.reshape(h.shape[0], -1)))
                if train:
                    h = classifier_dropout(h, dropout, self.make_rng("dropout"))
            outs.append(h)
        h = outs[-1]
        return nn.Dense(self.num_classes, name="classifier")(h.reshape(h.shape[0], -1))
