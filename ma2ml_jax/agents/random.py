"""Random search: every agent samples its action uniformly (Bergstra and Bengio, 2012)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ma2ml_jax.agents.base import Searcher
from ma2ml_jax.spaces import PipelineSpace


class RandomSearchState(NamedTuple):
    iteration: jax.Array  # int32[]: number of completed ask/tell rounds


def make_random_search(space: PipelineSpace, num_pipelines: int) -> Searcher:
    """Random search over `space`, `num_pipelines` pipelines per iteration."""
    if num_pipelines < 1:
        raise ValueError(f"num_pipelines must be >= 1, got {num_pipelines}")

    def init(key):
        del key
        return RandomSearchState(jnp.zeros((), jnp.int32))

    @jax.jit
    def ask(state, key):
        return space.sample(key, num_pipelines), state

    def tell(state, actions, rewards):
        del actions
        rewards = jnp.asarray(rewards, jnp.float32)
        return state._replace(iteration=state.iteration + 1), {"mean_reward": rewards.mean()}

    return Searcher(init, ask, tell)
