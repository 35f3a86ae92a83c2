"""MA2ML-Lite: independent REINFORCE per agent with a moving-average reward baseline.

The paper's ablation without a critic (its equation 2): every agent i follows
    grad J_i = E[(R - b) grad log pi_i(A_i)],   b <- decay * b + (1 - decay) * mean(R),
so every agent is credited with the whole pipeline's reward (no counterfactual credit). Rewards
are divided by their running standard deviation (`agents.normalize`) so that one learning rate
serves every reward scale. The baseline starts at the first batch's mean reward.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ma2ml_jax.agents.base import Searcher
from ma2ml_jax.agents.normalize import RunningStats, finite_rewards, pad_batch, update_stats
from ma2ml_jax.agents.policy import POLICIES, make_policy
from ma2ml_jax.spaces import PipelineSpace


class LiteConfig(NamedTuple):
    """Hyper-parameters of MA2ML-Lite (config keys `lite.*`)."""

    policy: str = "factorized"  # factorized | autoregressive
    hidden: int = 64
    lr: float = 0.1
    baseline_decay: float = 0.9  # EMA decay of the reward baseline
    updates: int = 1  # gradient steps per iteration on the iteration's pipelines

    def check(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"lite.policy={self.policy!r} is not one of {list(POLICIES)}")
        if not 0.0 <= self.baseline_decay < 1.0:
            raise ValueError(f"lite.baseline_decay={self.baseline_decay} must be in [0, 1)")
        if self.lr <= 0 or self.updates < 1:
            raise ValueError("lite.lr must be > 0 and lite.updates >= 1")


class LiteState(NamedTuple):
    policy: Any  # {agent: params}
    opt: Any
    baseline: jax.Array  # float32[]: EMA of rewards
    stats: RunningStats
    iteration: jax.Array  # int32[]


def make_lite(space: PipelineSpace, num_pipelines: int, config: LiteConfig | None = None
              ) -> Searcher:
    """MA2ML-Lite over `space`, `num_pipelines` pipelines per iteration."""
    config = config or LiteConfig()
    config.check()
    if num_pipelines < 1:
        raise ValueError(f"num_pipelines must be >= 1, got {num_pipelines}")
    agents = space.agents
    policies = {a: make_policy(space[a], config.policy, config.hidden) for a in agents}
    tx = optax.adam(config.lr)

    def init(key):
        params = {a: policies[a].init(jax.random.fold_in(key, i)) for i, a in enumerate(agents)}
        return LiteState(params, tx.init(params), jnp.zeros((), jnp.float32), RunningStats.zeros(),
                         jnp.zeros((), jnp.int32))

    @jax.jit
    def ask(state, key):
        return {a: policies[a].sample(state.policy[a], jax.random.fold_in(key, i), num_pipelines)
                for i, a in enumerate(agents)}, state

    @jax.jit
    def _tell(state, actions, rewards, valid):
        rewards = finite_rewards(rewards, valid)
        w = valid.astype(jnp.float32)
        n = jnp.maximum(w.sum(), 1.0)
        mean = (w * rewards).sum() / n
        stats = update_stats(state.stats, rewards, valid)
        baseline = jnp.where(state.iteration == 0, mean, state.baseline)
        advantage = w * (rewards - baseline) / stats.std  # [B], the same for every agent

        def loss(params):
            return -sum((advantage * policies[a].log_prob(params[a], actions[a])).sum() / n
                        for a in agents)

        def step(carry, _):
            params, opt = carry
            updates, opt = tx.update(jax.grad(loss)(params), opt, params)
            return (optax.apply_updates(params, updates), opt), None

        (params, opt), _ = jax.lax.scan(step, (state.policy, state.opt), None, config.updates)
        decay = config.baseline_decay
        new_baseline = decay * baseline + (1 - decay) * mean
        return (LiteState(params, opt, new_baseline, stats, state.iteration + 1),
                {"mean_reward": mean, "baseline": new_baseline})

    def tell(state, actions, rewards):
        """Any batch size (the driver appends replaced repeats): padded to P or 2P rows."""
        return _tell(state, *pad_batch({a: actions[a] for a in agents}, rewards,
                                       num_pipelines))

    return Searcher(init, ask, tell)
