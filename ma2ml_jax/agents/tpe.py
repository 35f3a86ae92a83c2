"""Optuna's TPE sampler through its ask/tell interface: the baseline users would pick instead.

Every decision of every agent is one categorical parameter ("agent/decision"), so TPE models the
whole pipeline jointly (`multivariate=True`, with `group=False`: the spaces have no conditional
decisions). A batch of P pipelines is asked at once; `constant_liar` keeps TPE from proposing the
same point P times while the batch is pending.

Unlike the other searchers, the state holds a host object (an Optuna study) that `ask` and `tell`
update in place. It is deterministic for a given seed and sequence of ask/tell calls, which is all
the driver's resume needs (it replays the logged iterations through ask/tell).

Repeats are handled inside: asking changes the study, so the driver's repeat guard cannot ask
again for replacements. Instead a trial whose pipeline was told before is completed at once with
its known reward (TPE learns from it, no evaluation is spent) and another is asked, up to
`repeat_rounds` times the batch. `tell` also takes results that were not asked (a warm start from
an earlier run, or the driver's replaced repeats): they become completed trials.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ma2ml_jax.agents.base import Searcher
from ma2ml_jax.agents.repeats import pipeline_key
from ma2ml_jax.spaces import PipelineSpace


class TPEState(NamedTuple):
    study: Any  # optuna.Study, updated in place
    pending: list  # the trials of the last ask, waiting for their rewards
    iteration: int
    known: dict  # pipeline identity (agents.repeats.pipeline_key) -> the reward told


def make_tpe(space: PipelineSpace, num_pipelines: int, n_startup_trials: int = 10,
             repeat_rounds: int = 10) -> Searcher:
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
        return TPEState(optuna.create_study(direction="maximize", sampler=sampler), [], 0, {})

    def tokens(trial) -> dict[str, np.ndarray]:
        out = {agent: np.zeros((1, space[agent].n_decisions), np.int32) for agent in space.agents}
        for agent, i, name, _ in params:
            out[agent][0, i] = trial.params[name]
        return out

    def complete(study, trial, r) -> None:
        study.tell(trial, float(r) if np.isfinite(r) else None,
                   state=None if np.isfinite(r) else optuna.trial.TrialState.FAIL)

    def ask(state, key):
        del key  # the sampler's own seeded generator draws
        trials, rows = [], []
        for _ in range(num_pipelines * (1 + repeat_rounds)):
            if len(trials) == num_pipelines:
                break
            trial = state.study.ask(distributions)
            row = tokens(trial)
            k = pipeline_key(row, 0)
            if repeat_rounds and k in state.known:  # TPE learns it again, no evaluation spent
                complete(state.study, trial, state.known[k])
                continue
            trials.append(trial)
            rows.append(row)
        while len(trials) < num_pipelines:  # a (nearly) exhausted space: repeats are evaluated
            trials.append(state.study.ask(distributions))
            rows.append(tokens(trials[-1]))
        actions = {a: jnp.asarray(np.concatenate([r[a] for r in rows])) for a in space.agents}
        return actions, state._replace(pending=trials)

    def tell(state, actions, rewards):
        """The asked pipelines' rewards first (in order), then any other told pipelines."""
        rewards = np.asarray(rewards, np.float64)
        actions = {a: np.asarray(v) for a, v in actions.items()}
        if len(rewards) < len(state.pending):
            raise ValueError(f"tell got {len(rewards)} rewards for {len(state.pending)} asked "
                             "pipelines")
        for p, r in enumerate(rewards):
            if p < len(state.pending):
                complete(state.study, state.pending[p], r)
            else:  # not asked: a warm start's result or a replaced repeat
                values = {name: int(actions[agent][p, i]) for agent, i, name, _ in params}
                state.study.add_trial(optuna.trial.create_trial(
                    params=values, distributions=distributions,
                    value=float(r) if np.isfinite(r) else None,
                    state=(optuna.trial.TrialState.COMPLETE if np.isfinite(r) else
                           optuna.trial.TrialState.FAIL)))
            state.known.setdefault(pipeline_key(actions, p), float(r))
        return (state._replace(pending=[], iteration=state.iteration + 1),
                {"mean_reward": jnp.asarray(rewards.mean(), jnp.float32)})

    return Searcher(init, ask, tell)
