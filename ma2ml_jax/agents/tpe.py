"""Optuna's TPE sampler through its ask/tell interface: the baseline users would pick instead.

Every decision of every agent is one categorical parameter ("agent/decision"), so TPE models the
whole pipeline jointly (`multivariate=True`, with `group=False`: the spaces have no conditional
decisions). A batch of P pipelines is asked at once; `constant_liar` keeps TPE from proposing the
same point P times while the batch is pending.

Unlike the other searchers, the state holds a host object (an Optuna study) that `ask` and `tell`
update in place. It is deterministic for a given seed and sequence of ask/tell calls, which is all
the driver's resume needs (it replays the logged iterations through ask/tell).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ma2ml_jax.agents.base import Searcher
from ma2ml_jax.spaces import PipelineSpace


class TPEState(NamedTuple):
    study: Any  # optuna.Study, updated in place
    pending: list  # the trials of the last ask, waiting for their rewards
    iteration: int


def make_tpe(space: PipelineSpace, num_pipelines: int, n_startup_trials: int = 10) -> Searcher:
    """TPE over every decision of `space`, `num_pipelines` pipelines per iteration."""
    import optuna

    if num_pipelines < 1:
        raise ValueError(f"num_pipelines must be >= 1, got {num_pipelines}")
    params = [(agent, i, f"{agent}/{d.name}", d.size) for agent in space.agents
              for i, d in enumerate(space[agent].decisions)]
    distributions = {name: optuna.distributions.CategoricalDistribution(list(range(size)))
                     for _, _, name, size in params}

    def init(key):
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials,
                                             multivariate=True, constant_liar=True)
        return TPEState(optuna.create_study(direction="maximize", sampler=sampler), [], 0)

    def ask(state, key):
        del key  # the sampler's own seeded generator draws
        trials = [state.study.ask(distributions) for _ in range(num_pipelines)]
        actions = {agent: np.zeros((num_pipelines, space[agent].n_decisions), np.int32)
                   for agent in space.agents}
        for p, trial in enumerate(trials):
            for agent, i, name, _ in params:
                actions[agent][p, i] = trial.params[name]
        return {a: jnp.asarray(v) for a, v in actions.items()}, state._replace(pending=trials)

    def tell(state, actions, rewards):
        del actions
        rewards = np.asarray(rewards, np.float64)
        if len(state.pending) != len(rewards):
            raise ValueError(f"tell got {len(rewards)} rewards for {len(state.pending)} asked "
                             "pipelines")
        for trial, r in zip(state.pending, rewards):
            state.study.tell(trial, float(r) if np.isfinite(r) else None,
                             state=None if np.isfinite(r) else optuna.trial.TrialState.FAIL)
        return (state._replace(pending=[], iteration=state.iteration + 1),
                {"mean_reward": jnp.asarray(rewards.mean(), jnp.float32)})

    return Searcher(init, ask, tell)
