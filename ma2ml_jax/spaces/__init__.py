"""Search spaces: each agent's action is an ordered list of categorical decisions.

`make_space(kind, **kwargs)` builds one from a config entry ``{kind, **arguments}``, and
`make_pipeline_space(config.spaces)` the whole {agent: Space}:

| kind    | factory                                          | the paper's use           |
|---------|--------------------------------------------------|---------------------------|
| augment | `augment_space(num_subpolicies, sample_pairing)` | AUG (AutoAugment)         |
| macro   | `macro_space(variant)`                           | NAS on ImageNet (FBNetV3) |
| cell    | `cell_space(num_blocks)`                         | NAS on CIFAR (NASNet)     |
| recipe  | `recipe_space(variant)`                          | HPO                       |
| layerwise | `layerwise_space(variant, layer)`              | one layer (Iranfar et al.) |
| choices | `choices_space(decisions)`                       | a user's own decisions    |

A layerwise space is one agent per layer of a fixed CNN: a pipeline is all of a variant's layers
(`layerwise_spaces_config`, `layerwise_pipeline_space`) and no other kind. A choices space is a
user's own {decision: [values]}, scored by an objective (`search.run(..., objective=fn)`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from ma2ml_jax.errors import ConfigError
from ma2ml_jax.spaces.augment import augment_space, to_policy
from ma2ml_jax.spaces.base import Decision, PipelineSpace, Space, numeric_levels
from ma2ml_jax.spaces.cell import CELL_OPS, CIFAR_CELL_LAYOUT, CellLayout, cell_space
from ma2ml_jax.spaces.choices import choices_pipeline_space, choices_space, choices_spaces_config
from ma2ml_jax.spaces.layerwise import (
    LayerSpace,
    layerwise_decisions,
    layerwise_pipeline_space,
    layerwise_space,
    layerwise_spaces_config,
)
from ma2ml_jax.spaces.macro import MacroSpace, macro_space
from ma2ml_jax.spaces.recipe import recipe_space, to_hparams

__all__ = [
    "CELL_OPS", "CIFAR_CELL_LAYOUT", "CellLayout", "Decision", "LayerSpace", "MacroSpace",
    "PipelineSpace", "SPACE_FACTORIES", "Space", "augment_space", "cell_space",
    "choices_pipeline_space", "choices_space", "choices_spaces_config",
    "layerwise_decisions", "layerwise_pipeline_space", "layerwise_space",
    "layerwise_spaces_config", "macro_space", "make_pipeline_space", "make_space",
    "numeric_levels", "recipe_space", "to_hparams", "to_policy",
]

SPACE_FACTORIES: dict[str, Callable[..., Space]] = {
    "augment": augment_space,
    "macro": macro_space,
    "cell": cell_space,
    "recipe": recipe_space,
    "layerwise": layerwise_space,
    "choices": choices_space,
}


def make_space(kind: str, **kwargs) -> Space:
    """Builds the space of `kind` with the factory's keyword arguments.

    Raises:
      ValueError: naming the valid kinds, arguments or variants when one is wrong.
    """
    if kind not in SPACE_FACTORIES:
        modules = sorted(k for k in SPACE_FACTORIES if k not in ("layerwise", "choices"))
        raise ValueError(f"unknown space kind {kind!r}; valid: {modules} (one module's agent), "
                         "'layerwise' (one agent per layer of a CNN: the whole pipeline), or "
                         "'choices' (your own decisions, scored by an objective)")
    factory = SPACE_FACTORIES[kind]
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"space kind {kind!r} takes no argument(s) {unknown}; "
                         f"valid: {sorted(params)}")
    missing = sorted(name for name, p in params.items()
                     if p.default is inspect.Parameter.empty and name not in kwargs)
    if missing:
        raise ValueError(f"space kind {kind!r} needs argument(s) {missing}")
    return factory(**kwargs)


# Agents are ordered as a pipeline runs: augmentation, architecture, recipe, then the others.
_PIPELINE_ORDER = {"augment": 0, "macro": 1, "cell": 1, "recipe": 2}


def make_pipeline_space(spaces_config: Mapping[str, Mapping[str, Any]]) -> PipelineSpace:
    """Builds {agent: Space} from `config.spaces` ({agent: {kind, **arguments}}).

    Agents are ordered as a pipeline runs (augmentation, architecture, recipe), not by name.

    Raises:
      ConfigError: naming the agent whose entry is wrong.
    """
    items = sorted(spaces_config.items(), key=lambda kv: _PIPELINE_ORDER.get(kv[1].get("kind"), 3))
    out = {}
    for agent, spec in items:
        spec = dict(spec)
        kind = spec.pop("kind", None)
        try:
            out[agent] = make_space(kind, **spec)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"spaces.{agent}: {e}") from e
    return PipelineSpace(out)
