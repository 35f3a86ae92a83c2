"""Pipelines as one vector of decisions, and the pipelines one decision away.

Regularized evolution mutates one decision of a pipeline and local search walks between pipelines
that differ in one decision; both see a pipeline {agent: int[n_agent]} as one vector int[D] of
every agent's decisions, in `space.agents` order (D = sum of n_agent).

A pipeline x has K = sum_d (size_d - 1) one-decision neighbours. Neighbour k is a pair
(decision d_k, offset o_k in 1 .. size_d - 1): x with decision d_k set to (x_d + o_k) mod size_d.
The numbering does not depend on x, so a bool[K] mask says which neighbours of any incumbent were
tried, and `neighbour_index` inverts `neighbour` in O(D).

With `ordered_steps`, an ordered decision (`spaces.Decision.ordered`) of 3 or more levels moves
one level only: it has two neighbours, offsets -1 and +1, clipped to its levels (no wrap-around),
so K = sum over those decisions of 2 plus sum over the others of (size_d - 1). A step past the
first or last level leaves x as it is: that slot is empty at such an x (`moves` says which slots
change x), and `neighbour_index` never returns it. (An ordered decision of 2 levels keeps its one
neighbour, the other level: a one-level step.) The default numbers every decision as unordered.
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
      ordered: bool[D], which decisions are ordered levels (`spaces.Space.ordered`).
      steps: bool[D], the decisions whose neighbours are the adjacent levels only (ordered ones
        of 3 or more levels with `ordered_steps`; none without).
      num_neighbours: K, the one-decision neighbours of any pipeline.
    """

    def __init__(self, space: PipelineSpace, ordered_steps: bool = False):
        self.agents = space.agents
        self.widths = tuple(space[a].n_decisions for a in self.agents)
        self.sizes = np.concatenate([space[a].sizes for a in self.agents]).astype(np.int32)
        self.ordered = np.concatenate([space[a].ordered for a in self.agents]).astype(bool)
        self.steps = self.ordered & (self.sizes > 2) & bool(ordered_steps)
        # The slots of each decision: its values other than x_d, or one level down and up.
        slots = np.where(self.steps, 2, self.sizes - 1)
        self.num_neighbours = int(slots.sum())
        self._decision = np.repeat(np.arange(self.num_decisions, dtype=np.int32), slots)
        self._offset = np.concatenate(
            [np.array([-1, 1], np.int32) if step else np.arange(1, s, dtype=np.int32)
             for s, step in zip(self.sizes, self.steps)])
        self._first = (np.cumsum(slots) - slots).astype(np.int32)  # first neighbour of each d
        self._mutable = np.flatnonzero(self.sizes > 1).astype(np.int32)

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
        size = jnp.asarray(self.sizes)[d]
        value = x[d] + jnp.asarray(self._offset)[k]
        if self.steps.any():
            value = jnp.where(jnp.asarray(self.steps)[d], jnp.clip(value, 0, size - 1),
                              value % size)
        else:
            value = value % size
        return x.at[d].set(value)

    def neighbour_index(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """The k with y = neighbour(x, k) if y differs from x in one decision only (by one
        level, for a decision in `steps`), else K.
        """
        x, y = jnp.asarray(x), jnp.asarray(y)
        differs = x != y
        d = jnp.argmax(differs)
        delta = y[d] - x[d]
        k = jnp.asarray(self._first)[d] + delta % jnp.asarray(self.sizes)[d] - 1
        one = differs.sum() == 1
        if self.steps.any():
            step = jnp.asarray(self.steps)[d]
            # Slot 0 of a step decision is one level down, slot 1 one level up.
            k = jnp.where(step, jnp.asarray(self._first)[d] + (delta + 1) // 2, k)
            one = one & (~step | (jnp.abs(delta) == 1))
        return jnp.where(one, k, self.num_neighbours).astype(jnp.int32)

    def moves(self, x: jax.Array) -> jax.Array:
        """bool[K]: the slots whose neighbour of x differs from x (all but the steps past an
        end level of a decision in `steps`).
        """
        x = jnp.asarray(x)
        d = jnp.asarray(self._decision)
        value = x[d] + jnp.asarray(self._offset)
        inside = (value >= 0) & (value < jnp.asarray(self.sizes)[d])
        return ~jnp.asarray(self.steps)[d] | inside
