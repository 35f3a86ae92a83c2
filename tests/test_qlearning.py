"""Iranfar's multi-agent Q-learning: Alg. 1-3 worked by hand, Sec. VI-D graphs, the search loop."""

import itertools

import jax
import numpy as np
import pytest

from ma2ml_jax import agents, search
from ma2ml_jax import config as config_lib
from ma2ml_jax.agents import qlearning as ql
from ma2ml_jax.errors import ConfigError
from ma2ml_jax.spaces import Decision, PipelineSpace, Space, layerwise, make_pipeline_space


def chain_space(*sizes):
    """Agents a0, a1, ... with one decision of `sizes[i]` choices each: a chain of Q-agents."""
    return PipelineSpace({f"a{i}": Space(f"s{i}", [Decision("x", tuple(range(n)))])
                          for i, n in enumerate(sizes)})


def tell_rows(searcher, state, rows, rewards):
    actions = {f"a{i}": np.asarray(rows, np.int32)[:, i:i + 1] for i in range(len(rows[0]))}
    return searcher.tell(state, actions, np.asarray(rewards, np.float32))


def rows_of(actions, space):
    return np.concatenate([np.asarray(actions[a]) for a in space.agents], axis=1)


# ------------------------------------------------------------------------------- Alg. 2 by hand
def test_update_rule_by_hand_for_three_agents():
    # Agents of 2, 3 and 2 actions: Qt0 is 2 x 3, Qt1 (the last) is 3 x 2. alpha = 0.5 (kept
    # during exploration), gamma = 0.9.
    space = chain_space(2, 3, 2)
    s = ql.make_qlearning(space, 1, ql.QLearningConfig(alpha=0.5, gamma=0.9))
    state = s.init(jax.random.key(0))
    # Episode 1: (0, 1, 0), R = 1. Qt1's row 1 still has zeros -> Qt0[0,1] = 0 + 0.5 * 1 = 0.5.
    #   Qt1 is the last table -> Qt1[1,0] = 0 + 0.5 * 1 = 0.5.
    # Episode 2: (1, 1, 1), R = 2. Before it, Qt1[1,1] is still zero -> Qt0[1,1] = 0 + 0.5 * 2
    #   = 1.0; Qt1[1,1] = 0 + 0.5 * 2 = 1.0.
    # Episode 3: (0, 1, 1), R = -1. Qt1's row 1 is full (0.5, 1.0) -> line 8:
    #   Qt0[0,1] = (1 - 0.5) * 0.5 + 0.5 * (-1 + 0.9 * max(0.5, 1.0)) = 0.25 - 0.05 = 0.2;
    #   Qt1[1,1] = 1.0 + 0.5 * (-1) = 0.5.
    # Episode 4: (0, 1, 0) again, R = 10: a repeated hyper-parameter set -> no update.
    state, m = tell_rows(s, state, [[0, 1, 0], [1, 1, 1], [0, 1, 1], [0, 1, 0]],
                         [1.0, 2.0, -1.0, 10.0])
    np.testing.assert_allclose(state.q[0], [[0.0, 0.2, 0.0], [0.0, 1.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(state.q[1], [[0.0, 0.0], [0.5, 0.5], [0.0, 0.0]], atol=1e-6)
    np.testing.assert_array_equal(state.visits[0], [[0, 2, 0], [0, 1, 0]])
    np.testing.assert_array_equal(state.visits[1], [[0, 0], [1, 2], [0, 0]])
    assert int(m["repeats"]) == 1 and int(m["explored"]) == 4
    assert int(state.episodes) == 4 and int(state.exploit_episodes) == 0
    assert float(state.alpha) == pytest.approx(0.5)


def test_tell_is_pure_and_a_zero_valued_visited_cell_is_not_a_zero_cell():
    space = chain_space(2, 2)
    s = ql.make_qlearning(space, 1, ql.QLearningConfig(alpha=0.5))
    state = s.init(jax.random.key(0))
    # R = 0 leaves Qt0[0,0] at 0.0, but the cell was visited: exploration will not pick it again.
    after, m = tell_rows(s, state, [[0, 0]], [0.0])
    assert after.q[0][0, 0] == 0.0 and after.visits[0][0, 0] == 1
    assert int(m["zero_cells"]) == 3
    assert state.visits[0].sum() == 0 and int(state.episodes) == 0  # the input state unchanged
    rows = rows_of(s.ask(after, jax.random.key(1))[0], space)
    assert tuple(rows[0]) != (0, 0)


def test_alpha_decays_by_eq3_after_exploration():
    # One table of 1 x 2 cells: two exploration episodes, then every episode exploits.
    space = chain_space(1, 2)
    for schedule, expected in [("compound", [0.95, 0.95 * 0.999, 0.95 * 0.999 ** 3]),
                               ("exponential", [0.95, 0.95 * 0.999, 0.95 * 0.999 ** 2])]:
        s = ql.make_qlearning(space, 1, ql.QLearningConfig(alpha_schedule=schedule, gamma=1.0))
        state, _ = tell_rows(s, s.init(jax.random.key(0)), [[0, 0], [0, 1]], [1.0, 1.0])
        assert int(state.exploit_episodes) == 0
        alphas = []
        for reward in (2.0, 3.0, 4.0):  # repeats: alpha decays, Q stays
            state, m = tell_rows(s, state, [[0, 1]], [reward])
            alphas.append(float(state.alpha))
        np.testing.assert_allclose(alphas, expected, rtol=1e-6)
        assert int(state.exploit_episodes) == 3
        np.testing.assert_allclose(state.q[0], [[0.95, 0.95]], rtol=1e-6)


def test_alpha_of_the_first_new_exploitation_episode_updates_the_last_table():
    space = chain_space(1, 3)
    s = ql.make_qlearning(space, 1, ql.QLearningConfig(min_exploration=0))
    state, _ = tell_rows(s, s.init(jax.random.key(0)), [[0, 0], [0, 1], [0, 2]], [1, 1, 1])
    state, _ = tell_rows(s, state, [[0, 0]], [0.0])  # exploit episode n = 0 (a repeat)
    state = state._replace(seen=np.zeros_like(state.seen), n_seen=np.int32(0))  # forget sets
    state, _ = tell_rows(s, state, [[0, 2]], [2.0])  # n = 1: alpha = 0.95 * 0.999
    assert state.q[0][0, 2] == pytest.approx(0.95 + 0.95 * 0.999 * 2.0, rel=1e-6)


# ------------------------------------------------------------------------------- Alg. 1
def test_exploration_first_two_agents_pick_a_zero_cell_then_the_row_of_the_predecessor():
    graph = ql.graph_of(chain_space(2, 3, 2))
    visited = [np.ones((2, 3), bool), np.ones((3, 2), bool)]
    visited[0][1, 2] = False  # the only zero cell of Qt0
    visited[1][2, 0] = False  # the only zero cell in Qt1's row 2
    visited[1][0, 1] = False  # a zero cell in another row: not reachable from a1 = 2
    for seed in range(5):
        a = ql.explore_episode(graph, visited, np.random.default_rng(seed))
        assert a.tolist() == [1, 2, 0]
    # No zero cell in the predecessor's row: a random action (Alg. 1's fallback).
    visited[1][2, 0] = True
    seen = {int(ql.explore_episode(graph, visited, np.random.default_rng(s))[2])
            for s in range(20)}
    assert seen == {0, 1}


def test_exploration_without_repetition_fills_every_cell_in_one_batch():
    # Agents of 3, 4, 2 actions: Qt0 has 12 cells, Qt1 8. Alg. 1 over 12 episodes of one ask
    # takes each Qt0 cell exactly once (the pair is picked among zero cells), so each a1 comes
    # 3 times, and Qt1's row a1 is filled by the first two of them.
    space = chain_space(3, 4, 2)
    s = ql.make_qlearning(space, 12)
    state = s.init(jax.random.key(0))
    actions, _ = s.ask(state, jax.random.key(3))
    rows = rows_of(actions, space)
    assert sorted(map(tuple, rows[:, :2].tolist())) == list(itertools.product(range(3),
                                                                              range(4)))
    assert {tuple(r) for r in rows[:, 1:].tolist()} == set(itertools.product(range(4), range(2)))
    state, m = s.tell(state, actions, np.zeros(12, np.float32))
    assert int(m["zero_cells"]) == 0 and int(m["explored"]) == 12
    # The next asks exploit: epsilon = 0.99^0 = 1 for the first, so that one is random.
    assert not ql.exploring([v > 0 for v in state.visits], int(state.episodes),
                            ql.QLearningConfig())


def test_exploration_lasts_min_exploration_episodes():
    space = chain_space(1, 2)
    cfg = ql.QLearningConfig(min_exploration=5)
    s = ql.make_qlearning(space, 1, cfg)
    state = s.init(jax.random.key(0))
    for i in range(5):
        state, m = tell_rows(s, state, [[0, i % 2]], [1.0])
        assert int(m["explored"]) == 1
    state, m = tell_rows(s, state, [[0, 0]], [1.0])
    assert int(m["explored"]) == 0 and int(state.exploit_episodes) == 1


# ------------------------------------------------------------------------------- Alg. 3
def test_exploitation_takes_the_argmax_cell_then_the_argmax_of_each_row():
    graph = ql.graph_of(chain_space(2, 3, 2))
    q = (np.array([[0.1, 0.9, 0.3], [0.2, 0.1, 0.0]], np.float32),
         np.array([[5.0, 0.0], [0.4, 0.7], [0.0, 9.0]], np.float32))
    # The best cell of Qt0 is (0, 1); in Qt1's row 1 the best is column 1 (not the global max).
    assert ql.exploit_episode(graph, q, np.random.default_rng(0)).tolist() == [0, 1, 1]


def test_epsilon_greedy_exploitation_in_ask():
    space = chain_space(2, 3, 2)
    cfg = ql.QLearningConfig(epsilon_decay=1e-6)  # epsilon: 1 for n = 0, then ~0
    s = ql.make_qlearning(space, 6, cfg)
    state = s.init(jax.random.key(0))
    state = state._replace(
        q=(np.array([[0.1, 0.9, 0.3], [0.2, 0.1, 0.0]], np.float32),
           np.array([[5.0, 0.0], [0.4, 0.7], [0.0, 9.0]], np.float32)),
        visits=(np.ones((2, 3), np.int32), np.ones((3, 2), np.int32)))
    rows = rows_of(s.ask(state, jax.random.key(1))[0], space)
    assert (rows[1:] == [0, 1, 1]).all()  # greedy from the second exploitation episode on
    # With epsilon = 1 always, the actions are random: many distinct sets.
    s1 = ql.make_qlearning(space, 40, ql.QLearningConfig(epsilon_decay=1.0))
    rows = rows_of(s1.ask(state, jax.random.key(1))[0], space)
    assert len({tuple(r) for r in rows.tolist()}) > 5


# ------------------------------------------------------------------------------- Sec. VI-D
def branching_graph(sizes=(2, 2, 2, 2)):
    # 0 feeds 1 and 2 (Fig. 8a); 3 is fed by 1 and 2 (Fig. 8b).
    space = PipelineSpace({f"a{i}": Space(f"s{i}", [Decision("x", tuple(range(n)))])
                           for i, n in enumerate(sizes)})
    return space, ql.QGraph(tuple((f"a{i}", 0) for i in range(4)), tuple(sizes),
                            ((0, 1), (0, 2), (1, 3), (2, 3)))


def test_branching_exploration():
    _, graph = branching_graph()
    visited = [np.ones((2, 2), bool) for _ in range(4)]
    visited[1][1, 0] = False  # the only zero cell of the root's tables: Qt(0->2)[1, 0]
    visited[2][:, 1] = False  # rows of Qt(1->3): column 1 is zero
    visited[3][0, :] = False  # Qt(2->3)[0]: both zero
    for seed in range(5):
        a = ql.explore_episode(graph, visited, np.random.default_rng(seed))
        assert (a[0], a[2]) == (1, 0)  # the root and its successor jointly (Alg. 1 line 3)
        assert a[3] == 1  # zero in both incoming rows (1 in Qt(1->3), 2 in Qt(2->3))


def test_branching_update_uses_every_successor_table():
    _, graph = branching_graph()
    q = tuple(np.full((2, 2), v, np.float32) for v in (0.0, 0.0, 0.0, 0.0))
    q = (q[0], q[1], np.array([[0.0, 0.0], [0.3, 0.8]], np.float32),
         np.array([[0.6, 0.1], [0.0, 0.0]], np.float32))
    visits = tuple(np.ones((2, 2), np.int32) for _ in range(4))
    # Actions (a0, a1, a2, a3) = (0, 1, 0, 1), R = 1, alpha = 0.5, gamma = 1:
    #   Qt(0->1)[0,1] = 0.5 * 0 + 0.5 * (1 + max Qt(1->3)[1] = 0.8) = 0.9
    #   Qt(0->2)[0,0] = 0.5 * 0 + 0.5 * (1 + max Qt(2->3)[0] = 0.6) = 0.8
    #   Qt(1->3)[1,1] = 0.8 + 0.5 * 1 = 1.3 and Qt(2->3)[0,1] = 0.1 + 0.5 = 0.6 (last tables)
    new_q, new_visits = ql.update(graph, q, visits, np.array([0, 1, 0, 1]), 1.0, 0.5, 1.0)
    assert new_q[0][0, 1] == pytest.approx(0.9)
    assert new_q[1][0, 0] == pytest.approx(0.8)
    assert new_q[2][1, 1] == pytest.approx(1.3)
    assert new_q[3][0, 1] == pytest.approx(0.6)
    assert sum(int(v.sum()) for v in new_visits) == 16 + 4
    # A zero cell left in a successor's row: the plain accumulation (Alg. 2 line 6).
    visits = (visits[0], visits[1], np.array([[1, 1], [1, 0]], np.int32), visits[3])
    new_q, _ = ql.update(graph, q, visits, np.array([0, 1, 0, 1]), 1.0, 0.5, 1.0)
    assert new_q[0][0, 1] == pytest.approx(0.5)


def test_branching_exploitation():
    _, graph = branching_graph()
    q01 = np.array([[0.1, 0.2], [0.0, 0.3]], np.float32)
    q02 = np.array([[0.9, 0.0], [0.1, 0.1]], np.float32)
    # The root maximizes over both of its tables: row 0 holds the best cell (0.9, Fig. 8a).
    # Then a1 = argmax q01[0] = 1 and a2 = argmax q02[0] = 0.
    agree = (q01, q02, np.array([[0, 0], [0.5, 0.2]], np.float32),
             np.array([[0.3, 0.1], [0, 0]], np.float32))
    assert ql.exploit_episode(graph, agree, np.random.default_rng(0)).tolist() == [0, 1, 0, 0]
    # The incoming rows disagree (0.5 > 0.2 votes 0, 0.1 < 0.45 votes 1): the best mean,
    # (0.3, 0.325) -> 1 (Fig. 8b).
    split = agree[:3] + (np.array([[0.1, 0.45], [0, 0]], np.float32),)
    assert ql.exploit_episode(graph, split, np.random.default_rng(0)).tolist() == [0, 1, 0, 1]


def test_three_predecessors_majority_beats_the_mean():
    graph = ql.QGraph(tuple((f"a{i}", 0) for i in range(5)), (1, 1, 1, 1, 2),
                      ((0, 1), (0, 2), (0, 3), (1, 4), (2, 4), (3, 4)))
    one = np.zeros((1, 1), np.float32)
    q = (one, one, one, np.array([[1.0, 0.0]]), np.array([[0.6, 0.5]]), np.array([[0.0, 5.0]]))
    # Votes: action 0 by two rows, action 1 by one (whose mean is higher): the majority wins.
    assert ql.exploit_episode(graph, q, np.random.default_rng(0))[4] == 0


def test_layerwise_graph_follows_the_layer_graph():
    space = layerwise.layerwise_pipeline_space("branch_tiny")
    graph = ql.graph_of(space)
    assert graph.edges == ((0, 1), (0, 2), (1, 3), (2, 3), (3, 4), (4, 5))
    assert [a for a, _ in graph.nodes] == [f"layer0{i}" for i in range(6)]
    s = ql.make_qlearning(space, 3)
    state = s.init(jax.random.key(0))
    for it in range(30):  # 4 x 4 tables: 90 episodes leave the exploration phase
        actions, state = s.ask(state, jax.random.key(it))
        state, m = s.tell(state, actions, np.ones(3, np.float32))
    assert int(m["zero_cells"]) == 0 and int(state.exploit_episodes) > 0
    vgg = ql.graph_of(layerwise.layerwise_pipeline_space("vgg16"))
    assert max(vgg.sizes[u] * vgg.sizes[v] for u, v in vgg.edges) == 400  # Sec. VIII-D


# ------------------------------------------------------------------------------- the driver
def _layerwise_config(iterations, pipelines=4, **qlearning):
    c = config_lib.base_config()
    c.spaces = layerwise.layerwise_spaces_config("vgg_small")
    c.search.algorithm = "qlearning"
    c.search.iterations = iterations
    c.search.pipelines = pipelines
    c.evaluate.epochs = 3
    c.reward.kind = "iranfar"
    c.qlearning.update(qlearning)
    return c


def _objective(pipelines):
    # Separable: the fraction of layers at their last tuple (the optimum is 1).
    decisions = layerwise.layerwise_decisions("vgg_small")
    space = layerwise.layerwise_pipeline_space("vgg_small")
    return [float(np.mean([space[a].encode(p[a])[0] == decisions[a][0] - 1 for a in decisions]))
            for p in pipelines]


def test_search_run_with_qlearning_on_a_layerwise_space(tmp_path):
    c = _layerwise_config(iterations=14, epsilon_decay=0.9)
    result = search.run(c, str(tmp_path / "run"), objective=_objective, progress=False)
    trials = result.trials
    assert len(trials) == 56
    # Exploration: the 24 cells of the 12 x 2 tables need >= 24 episodes, without repeats.
    first = [tuple(t["tokens"][a][0] for a in sorted(t["tokens"])) for t in trials[:24]]
    assert len(set(first)) == 24
    assert {t[0] for t in first} == set(range(12))  # layer00 took each of its 12 tuples
    # Exploitation with epsilon = 0.9^n: by the end the agents repeat one greedy set (the
    # paper's convergence; repeats update nothing).
    last = {tuple(t["tokens"][a][0] for a in sorted(t["tokens"])) for t in trials[-8:]}
    assert len(last) == 1
    # Resuming replays ask/tell and goes on identically.
    c8 = _layerwise_config(iterations=8, epsilon_decay=0.9)
    search.run(c8, str(tmp_path / "resumed"), objective=_objective, progress=False)
    resumed = search.run(c, str(tmp_path / "resumed"), objective=_objective, progress=False)
    assert [t["tokens"] for t in resumed.trials] == [t["tokens"] for t in trials]


@pytest.mark.parametrize("key, value, message", [
    ("alpha_schedul", "compound", "qlearning.alpha_schedul is not a key of qlearning"),
    ("alpha_schedule", "linear", "qlearning.alpha_schedule='linear' is not one of"),
    ("alpha", 1.5, "qlearning.alpha=1.5 must be in"),
    ("memory", 0, "qlearning.memory >= 1"),
])
def test_bad_qlearning_settings_are_config_errors(key, value, message):
    c = _layerwise_config(iterations=1)
    with c.qlearning.unlocked():
        c.qlearning[key] = value
    space = make_pipeline_space(c.spaces)
    with pytest.raises(ConfigError, match=message):
        agents.make_searcher(c, space)


def test_qlearning_is_registered_but_not_repeat_aware():
    assert "qlearning" in config_lib.ALGORITHMS
    assert "qlearning" not in config_lib.REPEAT_AWARE
