"""Running reward statistics, so a searcher's step sizes mean the same on every problem.

Rewards are standardized by the mean and standard deviation of every reward seen so far (batched
Welford / Chan et al. update) before a critic or a policy gradient sees them: with raw rewards, a
learning rate or a KL weight lambda tuned on accuracies in [0, 1] would be far too large for a
reward in the thousands and far too small for one in [0.90, 0.92].
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_MIN_STD = 1e-6


class RunningStats(NamedTuple):
    count: jax.Array  # float32[]
    mean: jax.Array  # float32[]
    m2: jax.Array  # float32[]: sum of squared deviations from the mean

    @classmethod
    def zeros(cls) -> RunningStats:
        # Three buffers, not one shared: a jitted function that donates the stats would
        # otherwise donate the same buffer three times.
        return cls(*(jnp.zeros((), jnp.float32) for _ in range(3)))

    @property
    def std(self) -> jax.Array:
        return jnp.sqrt(jnp.maximum(self.m2 / jnp.maximum(self.count, 1.0), _MIN_STD**2))


def update_stats(stats: RunningStats, values: jax.Array, valid: jax.Array | None = None
                 ) -> RunningStats:
    """Merges a batch float32[B] (its `valid` entries, all by default) into the running
    statistics (exact, order-independent).
    """
    values = jnp.asarray(values, jnp.float32)
    w = jnp.ones_like(values) if valid is None else jnp.asarray(valid, jnp.float32)
    n_b = w.sum()
    mean_b = (w * values).sum() / jnp.maximum(n_b, 1.0)
    m2_b = (w * (values - mean_b) ** 2).sum()
    n = stats.count + n_b
    delta = mean_b - stats.mean
    frac = n_b / jnp.maximum(n, 1.0)
    return RunningStats(n, stats.mean + delta * frac,
                        stats.m2 + m2_b + delta**2 * stats.count * frac)


def standardize(stats: RunningStats, values: jax.Array) -> jax.Array:
    return (values - stats.mean) / stats.std


def normal_scores(values: jax.Array, valid: jax.Array) -> jax.Array:
    """float32[N]: each valid value's rank among the valid values as a standard normal quantile,
    Phi^-1((mid-rank + 1/2) / n) (ties share their mean rank; invalid entries get 0).

    A monotone transform that gives the best few rewards as much resolution as the middle: with
    standardized rewards, a critic fitted by squared error on a table whose failures lie far
    below its optimum cannot tell pipelines 0.005 apart near the top.
    """
    values = jnp.asarray(values, jnp.float32)
    n = jnp.maximum(valid.sum(), 1).astype(jnp.float32)
    ordered = jnp.sort(jnp.where(valid, values, jnp.inf))
    below = jnp.searchsorted(ordered, values, side="left")
    through = jnp.searchsorted(ordered, values, side="right")
    mid_rank = (below + through - 1).astype(jnp.float32) / 2
    z = jax.scipy.special.ndtri(jnp.clip((mid_rank + 0.5) / n, 0.5 / n, 1 - 0.5 / n))
    return jnp.where(valid, z, 0.0)


def finite_rewards(rewards: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Non-finite rewards (a diverged pipeline told as NaN) become the batch's worst finite one
    (among the `valid` entries, all by default).
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    ok = jnp.isfinite(rewards)
    considered = ok if valid is None else ok & valid
    worst = jnp.min(jnp.where(considered, rewards, jnp.inf))
    return jnp.where(ok, rewards, jnp.where(jnp.isfinite(worst), worst, 0.0))


def pad_batch(actions, rewards, multiple: int):
    """Pads a told batch with zero rows up to a multiple of `multiple` (a searcher's P), so
    that a tell of P pipelines plus any number of replaced repeats compiles once per bucket
    (P, 2P) instead of once per size. On the host (numpy): no device op per shape.
    Returns (actions int32, rewards float32, valid bool[B']).
    """
    rewards = np.asarray(rewards, np.float32)
    b = rewards.shape[0]
    size = max(multiple, -(-b // multiple) * multiple)
    pad = size - b
    actions = {a: np.pad(np.asarray(x, np.int32), ((0, pad),) + ((0, 0),) * (np.ndim(x) - 1))
               for a, x in actions.items()}
    return actions, np.pad(rewards, (0, pad)), np.arange(size) < b
