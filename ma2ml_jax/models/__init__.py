"""Proxy networks built from a decoded architecture."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from ma2ml_jax.models.layers import default_depthwise_impl
from ma2ml_jax.models.layerwise_net import LayerwiseArch, LayerwiseNet
from ma2ml_jax.models.macro_net import MacroArch, MacroNet

__all__ = ["LayerwiseArch", "LayerwiseNet", "MacroArch", "MacroNet", "make_network",
           "make_network_for"]


def make_network(kind: str, arch: Mapping[str, Any], num_classes: int, model_config) -> nn.Module:
    """The exactly-shaped network of a decoded architecture of space `kind` ('macro' or 'cell';
    'layerwise' with a `LayerwiseArch`).
    """
    if kind == "layerwise":
        return LayerwiseNet(arch, num_classes)
    if kind == "macro":
        return MacroNet(MacroArch.from_config(arch), num_classes, default_depthwise_impl())
    if kind == "cell":
        from ma2ml_jax.models import cell_net

        return cell_net.CellNet(cell_net.CellArch.from_config(arch), num_classes,
                                cells=model_config.cells,
                                reduction_cells=tuple(model_config.reduction_cells),
                                channels=model_config.cell_channels,
                                depthwise_impl=default_depthwise_impl())
    raise ValueError(f"no network for space kind {kind!r}; valid: 'macro', 'cell'")


def make_network_for(kind: str, space, arch: Mapping[str, Any], num_classes: int, model_config,
                     masked: bool):
    """(network, architecture arrays) for a decoded architecture of `space`.

    masked=True: the space's max-size network, shared by all its architectures of one resolution,
    and the architecture as arrays (the network's `arch` argument). masked=False:
    the exactly-shaped network and None.
    """
    if masked and kind == "macro":
        import jax.numpy as jnp

        from ma2ml_jax.models import macro_masked

        net = macro_masked.MaskedMacroNet(macro_masked.MacroBounds.from_space(space), num_classes,
                                          int(arch["resolution"]), default_depthwise_impl())
        arrays = macro_masked.macro_arrays(arch)
        return net, type(arrays)(*(jnp.asarray(a) for a in arrays))
    if masked and kind == "cell":
        from ma2ml_jax.models import cell_masked

        # XLA's depthwise convolution even on CPU: with "taps" every separable branch of every
        # slot becomes 2 x 49 slices (7x7 superkernels) in a program already slow to compile;
        # the masked cell network serves accelerators (on CPU "auto" trains exact networks,
        # `evaluate.resolve_network`).
        arrays = cell_masked.cell_arrays(arch)
        net = cell_masked.MaskedCellNet(
            num_classes, cells=model_config.cells,
            reduction_cells=tuple(model_config.reduction_cells),
            channels=model_config.cell_channels, num_blocks=int(arrays.inputs.shape[1]),
            depthwise_impl="conv")
        return net, arrays
    return make_network(kind, arch, num_classes, model_config), None
