"""The searcher protocol: every search algorithm is a triple of pure functions (ask/tell).

    state = searcher.init(key)                               # a pytree
    actions, state = searcher.ask(state, key)                # {agent: int32[P, n_decisions]}
    state, metrics = searcher.tell(state, actions, rewards)  # rewards: float32[P]

The driver, checkpoints and benchmarks treat every searcher alike (in the spirit of optax and
evosax). An external objective can replace network training: see `ma2ml_jax.search.run`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

Actions = dict[str, jax.Array]


class Searcher(NamedTuple):
    """A search algorithm as pure functions over a state pytree."""

    init: Callable[[jax.Array], Any]
    ask: Callable[[Any, jax.Array], tuple[Actions, Any]]
    tell: Callable[[Any, Actions, jax.Array], tuple[Any, dict[str, jax.Array]]]
