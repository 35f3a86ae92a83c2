"""Searchers with one ask/tell protocol (see `base`)."""

from __future__ import annotations

import ml_collections

from ma2ml_jax.agents.base import Actions, Searcher
from ma2ml_jax.agents.random import make_random_search
from ma2ml_jax.config import ALGORITHMS
from ma2ml_jax.errors import ConfigError, choices
from ma2ml_jax.spaces import PipelineSpace

__all__ = ["Actions", "Searcher", "make_random_search", "make_searcher"]


def make_searcher(config: ml_collections.ConfigDict, space: PipelineSpace) -> Searcher:
    """The searcher named by `config.search.algorithm`."""
    algorithm = config.search.algorithm
    if algorithm == "random":
        return make_random_search(space, config.search.pipelines)
    if algorithm == "tpe":
        from ma2ml_jax.agents.tpe import make_tpe

        return make_tpe(space, config.search.pipelines)
    raise ConfigError(f"search.algorithm={algorithm!r} is not one of {choices(ALGORITHMS)}")
