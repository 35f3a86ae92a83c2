"""Per-layer CNN hyper-parameters: Iranfar et al.'s search space (IEEE TCAD, Sec. V-A/B, Table III).

Given a CNN whose layers and connections are fixed, every layer is one agent ("layer00",
"layer01", ... in layer order) whose action is ONE tuple of that layer's hyper-parameters, chosen
among all their combinations (Sec. V-B, A_conv):

| layer | tuple                                     | decoded config keys                     |
|-------|-------------------------------------------|-----------------------------------------|
| conv  | (number of kernels, kernel size, stride)  | type="conv", kernels, kernel_size, stride |
| pool  | (size,)                                   | type="pool", size                       |
| dense | (output dimension,)                       | type="dense", units                     |

A pool of size s has window s and stride s. The output layer (softmax over the classes) is not
searched. A pool's or dense layer's decision is `ordered` (levels of one number, when listed in
monotonic order); a convolution's is not (its tuples combine three). Each layer lists the layers
it takes as input (`Layer.inputs`; empty: the image), so a variant is a general layer graph (Sec.
VI-D: skip connections, Inception-like branches); several inputs are concatenated on the channel
axis (`models.layerwise_net`).

Variants:

* ``"vgg16"``: VGG-16 as the paper uses it on CIFAR-100 (Sec. VII): 13 convolutions, 5 poolings
  and ONE dense layer before the output, with Table III's values: kernels {16, 32, 64, 128, 256},
  kernel size {3, 5}, stride {1, 2} (20 tuples), pool {2, 3}, dense {128, ..., 4096}. 19 agents;
  the largest Q-table is 20 x 20, the paper's 400 exploration episodes (Sec. VIII-D).
* ``"vgg_small"``: a CIFAR-scale VGG-like net that trains on a CPU: conv-pool x 3 and a dense
  layer, kernels {16, 32, 64}, kernel size {3, 5}, stride {1, 2} (12 tuples), pool {2, 3},
  dense {64, 128, 256}. 7 agents; the largest Q-table is 12 x 2.
* ``"branch_tiny"``: a small branching graph (layer 0 feeds layers 1 and 2, layer 3 is fed by
  both, Fig. 8a and 8b), for tests and as an example of a non-chain variant.

In a config a layerwise space is the whole pipeline, one entry per layer
(`layerwise_spaces_config(variant)`); `layerwise_pipeline_space` builds the same `PipelineSpace`
directly, and `layerwise_decisions(variant)` gives each agent's decision sizes (a synthetic
objective on the same space).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ma2ml_jax.spaces.base import Decision, PipelineSpace, Space, numeric_levels

LAYER_TYPES = ("conv", "pool", "dense")
# The decoded keys of each layer type, in tuple order.
FIELDS = {"conv": ("kernels", "kernel_size", "stride"), "pool": ("size",), "dense": ("units",)}
SPACE_NAME = "layerwise"


class Layer(NamedTuple):
    """One searched layer.

    Attributes:
      type: "conv", "pool" or "dense".
      choices: the action set, tuples in `FIELDS[type]` order.
      inputs: indices of the earlier layers it takes (concatenated); () is the input image.
    """

    type: str
    choices: tuple[tuple[int, ...], ...]
    inputs: tuple[int, ...]


class LayerwiseSpec(NamedTuple):
    """A CNN's layer graph with every layer's action set."""

    name: str
    layers: tuple[Layer, ...]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def edges(self) -> tuple[tuple[int, int], ...]:
        """(u, v) for every connection u -> v between searched layers (u < v)."""
        return tuple((u, v) for v, layer in enumerate(self.layers) for u in layer.inputs)


def conv(kernels: Sequence[int], kernel_sizes: Sequence[int], strides: Sequence[int],
         inputs: tuple[int, ...]) -> Layer:
    """A convolution whose action set is every (kernels, kernel size, stride) combination."""
    return Layer("conv", tuple(itertools.product(kernels, kernel_sizes, strides)), inputs)


def pool(sizes: Sequence[int], inputs: tuple[int, ...]) -> Layer:
    return Layer("pool", tuple((s,) for s in sizes), inputs)


def dense(units: Sequence[int], inputs: tuple[int, ...]) -> Layer:
    return Layer("dense", tuple((u,) for u in units), inputs)


def chain(name: str, layers: Sequence[tuple[str, tuple]]) -> LayerwiseSpec:
    """A plain chain of (type, value sets) layers, each fed by the previous one."""
    make = {"conv": conv, "pool": pool, "dense": dense}
    return make_spec(name, [make[t](*values, inputs=(i - 1,) if i else ())
                            for i, (t, values) in enumerate(layers)])


def make_spec(name: str, layers: Sequence[Layer]) -> LayerwiseSpec:
    """Checks a layer graph and returns it as a spec.

    Raises:
      ValueError: an unknown layer type, an empty or repeated action set, an input that is not an
        earlier layer, a layer other than the last that feeds nothing, or a convolution or pooling
        fed by a dense layer.
    """
    layers = tuple(Layer(layer.type, tuple(tuple(int(v) for v in c) for c in layer.choices),
                         tuple(int(i) for i in layer.inputs)) for layer in layers)
    if not layers:
        raise ValueError(f"layerwise spec {name!r} has no layers")
    fed = set()
    for i, layer in enumerate(layers):
        where = f"layerwise spec {name!r}, layer {i}"
        if layer.type not in LAYER_TYPES:
            raise ValueError(f"{where}: unknown type {layer.type!r}; valid: {LAYER_TYPES}")
        if not layer.choices or any(len(c) != len(FIELDS[layer.type]) for c in layer.choices):
            raise ValueError(f"{where}: needs tuples of {FIELDS[layer.type]}")
        if any(v < 1 for c in layer.choices for v in c):
            raise ValueError(f"{where}: values must be >= 1")
        if len(set(layer.inputs)) != len(layer.inputs) or any(not 0 <= j < i
                                                               for j in layer.inputs):
            raise ValueError(f"{where}: inputs {layer.inputs} must be distinct earlier layers")
        if i and not layer.inputs:
            raise ValueError(f"{where}: only layer 0 takes the image; give its inputs")
        if layer.type != "dense" and any(layers[j].type == "dense" for j in layer.inputs):
            raise ValueError(f"{where}: a {layer.type} layer cannot follow a dense layer")
        fed.update(layer.inputs)
    dangling = [i for i in range(len(layers) - 1) if i not in fed]
    if dangling:
        raise ValueError(f"layerwise spec {name!r}: layers {dangling} feed no later layer")
    return LayerwiseSpec(name, layers)


_TABLE3_VGG16 = dict(kernels=(16, 32, 64, 128, 256), kernel_sizes=(3, 5), strides=(1, 2),
                     pool=(2, 3), dense=(128, 256, 512, 1024, 2048, 4096))


def _vgg16() -> LayerwiseSpec:
    t = _TABLE3_VGG16
    c = ("conv", (t["kernels"], t["kernel_sizes"], t["strides"]))
    p = ("pool", (t["pool"],))
    # VGG-16 blocks: 2, 2, 3, 3, 3 convolutions, each block closed by a pooling; one dense layer
    # before the output (the paper's CIFAR-100 VGG-16, Sec. VII).
    layers = [c, c, p, c, c, p, c, c, c, p, c, c, c, p, c, c, c, p, ("dense", (t["dense"],))]
    return chain("vgg16", layers)


def _vgg_small() -> LayerwiseSpec:
    c = ("conv", ((16, 32, 64), (3, 5), (1, 2)))
    p = ("pool", ((2, 3),))
    return chain("vgg_small", [c, p, c, p, c, p, ("dense", ((64, 128, 256),))])


def _branch_tiny() -> LayerwiseSpec:
    small = ((8, 16), (3,), (1, 2))
    return make_spec("branch_tiny", [
        conv(*small, inputs=()),  # 0 feeds 1 and 2 (Fig. 8a)
        conv(*small, inputs=(0,)),
        conv((8, 16), (3, 5), (1,), inputs=(0,)),
        conv(*small, inputs=(1, 2)),  # 3 is fed by 1 and 2 (Fig. 8b)
        pool((2, 3), inputs=(3,)),
        dense((16, 32), inputs=(4,)),
    ])


VARIANTS = {"vgg16": _vgg16, "vgg_small": _vgg_small, "branch_tiny": _branch_tiny}


def get_spec(variant: str | LayerwiseSpec) -> LayerwiseSpec:
    """The spec of a registered variant (a spec is returned as is)."""
    if isinstance(variant, LayerwiseSpec):
        return variant
    if variant not in VARIANTS:
        raise ValueError(f"unknown layerwise variant {variant!r}; valid: {sorted(VARIANTS)}")
    return VARIANTS[variant]()


def agent_name(layer: int) -> str:
    """The agent of layer `layer`: "layer00", "layer01", ... (sorted names are layer order)."""
    return f"layer{layer:02d}"


class LayerSpace(Space):
    """One layer's agent: one decision over the layer's enumerated tuples.

    Attributes:
      spec: the whole layer graph (shared by every agent of the pipeline).
      layer: this layer's index in `spec.layers`.
    """

    def __init__(self, spec: LayerwiseSpec, layer: int):
        if not 0 <= layer < spec.num_layers:
            raise ValueError(f"layer={layer} is not a layer of {spec.name!r} (0 .. "
                             f"{spec.num_layers - 1})")
        self.spec, self.layer = spec, layer
        kind = spec.layers[layer]
        # A pool's sizes and a dense layer's widths are levels of one number (ordered when
        # listed in monotonic order); a convolution's tuples combine three.
        ordered = len(FIELDS[kind.type]) == 1 and numeric_levels([c[0] for c in kind.choices])
        super().__init__(SPACE_NAME, [Decision(kind.type, kind.choices, ordered=ordered)])

    @property
    def variant(self) -> str:
        return self.spec.name

    @property
    def layer_spec(self) -> Layer:
        return self.spec.layers[self.layer]

    def decode(self, tokens) -> dict[str, Any]:
        """int[1] -> {"type": ..., then the tuple's values by name (`FIELDS`)}."""
        tokens = self.validate(tokens)
        if tokens.ndim != 1:
            raise ValueError(f"{self.name}: decode takes one action, got shape {tokens.shape}")
        kind = self.layer_spec
        return {"type": kind.type, **dict(zip(FIELDS[kind.type], kind.choices[int(tokens[0])]))}

    def encode(self, config: Mapping[str, Any]) -> np.ndarray:
        """The exact inverse of `decode`."""
        kind = self.layer_spec
        try:
            if config["type"] != kind.type:
                raise ValueError(f"layer {self.layer} is a {kind.type}, got a {config['type']}")
            values = tuple(int(config[f]) for f in FIELDS[kind.type])
        except (KeyError, TypeError):
            raise ValueError(f"layer {self.layer}: a {kind.type} config needs "
                             f"{('type',) + FIELDS[kind.type]}, got {config!r}") from None
        if values not in kind.choices:
            raise ValueError(f"layer {self.layer}: {values} is not one of {list(kind.choices)}")
        return np.array([kind.choices.index(values)], np.int32)

    def __repr__(self) -> str:
        return (f"LayerSpace({self.variant!r}, layer={self.layer}, {self.layer_spec.type}, "
                f"{self.decisions[0].size} tuples)")


def layerwise_space(variant: str, layer: int) -> LayerSpace:
    """The agent space of layer `layer` of a variant (the "layerwise" space kind)."""
    return LayerSpace(get_spec(variant), layer)


def layerwise_pipeline_space(variant: str | LayerwiseSpec) -> PipelineSpace:
    """Every layer's agent, in layer order: {"layer00": LayerSpace, ...}."""
    spec = get_spec(variant)
    return PipelineSpace({agent_name(i): LayerSpace(spec, i) for i in range(spec.num_layers)})


def layerwise_spaces_config(variant: str):
    """The `config.spaces` entries of a variant: {"layer00": {kind, variant, layer}, ...}."""
    import ml_collections

    spec = get_spec(variant)
    return ml_collections.ConfigDict({
        agent_name(i): {"kind": SPACE_NAME, "variant": variant, "layer": i}
        for i in range(spec.num_layers)})


def layerwise_decisions(variant: str | LayerwiseSpec) -> dict[str, tuple[int]]:
    """{agent: (number of tuples,)}: each agent's decision sizes (one decision per layer)."""
    spec = get_spec(variant)
    return {agent_name(i): (len(layer.choices),) for i, layer in enumerate(spec.layers)}


def is_layerwise(space: PipelineSpace) -> bool:
    """Whether every agent of `space` is a layer of one layerwise spec."""
    return all(isinstance(s, LayerSpace) for s in space.spaces.values())


def spec_of(space: PipelineSpace) -> LayerwiseSpec:
    """The layer graph of a layerwise pipeline space; checks that it has every layer once."""
    if not is_layerwise(space):
        raise ValueError("not a layerwise pipeline space: every agent must be a 'layerwise' space")
    specs = {s.spec for s in space.spaces.values()}
    if len(specs) != 1:
        raise ValueError("the layer agents come from different layerwise variants")
    spec = specs.pop()
    layers = sorted(s.layer for s in space.spaces.values())
    if layers != list(range(spec.num_layers)):
        raise ValueError(f"variant {spec.name!r} has layers 0 .. {spec.num_layers - 1}, the "
                         f"space has {layers}")
    return spec


def layer_agents(space: PipelineSpace) -> list[str]:
    """The agents of a layerwise pipeline space, in layer order."""
    return sorted(space.agents, key=lambda a: space[a].layer)
