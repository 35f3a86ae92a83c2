"""Regularized evolution (Real et al. 2019): uniform until the population is full, tournaments
with replacement, one-decision mutations, ageing."""

import json
import os

import jax
import numpy as np
import pytest

from ma2ml_jax import agents, checkpoint, search
from ma2ml_jax import config as config_lib
from ma2ml_jax.agents.evolution import EvolutionConfig, make_evolution
from ma2ml_jax.agents.neighbourhood import FlatSpace
from ma2ml_jax.agents.random import make_random_search
from ma2ml_jax.bench.objectives import make_objective, synthetic_space
from ma2ml_jax.errors import ConfigError
from ma2ml_jax.spaces import make_pipeline_space

SPACE = synthetic_space({"a": (4, 4, 4), "b": (4, 4, 4)})  # 4096 pipelines, D = 6
P, N, S = 4, 6, 3
EVO = make_evolution(SPACE, P, EvolutionConfig(population=N, tournament=S))


def _flat(actions):
    return np.concatenate([np.asarray(actions[a]) for a in SPACE.agents], -1)


def _actions(flat):
    flat = np.asarray(flat, np.int32)
    return {"a": flat[:, :3], "b": flat[:, 3:]}


def _hamming(x, y):
    return int(np.sum(np.asarray(x) != np.asarray(y)))


def _told(members, rewards):
    """A state that was told `members` (int[B, 6]) with `rewards`, in that order."""
    state = EVO.init(jax.random.key(0))
    state, _ = EVO.tell(state, _actions(members), np.asarray(rewards, np.float32))
    return state


# Six members pairwise >= 4 decisions apart: a child (one decision from its parent) names it.
FAR = np.asarray([[0] * 6, [1] * 6, [2] * 6, [3] * 6, [0, 1, 2, 3, 0, 1], [2, 3, 0, 1, 2, 3]])


def _parents(state, asks=100):
    """The member index each child of `asks` batches was mutated from (FAR members)."""
    out = []
    for i in range(asks):
        children = _flat(EVO.ask(state, jax.random.key(i))[0])
        for c in children:
            d = [_hamming(c, m) for m in FAR]
            assert sorted(d)[0] == 1 and sorted(d)[1] >= 3, d
            out.append(int(np.argmin(d)))
    return np.asarray(out)


def test_asks_uniform_samples_until_the_population_is_full():
    zeros = np.zeros((N - 2, 6), np.int32)
    state = _told(zeros, np.ones(N - 2))
    before = np.concatenate([_flat(EVO.ask(state, jax.random.key(i))[0]) for i in range(5)])
    # Uniform: a sample one decision from zeros has probability 18/4096.
    assert sum(_hamming(x, zeros[0]) == 1 for x in before) <= 2
    state, _ = EVO.tell(state, _actions(zeros[:2]), np.ones(2, np.float32))
    assert int(state.told) == N
    after = np.concatenate([_flat(EVO.ask(state, jax.random.key(i))[0]) for i in range(5)])
    assert all(_hamming(x, zeros[0]) == 1 for x in after)  # children of an all-zeros population


def test_every_child_is_one_decision_from_a_member():
    rng = np.random.default_rng(0)
    members = rng.integers(0, 4, (N, 6))
    state = _told(members, rng.uniform(size=N))
    for i in range(10):
        for c in _flat(EVO.ask(state, jax.random.key(i))[0]):
            assert min(_hamming(c, m) for m in members) == 1


def test_mutation_is_uniform_over_decisions_and_other_values():
    """sizes (2, 3, 1, 4): the one-choice decision never changes, the other three change with
    probability 1/3 each, to each other value alike."""
    flat = FlatSpace(synthetic_space({"a": (2, 3), "b": (1, 4)}))
    x = np.asarray([1, 2, 0, 3], np.int32)
    keys = jax.random.split(jax.random.key(0), 6000)
    children = np.asarray(jax.vmap(flat.mutate, (0, None))(keys, x))
    changed = children != x
    assert np.all(changed.sum(1) == 1)
    np.testing.assert_allclose(changed.mean(0), [1 / 3, 1 / 3, 0, 1 / 3], atol=0.03)
    for d, others in ((1, [0, 1]), (3, [0, 1, 2])):
        values = children[changed[:, d], d]
        np.testing.assert_allclose([np.mean(values == v) for v in others],
                                   [1 / len(others)] * len(others), atol=0.04)


def test_tournament_winner_is_the_best_of_s_members_drawn_with_replacement():
    """The parent is the member of rank j (best j = 1) with probability
    ((N - j + 1)^S - (N - j)^S) / N^S: for N = 6, S = 3: 91, 61, 37, 19, 7, 1 (/216)."""
    rewards = np.asarray([0.3, 0.9, 0.1, 0.5, 0.7, 0.2], np.float32)
    parents = _parents(_told(FAR, rewards))
    by_rank = np.argsort(-rewards)  # member indices, best first
    freq = np.asarray([np.mean(parents == m) for m in by_rank])
    np.testing.assert_allclose(freq, np.asarray([91, 61, 37, 19, 7, 1]) / 216, atol=0.05)


def test_non_finite_rewards_count_as_the_worst():
    """Five NaN/inf members and one finite: the finite one wins whenever it is drawn
    (1 - (5/6)^3 = 0.42), a non-finite one otherwise, even a +inf one."""
    rewards = np.asarray([np.nan, np.inf, -0.5, np.nan, -np.inf, np.nan], np.float32)
    state = _told(FAR, rewards)
    stored = np.asarray(state.rewards)
    assert stored[2] == -0.5 and np.isneginf(stored).sum() == 5
    parents = _parents(state)
    assert np.mean(parents == 2) == pytest.approx(1 - (5 / 6) ** 3, abs=0.05)


def test_ageing_removes_the_oldest_whatever_their_reward():
    rng = np.random.default_rng(1)
    old = rng.integers(0, 4, (N, 6))
    new = rng.integers(0, 4, (N + 2, 6))
    state = _told(old, np.full(N, 10.0))
    state, _ = EVO.tell(state, _actions(new[:4]), np.zeros(4, np.float32))
    # The four oldest (the best ones) died; two old members and the four new ones remain.
    survivors = np.concatenate([old[4:], new[:4]])
    assert sorted(map(tuple, np.asarray(state.members))) == sorted(map(tuple, survivors))
    assert sorted(np.asarray(state.rewards)) == [0, 0, 0, 0, 10, 10]
    # A batch longer than the population keeps its newest N (8 rows: padded to 2P, no race).
    state, _ = EVO.tell(state, _actions(new), np.arange(N + 2, dtype=np.float32))
    assert int(state.told) == N + 4 + N + 2
    assert sorted(map(tuple, np.asarray(state.members))) == sorted(map(tuple, new[2:]))
    assert sorted(np.asarray(state.rewards)) == list(range(2, N + 2))


def test_tell_before_any_ask_and_any_batch_size():
    state = EVO.init(jax.random.key(0))
    state, metrics = EVO.tell(state, _actions(FAR[:5]), np.arange(5, dtype=np.float32))
    assert int(state.told) == 5  # 5 rows padded to 8: the padding is not told
    assert float(metrics["mean_reward"]) == pytest.approx(2.0)
    assert sorted(np.asarray(state.rewards))[-5:] == [0, 1, 2, 3, 4]
    assert np.isneginf(np.asarray(state.rewards)).sum() == 1


def test_state_is_checkpointable_with_one_buffer_per_leaf():
    state = EVO.init(jax.random.key(0))
    assert checkpoint.checkpointable(state)
    pointers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)]
    assert len(set(pointers)) == len(pointers) == 3
    # A jitted tell that donates its state accepts it.
    donated = jax.jit(lambda s: s._replace(told=s.told + 1), donate_argnums=0)(state)
    assert int(donated.told) == 1


def test_ask_is_pure_and_deterministic_given_the_key():
    state = _told(FAR, np.linspace(0, 1, N))
    a1, s1 = EVO.ask(state, jax.random.key(3))
    a2, _ = EVO.ask(s1, jax.random.key(3))
    a3, _ = EVO.ask(state, jax.random.fold_in(jax.random.key(3), 1))
    np.testing.assert_array_equal(_flat(a1), _flat(a2))
    assert not np.array_equal(_flat(a1), _flat(a3))
    jax.tree.map(np.testing.assert_array_equal, s1, state)


def test_make_searcher_reads_the_evolution_section():
    c = config_lib.base_config()
    c.search.algorithm = "evolution"
    assert "evolution" in config_lib.REPEAT_AWARE
    state = agents.make_searcher(c, SPACE).init(jax.random.key(0))
    assert state.members.shape == (30, 6)  # the default population
    c.evolution.tournament = 31
    with pytest.raises(ConfigError, match=r"evolution.tournament=31 must be in \[1, "
                                          r"evolution.population=30\]"):
        agents.make_searcher(c, SPACE)
    c.evolution.tournament = 10
    c.evolution.sample_size = 5
    with pytest.raises(ConfigError, match="evolution.sample_size is not a key of evolution"):
        agents.make_searcher(c, SPACE)


def _driven(tmp_path, name, iterations):
    c = config_lib.base_config()
    c.search.algorithm = "evolution"
    c.search.iterations = iterations
    c.search.pipelines = 4
    c.evolution.population = 6  # full after two iterations: tournaments from the third on
    c.evolution.tournament = 3
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
    assert len(full) == 20


OPT_SPACE = synthetic_space({"a": (4,) * 3, "b": (4,) * 3})
OPT_P = 8
OPT_SEARCHERS = {"evolution": make_evolution(OPT_SPACE, OPT_P),
                 "random": make_random_search(OPT_SPACE, OPT_P)}


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
    """4096 pipelines, 20 iterations of 8 (160 evaluations, 4% of the space): random search
    finds the optimum with probability 1 - (1 - 1/4096)^160 = 4%, evolution on most seeds (the
    population fills in the first four iterations)."""
    found = {name: [_iterations_to_optimum(s, seed, 20) for seed in range(8)]
             for name, s in OPT_SEARCHERS.items()}
    assert sum(i is not None for i in found["evolution"]) >= 6, found
    assert sum(i is not None for i in found["random"]) <= 2, found
