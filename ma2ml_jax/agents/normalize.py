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

_MIN_STD = 1e-6


class RunningStats(NamedTuple):
    count: jax.Array  # float32[]
    mean: jax.Array  # float32[]
    m2: jax.Array  # float32[]: sum of squared deviations from the mean

    @classmethod
    def zeros(cls) -> RunningStats:
        z = jnp.zeros((), jnp.float32)
        return cls(z, z, z)

    @property
    def std(self) -> jax.Array:
        return jnp.sqrt(jnp.maximum(self.m2 / jnp.maximum(self.count, 1.0), _MIN_STD**2))


def update_stats(stats: RunningStats, values: jax.Array) -> RunningStats:
    """Merges a batch float32[B] into the running statistics (exact, order-independent)."""
    values = jnp.asarray(values, jnp.float32)
    n_b = jnp.asarray(values.size, jnp.float32)
    mean_b = values.mean()
    m2_b = ((values - mean_b) ** 2).sum()
    n = stats.count + n_b
    delta = mean_b - stats.mean
    return RunningStats(n, stats.mean + delta * n_b / n,
                        stats.m2 + m2_b + delta**2 * stats.count * n_b / n)


def standardize(stats: RunningStats, values: jax.Array) -> jax.Array:
    return (values - stats.mean) / stats.std


def finite_rewards(rewards: jax.Array) -> jax.Array:
    """Non-finite rewards (a diverged pipeline told as NaN) become the batch's worst finite one."""
    rewards = jnp.asarray(rewards, jnp.float32)
    ok = jnp.isfinite(rewards)
    worst = jnp.min(jnp.where(ok, rewards, jnp.inf))
    return jnp.where(ok, rewards, jnp.where(jnp.isfinite(worst), worst, 0.0))
