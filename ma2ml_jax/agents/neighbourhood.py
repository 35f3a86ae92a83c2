"""Pipelines as one vector of decisions, and the pipelines one decision away.

Regularized evolution mutates one decision of a pipeline and local search walks between pipelines
that differ in one decision; both see a pipeline {agent: int[n_agent]} as one vector int[D] of
every agent's decisions, in `space.agents` order (D = sum of n_agent).

A pipeline x has K = sum_d (size_d - 1) one-decision neighbours. Neighbour k is a pair
(decision d_k, offset o_k in 1 .. size_d - 1): x with decision d_k set to (x_d + o_k) mod size_d.
The numbering does not depend on x, so a bool[K] mask says which neighbours of any incumbent were
tried, and `neighbour_index` inverts `neighbour` in O(D).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ma2ml_jax.spaces import PipelineSpace


class FlatSpace:
    """The decisions of every agent of a `PipelineSpace`, concatenated.

    Attributes:
      agents: the agents, in the order their decisions are concatenated.
      widths: n_decisions of each agent.
      sizes: int32[D], the number of choices of each decision.
      num_neighbours: K, the one-decision neighbours of any pipeline.
    """

    def __init__(self, space: PipelineSpace):
        self.agents = space.agents
        self.widths = tuple(space[a].n_decisions for a in self.agents)
        self.sizes = np.concatenate([space[a].sizes for a in self.agents]).astype(np.int32)
        others = self.sizes - 1  # the values a neighbour can give each decision
        self.num_neighbours = int(others.sum())
        self._decision = np.repeat(np.arange(self.num_decisions, dtype=np.int32), others)
        self._offset = np.concatenate([np.arange(1, s, dtype=np.int32) for s in self.sizes])
        self._first = (np.cumsum(others) - others).astype(np.int32)  # first neighbour of each d
        self._mutable = np.flatnonzero(others > 0).astype(np.int32)

    @property
    def num_decisions(self) -> int:
        return int(self.sizes.shape[0])

    def flatten(self, actions: Mapping[str, jax.Array]) -> jax.Array:
        """{agent: int[..., n_agent]} -> int32[..., D]."""
        return jnp.concatenate([jnp.asarray(actions[a], jnp.int32) for a in self.agents], -1)

    def unflatten(self, x: jax.Array) -> dict[str, jax.Array]:
        """int32[..., D] -> {agent: int32[..., n_agent]}."""
        cuts = np.cumsum(self.widths)[:-1]
        return dict(zip(self.agents, jnp.split(x, cuts, axis=-1)))

    def mutate(self, key: jax.Array, x: jax.Array) -> jax.Array:
        """One decision of x: int32[D], chosen uniformly, set to a different value chosen
        uniformly (regularized evolution's mutation). Decisions with one choice cannot change and
        are never chosen; a space without any such decision returns x.
        """
        x = jnp.asarray(x)
        if self._mutable.size == 0:
            return x
        k_decision, k_value = jax.random.split(key)
        d = jnp.asarray(self._mutable)[jax.random.randint(k_decision, (), 0,
                                                          self._mutable.size)]
        size = jnp.asarray(self.sizes)[d]
        offset = jax.random.randint(k_value, (), 1, size)  # uniform over the size - 1 others
        return x.at[d].set((x[d] + offset) % size)

    def neighbour(self, x: jax.Array, k: jax.Array) -> jax.Array:
        """Neighbour k of x: int32[D] (see the module doc for the numbering)."""
        x, d = jnp.asarray(x), jnp.asarray(self._decision)[k]
        return x.at[d].set((x[d] + jnp.asarray(self._offset)[k]) % jnp.asarray(self.sizes)[d])

    def neighbour_index(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """The k with y = neighbour(x, k) if y differs from x in one decision only, else K."""
        x, y = jnp.asarray(x), jnp.asarray(y)
        differs = x != y
        d = jnp.argmax(differs)
        offset = (y[d] - x[d]) % jnp.asarray(self.sizes)[d]
        k = jnp.asarray(self._first)[d] + offset - 1
        return jnp.where(differs.sum() == 1, k, self.num_neighbours).astype(jnp.int32)
