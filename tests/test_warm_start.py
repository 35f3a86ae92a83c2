"""Every searcher takes results it did not ask for (a warm start from an earlier run's trials)
before its first ask, uses them (its next asks move towards the pipeline told best), and its
initial state holds no buffer twice (a jitted tell donates it).
"""

import jax
import numpy as np
import pytest

from ma2ml_jax import agents
from ma2ml_jax import config as config_lib
from ma2ml_jax.bench.objectives import make_objective

OBJECTIVE = make_objective({"aug": (3, 4), "nas": (2, 3, 2), "hpo": (4,)}, seed=3)
P = 4


def _searcher(algorithm, population=None, tournament=None, epsilon_decay=None):
    c = config_lib.base_config()
    c.search.algorithm = algorithm
    c.search.pipelines = P
    for section in ("ma2ml", "ma2ml_paper"):
        c[section].critic_batch, c[section].actor_batch, c[section].updates = 8, 4, 2
        c[section].candidates = 16
    c.ma2ml_paper.updates = 1  # the paper's: one update per iteration
    if population:
        c.evolution.population, c.evolution.tournament = population, tournament
    if epsilon_decay:
        c.qlearning.epsilon_decay = epsilon_decay
    return agents.make_searcher(c, OBJECTIVE.space)


@pytest.mark.parametrize("algorithm", config_lib.ALGORITHMS)
def test_initial_state_leaves_hold_distinct_buffers(algorithm):
    state = _searcher(algorithm).init(jax.random.key(0))
    pointers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)
                if isinstance(x, jax.Array) and not jax.dtypes.issubdtype(
                    x.dtype, jax.dtypes.prng_key)]
    assert len(pointers) == len(set(pointers))


@pytest.mark.parametrize("algorithm", config_lib.ALGORITHMS)
def test_tell_before_ask_then_search_on(algorithm):
    searcher = _searcher(algorithm)
    state = searcher.init(jax.random.key(0))
    known = OBJECTIVE.space.sample(jax.random.key(1), 6)  # an earlier run's 6 results
    state, _ = searcher.tell(state, known, np.asarray(OBJECTIVE.true_reward(known)))
    for it in range(2):
        actions, state = searcher.ask(state, jax.random.key(10 + it))
        assert {a: np.asarray(v).shape for a, v in actions.items()} == {
            a: (P, OBJECTIVE.space[a].n_decisions) for a in OBJECTIVE.space.agents}
        state, _ = searcher.tell(state, actions, np.asarray(OBJECTIVE.true_reward(actions)))


# A warm start whose best pipeline is X, with 40 (qlearning: 300, enough to fill every cell of its
# tables) pipelines at least 3 decisions away from X.
X = {"aug": np.asarray([2, 3]), "nas": np.asarray([1, 2, 1]), "hpo": np.asarray([3])}
ASKS = 25


def _told(others):
    rng = np.random.default_rng(0)
    far = []
    while len(far) < others:
        t = {a: rng.integers(0, OBJECTIVE.space[a].sizes).astype(np.int32)
             for a in OBJECTIVE.space.agents}
        if _distance({a: t[a][None] for a in t})[0] >= 3:
            far.append(t)
    # X last: the newest told, so it is in evolution's population.
    return {a: np.stack([t[a] for t in far] + [X[a]]).astype(np.int32) for a in X}


def _distance(actions):
    """int[B]: decisions in which each pipeline differs from X."""
    return sum((np.asarray(actions[a]) != X[a]).sum(1) for a in X)


def _asks_after(algorithm, x_is_best):
    """The distances to X of ASKS asks after a warm start where X has the top reward (and every
    other pipeline 0) or the bottom one (and every other 1)."""
    searcher = _searcher(algorithm, population=10, tournament=10, epsilon_decay=0.5)
    told = _told(300 if algorithm == "qlearning" else 40)
    n = len(told["aug"])
    rewards = np.where(np.arange(n) == n - 1, 1.0, 0.0)
    state = searcher.init(jax.random.key(0))
    state, _ = searcher.tell(state, told, (rewards if x_is_best else 1.0 - rewards
                                           ).astype(np.float32))
    out = []
    for it in range(ASKS):  # the same keys for both warm starts
        actions, state = searcher.ask(state, jax.random.key(10 + it))
        out.append(_distance(actions))
    return np.concatenate(out)


@pytest.mark.parametrize("algorithm", [
    pytest.param(a, marks=pytest.mark.skip(reason="uniform samples: nothing told can show in "
                                           "its asks")) if a == "random" else a
    for a in config_lib.ALGORITHMS])
def test_asks_move_towards_the_pipeline_told_best(algorithm):
    near = _asks_after(algorithm, True)
    far = _asks_after(algorithm, False)
    # Told X is the best, a searcher asks closer to X than when told X is the worst.
    assert near.mean() < far.mean(), (near, far)
    if algorithm == "local":  # the incumbent is X: every ask is one of its neighbours
        assert (near == 1).all(), near
    if algorithm == "evolution":  # X wins every tournament it is drawn into; never when worst
        assert (near == 1).sum() > (far == 1).sum(), (near, far)
    if algorithm == "ma2ml":  # X's neighbours are screened in (X is the best parent)
        assert (near == 1).mean() >= 0.5, near
    if algorithm == "qlearning":  # with every cell visited, greedy episodes follow X's cells
        assert (near == 0).mean() >= 0.5, near
