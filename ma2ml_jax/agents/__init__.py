"""Searchers with one ask/tell protocol (see `base`)."""

from __future__ import annotations

import ml_collections

from ma2ml_jax.agents.base import Actions, Searcher
from ma2ml_jax.agents.random import make_random_search
from ma2ml_jax.agents.repeats import (
    RepeatGuard,
    avoid_repeats,
    count_repeats,
    iteration_keys,
    known_rewards,
    pipeline_key,
)
from ma2ml_jax.errors import ConfigError, choices
from ma2ml_jax.spaces import PipelineSpace

__all__ = ["ALGORITHMS", "Actions", "MA2ML_SECTIONS", "REPEAT_AWARE", "RepeatGuard", "Searcher",
           "avoid_repeats", "count_repeats", "iteration_keys", "known_rewards",
           "make_random_search", "make_searcher", "pipeline_key"]

# `search.algorithm`: the searchers `make_searcher` builds.
ALGORITHMS = ("random", "tpe", "ma2ml", "ma2ml_paper", "ma2ml_onpolicy", "lite", "qlearning",
              "evolution", "local")
# Searchers whose ask is pure and whose tell takes any batch size (`repeats.RepeatGuard`).
REPEAT_AWARE = ("random", "ma2ml", "ma2ml_paper", "ma2ml_onpolicy", "lite", "evolution", "local")
# The config section each MA2ML searcher reads: `ma2ml` the screened default's, `ma2ml_paper`
# the paper's Algorithm 1 (agents.ma2ml.PAPER), shared by its on-policy ablation.
MA2ML_SECTIONS = {"ma2ml": "ma2ml", "ma2ml_paper": "ma2ml_paper",
                  "ma2ml_onpolicy": "ma2ml_paper"}


def make_searcher(config: ml_collections.ConfigDict, space: PipelineSpace) -> Searcher:
    """The searcher named by `config.search.algorithm`."""
    algorithm = config.search.algorithm
    if algorithm == "random":
        return make_random_search(space, config.search.pipelines)
    if algorithm in MA2ML_SECTIONS:
        from ma2ml_jax.agents.ma2ml import MA2MLConfig, make_ma2ml

        section = MA2ML_SECTIONS[algorithm]
        options = _options(config[section], MA2MLConfig, section)
        options["critic_hidden"] = tuple(options["critic_hidden"])
        options["on_policy"] = algorithm == "ma2ml_onpolicy"
        options = MA2MLConfig(**options)
        _checked(options.check, section)
        return _checked(make_ma2ml, space, config.search.pipelines, options)
    if algorithm == "lite":
        from ma2ml_jax.agents.lite import LiteConfig, make_lite

        options = _options(config.lite, LiteConfig, "lite")
        return _checked(make_lite, space, config.search.pipelines, LiteConfig(**options))
    if algorithm == "tpe":
        from ma2ml_jax.agents.tpe import make_tpe

        return make_tpe(space, config.search.pipelines,
                        repeat_rounds=config.search.repeat_rounds if config.search.avoid_repeats
                        else 0)
    if algorithm == "qlearning":
        from ma2ml_jax.agents.qlearning import QLearningConfig, make_qlearning

        options = _options(config.qlearning, QLearningConfig, "qlearning")
        return _checked(make_qlearning, space, config.search.pipelines, QLearningConfig(**options))
    if algorithm == "evolution":
        from ma2ml_jax.agents.evolution import EvolutionConfig, make_evolution

        options = _options(config.evolution, EvolutionConfig, "evolution")
        return _checked(make_evolution, space, config.search.pipelines, EvolutionConfig(**options))
    if algorithm == "local":
        from ma2ml_jax.agents.local_search import make_local_search

        return _checked(make_local_search, space, config.search.pipelines)
    raise ConfigError(f"search.algorithm={algorithm!r} is not one of {choices(ALGORITHMS)}")


def _options(section, cls, name: str) -> dict:
    unknown = sorted(set(section) - set(cls._fields))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]} is not a key of {name}; valid: "
                          f"{', '.join(cls._fields)}")
    return dict(section)


def _checked(factory, *args):
    try:
        return factory(*args)
    except ValueError as e:
        raise ConfigError(str(e)) from e
