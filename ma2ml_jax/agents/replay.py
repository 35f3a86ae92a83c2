"""A functional, fixed-capacity replay buffer (a ring over a pytree of arrays).

    replay = make_replay(capacity)
    state = replay.init(example)                   # example: one item (pytree of arrays)
    state = replay.add(state, batch)               # batch: the same pytree with a leading [B]
    state = replay.add(state, batch, count)        # only the first `count` rows (padded batches)
    batch = replay.sample(state, key, size)        # uniform over the stored items
    batch = replay.sample(state, key, size, recent=n)   # uniform over the n most recent items

The state is a NamedTuple of arrays, so it is jitted, donated, vmapped and checkpointed (orbax)
like any other pytree. `add` overwrites the oldest items once the buffer is full (flashbax's
item buffer, written small for this one use).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class ReplayState(NamedTuple):
    data: Any  # pytree, every leaf [capacity, ...]
    position: jax.Array  # int32[]: where the next item is written
    size: jax.Array  # int32[]: number of valid items (<= capacity)


class Replay(NamedTuple):
    init: Callable[[Any], ReplayState]
    add: Callable[..., ReplayState]
    sample: Callable[..., Any]
    capacity: int


def make_replay(capacity: int) -> Replay:
    """A ring buffer of `capacity` items."""
    if capacity < 1:
        raise ValueError(f"replay capacity must be >= 1, got {capacity}")

    def init(example):
        data = jax.tree.map(lambda x: jnp.zeros((capacity,) + jnp.shape(x), jnp.asarray(x).dtype),
                            example)
        return ReplayState(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def add(state, batch, count=None):
        """Writes the batch's first `count` rows (all by default; a traced int is fine, so a
        batch padded to a fixed size compiles once).
        """
        sizes = {x.shape[0] for x in jax.tree.leaves(batch)}
        if len(sizes) != 1:
            raise ValueError(f"every leaf of a replay batch needs the same leading size: {sizes}")
        (b,) = sizes
        if b > capacity:
            raise ValueError(f"batch of {b} items does not fit a replay of capacity {capacity}")
        n = jnp.asarray(b if count is None else jnp.clip(count, 0, b), jnp.int32)
        rows = jnp.arange(b)
        index = jnp.where(rows < n, (state.position + rows) % capacity, capacity)  # pad: dropped
        data = jax.tree.map(lambda d, x: d.at[index].set(x.astype(d.dtype), mode="drop"),
                            state.data, batch)
        return ReplayState(data, (state.position + n) % capacity,
                           jnp.minimum(state.size + n, capacity))

    def sample(state, key, size: int, recent=None):
        """`size` items drawn uniformly (with replacement) from the buffer, or from its
        `recent` most recently added items (a traced int is fine).
        """
        window = state.size if recent is None else jnp.clip(recent, 1, state.size)
        back = jax.random.randint(key, (size,), 0, jnp.maximum(window, 1))
        index = (state.position - 1 - back) % capacity
        return jax.tree.map(lambda d: d[index], state.data)

    return Replay(init, jax.jit(add, donate_argnums=0), sample, capacity)
