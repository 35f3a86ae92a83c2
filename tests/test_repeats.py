"""Repeats: a pipeline already evaluated, or duplicated within its batch, is
replaced by a fresh sample, and its known reward is still told to the learner."""


import jax
import numpy as np
import pytest

from ma2ml_jax import agents, search
from ma2ml_jax import config as config_lib
from ma2ml_jax.agents.random import make_random_search
from ma2ml_jax.bench.objectives import synthetic_space
from ma2ml_jax.spaces import make_pipeline_space

SPACE = synthetic_space({"aug": (2,), "nas": (3,)})  # 6 pipelines in all


def _keys(actions):
    n = next(iter(actions.values())).shape[0]
    return [agents.pipeline_key(actions, p) for p in range(n)]


def test_count_repeats_counts_seen_and_in_batch_duplicates():
    actions = {"aug": np.asarray([[0], [0], [1], [0]]), "nas": np.asarray([[2], [2], [0], [1]])}
    assert agents.count_repeats(actions, set()) == 1  # pipeline 1 duplicates pipeline 0
    seen = {agents.pipeline_key(actions, 2)}
    assert agents.count_repeats(actions, seen) == 2


def test_repeats_are_replaced_until_the_space_is_exhausted():
    searcher = make_random_search(SPACE, 4)
    state = searcher.init(jax.random.key(0))
    seen = set()
    asked, _ = searcher.ask(state, jax.random.key(1))
    first = agents.avoid_repeats(searcher.ask, state, asked, jax.random.key(1), seen,
                                 max_rounds=20)
    assert len(set(_keys(first.actions))) == 4
    seen |= set(_keys(first.actions))
    actions, _ = searcher.ask(state, jax.random.key(2))
    second = agents.avoid_repeats(searcher.ask, state, actions, jax.random.key(2), seen,
                                  max_rounds=20)
    keys = _keys(second.actions)
    fresh = [k for k in keys if k not in seen]
    assert len(set(fresh)) == 2  # the only two pipelines left, each once
    assert seen | set(fresh) == set(_keys({"aug": np.repeat([[0], [1]], 3, 0),
                                           "nas": np.tile([[0], [1], [2]], (2, 1))}))
    # Every asked repeat that was replaced is returned for telling with its known reward.
    replaced = next(iter(second.replaced.values())).shape[0]
    assert second.asked_repeats == agents.count_repeats(actions, seen)
    assert replaced <= second.asked_repeats
    # What was asked = what was kept from the ask + what was replaced (as multisets).
    kept = [k for k, k0 in zip(keys, _keys(actions)) if k == k0]
    assert sorted(kept + _keys(second.replaced)) == sorted(_keys(actions))


def test_known_rewards_come_from_history_or_the_batch():
    actions = {"aug": np.asarray([[0], [1]]), "nas": np.asarray([[0], [2]])}
    replaced = {"aug": np.asarray([[1], [0]]), "nas": np.asarray([[1], [0]])}
    history = {agents.pipeline_key(replaced, 0): 0.25}
    got = agents.known_rewards(replaced, history, actions, [0.5, 0.75])
    np.testing.assert_allclose(got, [0.25, 0.5])


def _hpo_config(avoid, algorithm="random"):
    c = config_lib.base_config()
    c.spaces = {"hpo": c.spaces.hpo}  # the tiny recipe space: 1536 pipelines
    c.search.algorithm = algorithm
    c.search.avoid_repeats = avoid
    c.search.pipelines = 64
    c.search.iterations = 3
    return c


def _objective(space):
    def objective(pipelines):
        return [float(np.mean(space["hpo"].encode(p["hpo"]) == 0)) for p in pipelines]
    return objective


@pytest.mark.parametrize("algorithm", ["random", "lite"])
def test_driver_never_evaluates_a_pipeline_twice(tmp_path, algorithm):
    """192 draws from 1536 pipelines: about 12 birthday repeats by chance (more for a learner
    that sharpens); with search.avoid_repeats none is evaluated twice and the fraction of
    asked repeats is still reported."""
    results = {}
    for avoid in (False, True):
        c = _hpo_config(avoid, algorithm)
        space = make_pipeline_space(c.spaces)
        r = search.run(c, str(tmp_path / f"{avoid}"), objective=_objective(space), progress=False)
        keys = [tuple(t["tokens"]["hpo"]) for t in r.trials]
        results[avoid] = (len(keys) - len(set(keys)), r.repeat_fraction,
                          r.evaluated_repeat_fraction)
    off, on = results[False], results[True]
    assert off[0] > 0 and off[1] > 0 and off[2] == pytest.approx(off[0] / 192)
    assert on[0] == 0 and on[1] > 0 and on[2] == 0
