"""Proxy networks built from a decoded architecture."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from ma2ml_jax.models.macro_net import MacroArch, MacroNet

__all__ = ["MacroArch", "MacroNet", "make_network"]


def make_network(kind: str, arch: Mapping[str, Any], num_classes: int, model_config) -> nn.Module:
    """The exactly-shaped network of a decoded architecture of space `kind` ('macro' or 'cell')."""
    if kind == "macro":
        return MacroNet(MacroArch.from_config(arch), num_classes)
    if kind == "cell":
        from ma2ml_jax.models import cell_net

        return cell_net.CellNet(cell_net.CellArch.from_config(arch), num_classes,
                                cells=model_config.cells,
                                reduction_cells=tuple(model_config.reduction_cells),
                                channels=model_config.cell_channels)
    raise ValueError(f"no network for space kind {kind!r}; valid: 'macro', 'cell'")
