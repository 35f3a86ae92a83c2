"""Regularized evolution (Real, Aggarwal, Huang and Le, AAAI 2019, Algorithm 1), batched.

The population is the newest `population` pipelines told, whatever their reward: a new member
pushes out the oldest (ageing, the "regularized" of the title), not the worst. Until
`population` pipelines have been told, `ask` draws uniform samples (the paper's random
initialization). Afterwards each of the P asked pipelines is the child of its own tournament:
`tournament` members drawn uniformly with replacement (as in the paper's reference code, which
draws with `random.choice`), the best of them mutated in exactly one decision (chosen uniformly
over all decisions of all agents) to a different value chosen uniformly. The P tournaments of a
batch read the same population, as the paper's asynchronous workers do.

`tell` takes any batch size (the driver appends replaced repeats with their known rewards) and
adds every told pipeline in order; a non-finite reward counts as -inf, the worst. The population
is a ring buffer: the j-th pipeline told lives in slot j mod N, so the oldest is overwritten.
Defaults (30, 10) are NASLib's for this method.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ma2ml_jax.agents.base import Searcher
from ma2ml_jax.agents.neighbourhood import FlatSpace
from ma2ml_jax.agents.normalize import pad_batch
from ma2ml_jax.spaces import PipelineSpace


class EvolutionConfig(NamedTuple):
    """Hyper-parameters of regularized evolution (config keys `evolution.*`; NASLib's defaults)."""

    population: int = 30  # N: the newest N told pipelines; uniform samples until it is full
    tournament: int = 10  # S: members drawn (with replacement) per tournament

    def check(self) -> None:
        if self.population < 1:
            raise ValueError(f"evolution.population={self.population} must be >= 1")
        if not 1 <= self.tournament <= self.population:
            raise ValueError(f"evolution.tournament={self.tournament} must be in "
                             f"[1, evolution.population={self.population}]")


class EvolutionState(NamedTuple):
    members: jax.Array  # int32[N, D]: flat pipelines; slot j mod N holds the j-th told
    rewards: jax.Array  # float32[N]: their rewards (-inf: non-finite, or a slot not yet filled)
    told: jax.Array  # int32[]: pipelines told so far; the population is full once told >= N


def make_evolution(space: PipelineSpace, num_pipelines: int,
                   config: EvolutionConfig | None = None) -> Searcher:
    """Regularized evolution over `space`, `num_pipelines` children per iteration."""
    config = config or EvolutionConfig()
    config.check()
    if num_pipelines < 1:
        raise ValueError(f"num_pipelines must be >= 1, got {num_pipelines}")
    flat = FlatSpace(space)
    n = config.population

    def init(key):
        del key
        # Each field its own buffer: a state donated to a jitted function must not alias.
        return EvolutionState(jnp.zeros((n, flat.num_decisions), jnp.int32),
                              jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((), jnp.int32))

    @jax.jit
    def ask(state, key):
        k_uniform, k_contestants, k_mutate = jax.random.split(key, 3)
        uniform = space.sample(k_uniform, num_pipelines)
        contestants = jax.random.randint(k_contestants, (num_pipelines, config.tournament), 0, n)
        best = jnp.argmax(state.rewards[contestants], axis=1)  # ties: the first drawn
        parents = state.members[contestants[jnp.arange(num_pipelines), best]]
        children = flat.unflatten(jax.vmap(flat.mutate)(
            jax.random.split(k_mutate, num_pipelines), parents))
        full = state.told >= n
        return {a: jnp.where(full, children[a], uniform[a]) for a in flat.agents}, state

    @jax.jit
    def _tell(state, actions, rewards, valid):
        x = flat.flatten(actions)  # [B, D]
        finite = valid & jnp.isfinite(rewards)
        rewards = jnp.where(finite, rewards, -jnp.inf)
        told = valid.sum(dtype=jnp.int32)
        rank = jnp.cumsum(valid, dtype=jnp.int32) - 1  # order among the told rows
        # Only the newest N of a batch survive it; their slots are distinct (no scatter race).
        keep = valid & (rank >= told - n)
        slot = jnp.where(keep, (state.told + rank) % n, n)
        new = EvolutionState(state.members.at[slot].set(x, mode="drop"),
                             state.rewards.at[slot].set(rewards, mode="drop"),
                             state.told + told)
        mean = jnp.where(finite, rewards, 0.0).sum() / jnp.maximum(finite.sum(), 1)
        return new, {"mean_reward": mean, "population_best": new.rewards.max()}

    def tell(state, actions, rewards):
        """Any batch size (the driver appends replaced repeats): padded to P or 2P rows."""
        return _tell(state, *pad_batch({a: actions[a] for a in flat.agents}, rewards,
                                       num_pipelines))

    return Searcher(init, ask, tell)
