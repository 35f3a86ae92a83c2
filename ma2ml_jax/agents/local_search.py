"""Local search: batched hill climbing over one-decision neighbours, with random restarts.

The local search of White, Nolen, Zela and Hutter (UAI 2021, "Exploring the Loss Landscape in
Neural Architecture Search"), strong on NAS benchmarks despite its simplicity, asked P pipelines
at a time. The state is an incumbent pipeline, its reward and a mask of its K one-decision
neighbours already told (`agents.neighbourhood` numbers them).

* No incumbent (at the start, after a restart): `ask` draws P uniform samples.
* Otherwise `ask` returns P distinct untried neighbours of the incumbent in an order drawn with
  the key (uniform samples fill the batch when fewer are left). It leaves the state as it is.
* `tell` (any batch size): the best told pipeline becomes the incumbent if it beats the
  incumbent's reward (strictly; any told pipeline beats "no incumbent") and the mask restarts.
  Told pipelines that are neighbours of the incumbent, after the move, are marked tried; so is
  the old incumbent, a neighbour of the new one when the move came from its neighbours (it is
  known, so it is not asked again). If the incumbent stands and every neighbour is tried, it is a
  local optimum: restart (no incumbent; the next batch's best becomes the incumbent).

It remembers the newest `memory` told pipelines (hashes and rewards): a neighbour told under an
earlier incumbent counts as tried (no evaluation is spent on it again), and a remembered
neighbour better than the incumbent (possible after a restart) becomes the incumbent.

The paper's local search evaluates the whole neighbourhood and then moves to its best; batched,
this one moves as soon as a batch holds a better pipeline (to the batch's best), which spends
fewer evaluations on large neighbourhoods. Non-finite rewards count as -inf, the worst. The
driver keeps the best pipeline ever told in its trial log, so a restart loses nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ma2ml_jax.agents.base import Searcher
from ma2ml_jax.agents.neighbourhood import FlatSpace
from ma2ml_jax.agents.normalize import pad_batch
from ma2ml_jax.agents.screening import make_hash
from ma2ml_jax.spaces import PipelineSpace


class LocalSearchState(NamedTuple):
    incumbent: jax.Array  # int32[D]: the flat incumbent pipeline (meaningless without one)
    incumbent_reward: jax.Array  # float32[]: its reward, -inf without an incumbent
    has_incumbent: jax.Array  # bool[]
    tried: jax.Array  # bool[K]: the incumbent's neighbours already told
    restarts: jax.Array  # int32[]: local optima reached so far
    seen: jax.Array  # uint32[memory, 2]: hashes of the told pipelines (a ring of the newest)
    seen_reward: jax.Array  # float32[memory]: their rewards
    told: jax.Array  # int32[]: pipelines told so far


def make_local_search(space: PipelineSpace, num_pipelines: int, memory: int = 4096
                      ) -> Searcher:
    """Local search over `space`, `num_pipelines` pipelines per iteration; it remembers the
    newest `memory` told pipelines, so a neighbour told before counts as tried (no evaluation is
    spent on it when the incumbent moves next to it).
    """
    if num_pipelines < 1:
        raise ValueError(f"num_pipelines must be >= 1, got {num_pipelines}")
    if memory < 1:
        raise ValueError(f"memory must be >= 1, got {memory}")
    flat = FlatSpace(space)
    k_all = flat.num_neighbours
    m = min(num_pipelines, k_all)  # neighbours a batch can hold
    pipeline_hash = make_hash(space)

    def init(key):
        del key
        # Each field its own buffer: a state donated to a jitted function must not alias.
        return LocalSearchState(jnp.zeros((flat.num_decisions,), jnp.int32),
                                jnp.full((), -jnp.inf, jnp.float32), jnp.zeros((), jnp.bool_),
                                jnp.zeros((k_all,), jnp.bool_), jnp.zeros((), jnp.int32),
                                jnp.zeros((memory, 2), jnp.uint32),
                                jnp.full((memory,), -jnp.inf, jnp.float32),
                                jnp.zeros((), jnp.int32))

    def remember(state, x, rewards, valid):
        """The told rows written into the ring: (seen, seen_reward, told)."""
        h = jnp.stack(pipeline_hash(flat.unflatten(x)), -1)  # [B, 2]
        slot = jnp.where(valid, (state.told + jnp.cumsum(valid) - 1) % memory, memory)
        return (state.seen.at[slot].set(h, mode="drop"),
                state.seen_reward.at[slot].set(rewards, mode="drop"),
                state.told + valid.sum().astype(jnp.int32))

    def told_neighbours(seen, seen_reward, told, incumbent):
        """(bool[K]: which neighbours of `incumbent` were told (within the memory), float32[K]:
        their rewards, -inf for the others).
        """
        every = jax.vmap(flat.neighbour, (None, 0))(incumbent, jnp.arange(k_all))
        h1, h2 = pipeline_hash(flat.unflatten(every))  # [K]
        match = ((h1[:, None] == seen[None, :, 0]) & (h2[:, None] == seen[None, :, 1])
                 & (jnp.arange(memory) < told)[None, :])  # [K, memory]
        return match.any(1), jnp.where(match, seen_reward[None, :], -jnp.inf).max(1)

    @jax.jit
    def ask(state, key):
        k_uniform, k_order = jax.random.split(key)
        uniform = flat.flatten(space.sample(k_uniform, num_pipelines))  # [P, D]
        if k_all == 0:  # a space of one pipeline: nothing to climb
            return flat.unflatten(uniform), state
        # Untried neighbours first, in a random order: their scores are in [0, 1), tried are 2.
        scores = jnp.where(state.tried, 2.0, jax.random.uniform(k_order, (k_all,)))
        order = jnp.argsort(scores)[:m]
        neighbours = jax.vmap(flat.neighbour, (None, 0))(state.incumbent, order)  # [m, D]
        untried = k_all - state.tried.sum()
        use = state.has_incumbent & (jnp.arange(m) < untried)
        x = jnp.concatenate([jnp.where(use[:, None], neighbours, uniform[:m]), uniform[m:]])
        return flat.unflatten(x), state

    @jax.jit
    def _tell(state, actions, rewards, valid):
        x = flat.flatten(actions)  # [B, D]
        finite = valid & jnp.isfinite(rewards)
        rewards = jnp.where(finite, rewards, -jnp.inf)
        # pad_batch puts the told rows first: if every told reward is -inf, argmax is row 0.
        best = jnp.argmax(jnp.where(valid, rewards, -jnp.inf))
        improves = valid.any() & (~state.has_incumbent | (rewards[best] > state.incumbent_reward))
        incumbent = jnp.where(improves, x[best], state.incumbent)
        reward = jnp.where(improves, rewards[best], state.incumbent_reward)
        tried = state.tried & ~improves
        known = jnp.concatenate([x, state.incumbent[None]])
        known_valid = jnp.concatenate([valid, state.has_incumbent[None]])
        index = jax.vmap(flat.neighbour_index, (None, 0))(incumbent, known)
        tried = tried.at[jnp.where(known_valid, index, k_all)].set(True, mode="drop")
        seen, seen_reward, told = remember(state, x, rewards, valid)
        if k_all:
            # A neighbour told before (under an earlier incumbent) is known: tried, and if it
            # is better than the incumbent (possible after a restart), the incumbent moves to it.
            known, known_reward = told_neighbours(seen, seen_reward, told, incumbent)
            k = jnp.argmax(known_reward)
            step = state.has_incumbent | improves
            step = step & (known_reward[k] > reward)
            incumbent = jnp.where(step, jax.vmap(flat.neighbour, (None, 0))(
                incumbent, k[None])[0], incumbent)
            reward = jnp.where(step, known_reward[k], reward)
            improves = improves | step
            tried = jnp.where(step, False, tried)
            again, _ = told_neighbours(seen, seen_reward, told, incumbent)
            tried = tried | jnp.where(step, again, known)
        has = state.has_incumbent | improves
        optimum = has & ~improves & tried.all()
        new = LocalSearchState(incumbent, jnp.where(optimum, -jnp.inf, reward), has & ~optimum,
                               tried & ~optimum, state.restarts + optimum, seen, seen_reward,
                               told)
        mean = jnp.where(finite, rewards, 0.0).sum() / jnp.maximum(finite.sum(), 1)
        return new, {"mean_reward": mean, "incumbent_reward": reward, "local_optimum": optimum}

    def tell(state, actions, rewards):
        """Any batch size (the driver appends replaced repeats): padded to P or 2P rows."""
        return _tell(state, *pad_batch({a: actions[a] for a in flat.agents}, rewards,
                                       num_pipelines))

    return Searcher(init, ask, tell)
