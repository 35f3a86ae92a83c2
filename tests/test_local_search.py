"""Local search (White et al. 2021): batched hill climbing over one-decision neighbours, with
random restarts at local optima."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma2ml_jax import agents, checkpoint, search
from ma2ml_jax import config as config_lib
from ma2ml_jax.agents.local_search import make_local_search
from ma2ml_jax.agents.neighbourhood import FlatSpace
from ma2ml_jax.agents.random import make_random_search
from ma2ml_jax.bench.objectives import make_objective, synthetic_space
from ma2ml_jax.spaces import make_pipeline_space

SMALL = synthetic_space({"a": (2, 3), "b": (4,)})  # 24 pipelines, K = 1 + 2 + 3 = 6 neighbours
P = 4
LS = make_local_search(SMALL, P)
WIDE = synthetic_space({"a": (4,) * 3, "b": (4,) * 3})  # 4096 pipelines, K = 18 neighbours
LS_WIDE = make_local_search(WIDE, P)


def _flat(actions, space=SMALL):
    return np.concatenate([np.asarray(actions[a]) for a in space.agents], -1)


def _actions(flat, space=SMALL):
    flat = np.asarray(flat, np.int32).reshape(-1, sum(space[a].n_decisions for a in space.agents))
    out, start = {}, 0
    for a in space.agents:
        out[a] = flat[:, start:start + space[a].n_decisions]
        start += space[a].n_decisions
    return out


def _hamming(x, y):
    return int(np.sum(np.asarray(x) != np.asarray(y)))


def _neighbours(x, sizes):
    """Every pipeline one decision from x, by brute force."""
    out = []
    for d, n in enumerate(sizes):
        for v in range(n):
            if v != x[d]:
                y = list(x)
                y[d] = v
                out.append(tuple(y))
    return out


def _with_incumbent(searcher, incumbent, reward=0.5, space=SMALL):
    state = searcher.init(jax.random.key(0))
    state, _ = searcher.tell(state, _actions(incumbent, space), np.asarray([reward], np.float32))
    return state


def test_neighbour_numbering_round_trips():
    flat = FlatSpace(SMALL)
    x = np.asarray([1, 0, 2], np.int32)
    ys = [tuple(np.asarray(flat.neighbour(x, k))) for k in range(flat.num_neighbours)]
    assert sorted(ys) == sorted(_neighbours(x, [2, 3, 4]))
    assert [int(flat.neighbour_index(x, y)) for y in ys] == list(range(6))
    assert int(flat.neighbour_index(x, x)) == 6  # not a neighbour: K
    assert int(flat.neighbour_index(x, [0, 1, 2])) == 6


def test_without_an_incumbent_the_best_told_becomes_it():
    state = LS.init(jax.random.key(0))
    asked, _ = LS.ask(state, jax.random.key(1))
    assert not bool(state.has_incumbent)
    # Uniform samples: the four asked pipelines are not all neighbours of one of them.
    x = _flat(asked)
    assert not all(_hamming(x[0], y) <= 1 for y in x)
    rewards = np.asarray([0.2, 0.7, np.nan, 0.1], np.float32)
    state, _ = LS.tell(state, asked, rewards)
    assert bool(state.has_incumbent) and float(state.incumbent_reward) == pytest.approx(0.7)
    np.testing.assert_array_equal(state.incumbent, x[1])


def test_asks_distinct_untried_neighbours_and_restarts_at_a_local_optimum():
    incumbent = [1, 0, 2]
    state = _with_incumbent(LS, incumbent)
    all_neighbours = set(_neighbours(incumbent, [2, 3, 4]))
    first, state = LS.ask(state, jax.random.key(1))
    first = [tuple(x) for x in _flat(first)]
    assert len(set(first)) == P and set(first) <= all_neighbours
    state, _ = LS.tell(state, _actions(first), np.full(P, 0.5, np.float32))  # ties: no move
    assert int(np.sum(state.tried)) == P and not int(state.restarts)
    np.testing.assert_array_equal(state.incumbent, incumbent)
    second, state = LS.ask(state, jax.random.key(2))
    second = [tuple(x) for x in _flat(second)]
    # The two neighbours left, then uniform samples to fill the batch.
    assert set(second[:2]) == all_neighbours - set(first)
    state, _ = LS.tell(state, _actions(second), np.zeros(P, np.float32))
    assert not bool(state.has_incumbent) and int(state.restarts) == 1
    assert not np.any(state.tried) and np.isneginf(float(state.incumbent_reward))
    # After the restart the next batch's best is the incumbent, although worse than the optimum.
    third, state = LS.ask(state, jax.random.key(3))
    state, _ = LS.tell(state, third, np.asarray([0.6, 0.8, 0.7, 0.55], np.float32))
    np.testing.assert_array_equal(state.incumbent, _flat(third)[1])


def test_no_neighbour_is_asked_twice_while_the_incumbent_stands():
    incumbent = [0, 1, 2, 3, 0, 1]
    state = _with_incumbent(LS_WIDE, incumbent, space=WIDE)
    asked = []
    for i in range(5):  # 18 neighbours, 4 a batch: 4 + 4 + 4 + 4 + 2, then the optimum is known
        batch, state = LS_WIDE.ask(state, jax.random.key(i))
        batch = [tuple(x) for x in _flat(batch, WIDE)]
        asked += batch[:min(P, 18 - len(asked))]
        assert all(_hamming(x, incumbent) == 1 for x in asked)
        state, _ = LS_WIDE.tell(state, _actions(batch, WIDE), np.zeros(P, np.float32))
        assert int(state.restarts) == (i == 4)
    assert len(asked) == len(set(asked)) == 18
    assert set(asked) == set(_neighbours(incumbent, [4] * 6))


def test_the_incumbent_moves_to_an_improving_pipeline():
    incumbent = np.asarray([1, 0, 2])
    state = _with_incumbent(LS, incumbent)
    asked, state = LS.ask(state, jax.random.key(1))
    x = _flat(asked)
    state, metrics = LS.tell(state, asked, np.asarray([0.4, 0.9, 0.6, np.inf], np.float32))
    # +inf is not finite: the worst. 0.9 beats 0.5 and wins over 0.6.
    np.testing.assert_array_equal(state.incumbent, x[1])
    assert float(metrics["incumbent_reward"]) == pytest.approx(0.9)
    # The tried mask restarted, holding what is known around the new incumbent: the old
    # incumbent and any told pipeline one decision from it.
    known = {tuple(incumbent)} | {tuple(y) for y in x}
    expect = {y for y in _neighbours(x[1], [2, 3, 4]) if y in known}
    flat = FlatSpace(SMALL)
    tried = {tuple(np.asarray(flat.neighbour(x[1], k))) for k in np.flatnonzero(state.tried)}
    assert tried == expect and tuple(incumbent) in tried
    # A better pipeline that is not a neighbour (a uniform fill, a warm start) moves it too.
    far = (x[1] + np.asarray([1, 1, 1])) % np.asarray([2, 3, 4])
    state, _ = LS.tell(state, _actions(far), np.asarray([1.0], np.float32))
    np.testing.assert_array_equal(state.incumbent, far)
    # x[1] is three decisions away; what is tried is what was told one decision from `far`.
    told = known | {tuple(x[1])}
    tried = {tuple(np.asarray(flat.neighbour(far, k))) for k in np.flatnonzero(state.tried)}
    assert tried == {y for y in _neighbours(far, [2, 3, 4]) if y in told}


def test_any_batch_size_and_padding_marks_nothing():
    """Five rows with P = 4 are padded with zero rows to 8: [1, 0, 0] is one decision from the
    zero row, which must not be marked."""
    incumbent = np.asarray([1, 0, 0])
    state = _with_incumbent(LS, incumbent)
    told = np.asarray([[1, 1, 0], [1, 2, 0], [1, 0, 1], [1, 0, 2], [0, 2, 3]])
    state, metrics = LS.tell(state, _actions(told), np.zeros(5, np.float32))
    flat = FlatSpace(SMALL)
    tried = {tuple(np.asarray(flat.neighbour(incumbent, k))) for k in np.flatnonzero(state.tried)}
    assert tried == {tuple(t) for t in told[:4]}
    assert float(metrics["mean_reward"]) == 0.0


def test_tell_before_any_ask_is_a_warm_start():
    state = LS.init(jax.random.key(0))
    state, _ = LS.tell(state, _actions([[0, 0, 0], [1, 2, 3], [0, 1, 1]]),
                       np.asarray([0.3, 0.8, 0.5], np.float32))
    np.testing.assert_array_equal(state.incumbent, [1, 2, 3])
    assert not np.any(state.tried)  # the other two are three decisions away
    asked, _ = LS.ask(state, jax.random.key(0))
    assert all(_hamming(x, [1, 2, 3]) == 1 for x in _flat(asked))


def test_state_is_checkpointable_with_one_buffer_per_leaf():
    state = LS.init(jax.random.key(0))
    assert checkpoint.checkpointable(state)
    pointers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)]
    assert len(set(pointers)) == len(pointers) == 8
    donated = jax.jit(lambda s: s._replace(restarts=s.restarts + 1), donate_argnums=0)(state)
    assert int(donated.restarts) == 1


def test_ask_is_pure_and_deterministic_given_the_key():
    state = _with_incumbent(LS_WIDE, [0] * 6, space=WIDE)
    a1, s1 = LS_WIDE.ask(state, jax.random.key(3))
    a2, _ = LS_WIDE.ask(s1, jax.random.key(3))
    a3, _ = LS_WIDE.ask(state, jax.random.fold_in(jax.random.key(3), 1))
    np.testing.assert_array_equal(_flat(a1, WIDE), _flat(a2, WIDE))
    assert not np.array_equal(_flat(a1, WIDE), _flat(a3, WIDE))
    jax.tree.map(np.testing.assert_array_equal, s1, state)


def test_make_searcher_builds_local_search():
    c = config_lib.base_config()
    c.search.algorithm = "local"
    c.search.pipelines = P
    assert "local" in config_lib.ALGORITHMS and "local" in config_lib.REPEAT_AWARE
    state = agents.make_searcher(c, WIDE).init(jax.random.key(0))
    assert state.tried.shape == (18,)


def _driven(tmp_path, name, iterations):
    c = config_lib.base_config()
    c.search.algorithm = "local"
    c.search.iterations = iterations
    c.search.pipelines = 4
    space = make_pipeline_space(c.spaces)

    def objective(pipelines):
        return [float(np.mean(np.concatenate([space[a].encode(p[a]) for a in space.agents]) == 0))
                for p in pipelines]

    search.run(c, str(tmp_path / name), objective=objective, progress=False)
    with open(tmp_path / name / search.TRIALS) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "wall_time"} for line in f]


def test_driven_search_resumes_from_its_checkpoint(tmp_path):
    full = _driven(tmp_path, "full", 5)
    _driven(tmp_path, "resumed", 3)
    assert os.path.isdir(tmp_path / "resumed" / checkpoint.DIRECTORY)
    assert _driven(tmp_path, "resumed", 5) == full
    # The second batch is made of neighbours of the first batch's best (the first, if tied).
    tokens = [np.concatenate([np.ravel(t["tokens"][a]) for a in sorted(t["tokens"])])
              for t in full]
    best = int(np.argmax([t["reward"] for t in full[:4]]))
    assert all(_hamming(x, tokens[best]) == 1 for x in tokens[4:8])


OPT_P = 8
OPT_SEARCHERS = {"local": make_local_search(WIDE, OPT_P),
                 "random": make_random_search(WIDE, OPT_P)}


def _iterations_to_optimum(searcher, seed, budget):
    objective = make_objective({"a": (4,) * 3, "b": (4,) * 3}, seed=seed)
    guard = agents.RepeatGuard(searcher, avoid=True)
    key = jax.random.key(seed)
    state = searcher.init(key)
    for it in range(budget):
        actions, replaced, state = guard.propose(state, jax.random.fold_in(key, it))
        rewards = np.asarray(objective.true_reward(actions))
        state = guard.learn(state, actions, replaced, rewards)
        if rewards.max() > 1 - 1e-6:
            return it + 1
    return None


def test_finds_the_optimum_of_a_small_cooperative_objective():
    """4096 pipelines, 15 iterations of 8 (120 evaluations, 3% of the space): random search
    finds the optimum with probability 1 - (1 - 1/4096)^120 = 3%, local search on most seeds."""
    found = {name: [_iterations_to_optimum(s, seed, 15) for seed in range(8)]
             for name, s in OPT_SEARCHERS.items()}
    assert sum(i is not None for i in found["local"]) >= 6, found
    assert sum(i is not None for i in found["random"]) <= 2, found


def test_remembered_pipelines_are_not_asked_again_and_a_better_one_is_moved_to():
    state = _with_incumbent(LS, [1, 0, 2])
    first, state = LS.ask(state, jax.random.key(1))
    x = _flat(first)
    state, _ = LS.tell(state, first, np.full(P, 0.5, np.float32))  # no move
    # A restart, then an incumbent one decision from one of those 0.5s but worse than it: it
    # moves to the remembered 0.5 at once, without asking for it.
    far = x[0].copy()
    far[0] = 1 - far[0]
    restarted = state._replace(has_incumbent=jnp.zeros((), bool),
                               incumbent_reward=jnp.full((), -jnp.inf))
    state, _ = LS.tell(restarted, _actions(far), np.asarray([0.2], np.float32))
    np.testing.assert_array_equal(state.incumbent, x[0])
    assert float(state.incumbent_reward) == pytest.approx(0.5)
    # Every neighbour told before is tried: the next asks never hold one of them.
    told = {tuple(y) for y in x} | {tuple(far), (1, 0, 2)}
    asked, state = LS.ask(state, jax.random.key(5))
    neighbours = [tuple(y) for y in _flat(asked) if _hamming(y, x[0]) == 1]
    assert neighbours and not set(neighbours) & told
