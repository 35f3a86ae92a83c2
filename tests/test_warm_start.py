"""Every searcher takes results it did not ask for (a warm start from an earlier run's trials)
before its first ask, and its initial state holds no buffer twice (a jitted tell donates it).
"""

import jax
import numpy as np
import pytest

from ma2ml_jax import agents
from ma2ml_jax import config as config_lib
from ma2ml_jax.bench.objectives import make_objective

OBJECTIVE = make_objective({"aug": (3, 4), "nas": (2, 3, 2), "hpo": (4,)}, seed=3)
P = 4


def _searcher(algorithm):
    c = config_lib.base_config()
    c.search.algorithm = algorithm
    c.search.pipelines = P
    c.ma2ml.critic_batch, c.ma2ml.actor_batch, c.ma2ml.updates = 8, 4, 2
    c.ma2ml.candidates = 16
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
