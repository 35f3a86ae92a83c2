"""Critic-screened proposals: pipeline identity, novelty, neighbours, acquisition, and MA2ML's
screened ask (never an evaluated pipeline; better batches than its own policy's samples).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from ma2ml_jax.agents import pipeline_key, screening
from ma2ml_jax.agents.ma2ml import MA2MLConfig, build_ma2ml
from ma2ml_jax.agents.neighbourhood import FlatSpace
from ma2ml_jax.bench.objectives import make_objective, synthetic_space
from ma2ml_jax.spaces import choices_pipeline_space

SPACE = synthetic_space({"a": (4, 3), "b": (2, 5, 3)})  # 360 pipelines


def every_pipeline(space):
    sizes = [s for a in space.agents for s in space[a].sizes]
    rows = np.array(list(itertools.product(*[range(s) for s in sizes])), np.int32)
    out, start = {}, 0
    for a in space.agents:
        n = space[a].n_decisions
        out[a] = rows[:, start:start + n]
        start += n
    return out


def test_hash_pairs_are_distinct_over_a_whole_space():
    everything = every_pipeline(SPACE)
    h1, h2 = screening.make_hash(SPACE)(everything)
    pairs = set(zip(np.asarray(h1).tolist(), np.asarray(h2).tolist()))
    assert len(pairs) == 360
    # Each hash alone separates them too (a swap of tokens between positions changes it).
    assert len(set(np.asarray(h1).tolist())) == 360


def test_novel_drops_seen_pipelines_and_keeps_one_of_each_duplicate():
    pipeline_hash = screening.make_hash(SPACE)
    everything = every_pipeline(SPACE)
    seen = screening.take(everything, jnp.asarray([3, 7, 11, 0]))
    valid = jnp.asarray([True, True, True, False])  # slot 3 is unused: pipeline 0 is not seen
    cand = screening.take(everything, jnp.asarray([7, 5, 5, 0, 3, 9, 0, 5]))
    keep = np.asarray(screening.novel(pipeline_hash(cand), pipeline_hash(seen), valid))
    assert keep.tolist() == [False, True, False, True, False, True, False, False]


def test_neighbours_are_every_one_decision_change():
    parent = {"a": jnp.asarray([[1, 2]]), "b": jnp.asarray([[0, 4, 1]])}
    nb = screening.neighbours(SPACE, parent)
    flat = np.concatenate([np.asarray(nb[a]) for a in SPACE.agents], 1)
    p = np.concatenate([np.asarray(parent[a]) for a in SPACE.agents], 1)
    assert flat.shape == (3 + 2 + 1 + 4 + 2, 5)
    assert ((flat != p).sum(1) == 1).all()
    assert len({tuple(r) for r in flat}) == len(flat)


def test_policy_mutants_take_a_subset_of_decisions_from_the_samples():
    space = synthetic_space({"a": (4, 1, 3), "b": (2, 5, 3)})  # decision 1 has one choice
    flat = FlatSpace(space)
    parents = jnp.asarray([[0, 0, 0, 0, 0, 0], [1, 0, 2, 1, 4, 2]], jnp.int32)
    # Every sampled value differs from both parents' where the decision can change.
    samples = jnp.tile(jnp.asarray([[3, 0, 1, 1, 2, 1]], jnp.int32), (2 * 500, 1))
    samples = samples.at[500:, 3].set(0)
    out = np.asarray(screening.policy_mutants(flat, parents, samples, jax.random.key(0), 3))
    base = np.repeat(np.asarray(parents), 500, 0)
    changed = out != base
    # A change takes the sample's value, never touches the one-choice decision, and moves
    # 1 .. 3 decisions, each of those sizes drawn.
    assert (out[changed] == np.asarray(samples)[changed]).all()
    assert not changed[:, 1].any()
    counts = changed.sum(1)
    assert counts.min() == 1 and counts.max() == 3
    assert set(np.unique(counts[:500]).tolist()) == {1, 2, 3}
    # Every changeable decision gets changed somewhere.
    assert changed[:500].any(0)[[0, 2, 3, 4, 5]].all()
    # Restricted to agent b's decisions (one agent's, as `mutant_agents="credit"` does), with at
    # most as many changes as b has decisions.
    allowed = jnp.asarray([[False, False, False, True, True, True]] * 1000)
    out = np.asarray(screening.policy_mutants(flat, parents, samples, jax.random.key(1), 8,
                                              allowed))
    changed = out != base
    assert not changed[:, :3].any() and changed.sum(1).min() == 1
    assert changed.sum(1).max() == 3


def test_ucb_prefers_uncertain_candidates_and_respects_allowed():
    scores = jnp.asarray([[1.0, 0.0, 2.0, 0.5], [1.0, 2.0, 2.0, 0.5]])  # means 1, 1, 2, .5
    allowed = jnp.asarray([True, True, False, True])
    key = jax.random.key(0)
    tier = screening.tiers(allowed)
    assert screening.select(scores, tier, 1, "ucb", 0.0, key).tolist() in ([0], [1])
    assert screening.select(scores, tier, 1, "ucb", 1.0, key).tolist() == [1]  # std 1
    assert sorted(screening.select(scores, tier, 3, "ucb", 0.0, key).tolist()) == [0, 1, 3]
    # Fewer allowed than asked: the rest are the best of the others.
    assert sorted(screening.select(scores, tier, 4, "ucb", 0.0, key).tolist()) == [0, 1, 2, 3]


def test_thompson_picks_distinct_allowed_candidates_one_member_each():
    scores = jnp.asarray([[3.0, 2.0, 1.0, 0.0, 9.0], [0.0, 1.0, 2.0, 3.0, 9.0]])
    allowed = jnp.asarray([True, True, True, True, False])
    tier = screening.tiers(allowed)
    picks = screening.select(scores, tier, 2, "thompson", 0.0, jax.random.key(1)).tolist()
    assert sorted(picks) == [0, 3]  # each member's favourite among the allowed
    picks = screening.select(scores, tier, 4, "thompson", 0.0, jax.random.key(1)).tolist()
    assert sorted(picks) == [0, 1, 2, 3]


def test_select_takes_a_lower_tier_only_when_the_higher_ones_are_used_up():
    scores = jnp.asarray([[5.0, 1.0, 9.0, 2.0, 8.0, 0.0]] * 2)
    tier = screening.tiers(jnp.asarray([False, True, False, True, False, False]),
                           jnp.asarray([True, False, False, False, True, False]))
    assert tier.tolist() == [1, 0, 2, 0, 1, 2]
    key = jax.random.key(0)
    for acquisition in ("ucb", "thompson"):
        got = screening.select(scores, tier, 5, acquisition, 1.0, key).tolist()
        assert sorted(got[:2]) == [1, 3] and sorted(got[2:4]) == [0, 4], acquisition
        assert got[4] == 2, acquisition  # the best of the last tier


def _screened(objective, pipelines, **kw):
    config = MA2MLConfig(proposal="screened", ensemble=3, candidates=64, critic_batch=16,
                         actor_batch=8, num_alternatives=2, updates=4, **kw)
    return build_ma2ml(objective.space, pipelines, config)


def test_other_values_follow_the_policy_among_the_values_the_parent_lacks():
    probs = np.array([[0.1, 0.6, 0.3, 0.0], [0.7, 0.1, 0.1, 0.1]])  # decision 0 has 3 choices
    logits = jnp.log(jnp.asarray(probs[None], jnp.float32)).at[0, 0, 3].set(-1e9)
    parents = jnp.asarray([[1, 0]], jnp.int32)  # each parent holds its decision's mode
    n = 20_000
    out = np.asarray(screening.other_values(logits, parents, jax.random.key(0), n))
    assert out.shape == (n, 2)
    for d in range(2):
        freq = np.bincount(out[:, d], minlength=4) / n
        expect = probs[d].copy()
        expect[int(parents[0, d])] = 0.0
        np.testing.assert_allclose(freq, expect / expect.sum(), atol=0.015)


@pytest.mark.parametrize("agents_rule", ["any", "credit"])
def test_screened_ask_with_policy_mutants_proposes_new_pipelines(agents_rule):
    objective = make_objective({"a": (3, 2, 4), "b": (2, 3, 3)}, seed=0)
    parts = _screened(objective, 4, mutants=8, max_changes=3, mutant_agents=agents_rule)
    s = parts.searcher
    state = s.init(jax.random.key(0))
    seen = set()
    for it in range(4):
        actions, state = s.ask(state, jax.random.key(it))
        keys = [pipeline_key(actions, p) for p in range(4)]
        assert len(set(keys)) == 4 and not set(keys) & seen, it
        seen |= set(keys)
        for a in objective.space.agents:
            assert (np.asarray(actions[a]) < np.asarray(objective.space[a].sizes)).all()
        state, _ = s.tell(state, actions, np.asarray(objective.true_reward(actions)))


@pytest.mark.parametrize("share", [2, 4])
def test_local_share_proposes_new_neighbours_of_the_best_pipeline(share):
    objective = make_objective({"a": (3, 2, 4), "b": (2, 3, 3)}, seed=0)
    s = _screened(objective, 4, local_share=share).searcher
    for seed in range(3):  # without the share, the critic's picks stray on most of these
        state = s.init(jax.random.key(seed))
        actions, state = s.ask(state, jax.random.key(1))
        rewards = np.asarray(objective.true_reward(actions))
        state, _ = s.tell(state, actions, rewards)
        best = np.concatenate([np.asarray(actions[a])[int(np.argmax(rewards))]
                               for a in objective.space.agents])
        told = {pipeline_key(actions, p) for p in range(4)}
        got, _ = s.ask(state, jax.random.key(2))
        rows = np.concatenate([np.asarray(got[a]) for a in objective.space.agents], 1)
        # The first `share` picks (the lowest tier) are one decision from the best, never told.
        assert ((rows[:share] != best).sum(1) == 1).all(), seed
        assert not {pipeline_key(got, p) for p in range(4)} & told, seed


@pytest.mark.parametrize("uniform", [8, 0])
def test_screened_ask_never_proposes_an_evaluated_pipeline(uniform):
    # Without uniform candidates, the uniform fill-in keeps the batch new once the policies'
    # samples and the best pipelines' neighbours are all evaluated.
    objective = make_objective({"a": (3, 2), "b": (2, 3)}, seed=0)  # 36 pipelines
    parts = _screened(objective, 4, uniform_candidates=uniform)
    s = parts.searcher
    state = s.init(jax.random.key(0))
    seen = set()
    for it in range(8):  # 32 of the 36 pipelines
        actions, state = s.ask(state, jax.random.key(it))
        keys = [pipeline_key(actions, p) for p in range(4)]
        assert len(set(keys)) == 4 and not set(keys) & seen, it
        seen |= set(keys)
        state, _ = s.tell(state, actions, np.asarray(objective.true_reward(actions)))


def test_critic_members_are_independent_and_screened_batches_beat_the_policy():
    objective = make_objective({"a": (4,) * 4, "b": (4,) * 4}, seed=5)  # 65,536 pipelines
    parts = _screened(objective, 8, parents=2)
    s = parts.searcher
    state = s.init(jax.random.key(1))
    leaf = state.critic["embed"]["a"]
    assert leaf.shape[0] == 3 and not np.allclose(leaf[0], leaf[1])  # own initializations
    for it in range(12):
        actions, state = s.ask(state, jax.random.key(it))
        state, _ = s.tell(state, actions, np.asarray(objective.true_reward(actions)))
    screened = np.mean([np.asarray(objective.true_reward(s.ask(state, jax.random.key(100 + i))[0]))
                        for i in range(4)])
    policy = np.mean([np.asarray(objective.true_reward({
        a: parts.policies[a].sample(state.policy[a], jax.random.key(200 + i), 8)
        for a in objective.space.agents})) for i in range(4)])
    assert screened > policy + 0.05, (screened, policy)


@pytest.mark.parametrize("acquisition", ["ucb", "thompson"])
def test_screened_search_reaches_the_optimum_of_a_small_objective(acquisition):
    objective = make_objective({"a": (4,) * 3, "b": (4,) * 3}, seed=2)  # 4096 pipelines
    parts = _screened(objective, 8, acquisition=acquisition)
    s = parts.searcher
    reached = 0
    for seed in range(3):
        state, best = s.init(jax.random.key(seed)), 0.0
        for it in range(30):  # 240 evaluations
            actions, state = s.ask(state, jax.random.key(1000 * seed + it))
            r = np.asarray(objective.true_reward(actions))
            best = max(best, float(r.max()))
            state, _ = s.tell(state, actions, r)
        reached += best > 1 - 1e-6
    assert reached >= 2


def test_quantile_critic_target_orders_the_top_where_failures_dwarf_it():
    """Rewards in [0.9, 1] with a tenth of failures at 0: the critic fitted to standardized
    rewards spends its fit on the failures; fitted to normal scores, it orders the top."""
    objective = make_objective({"a": (4,) * 3, "b": (4,) * 3}, seed=4)
    space = objective.space
    actions = space.sample(jax.random.key(0), 256)
    base = np.asarray(objective.true_reward(actions))
    fail = np.random.default_rng(0).random(256) < 0.1
    rewards = np.where(fail, 0.0, 0.9 + 0.1 * (base - base.min()) / np.ptp(base))
    top = ~fail & (rewards >= np.quantile(rewards[~fail], 0.5))
    held = space.sample(jax.random.key(1), 512)
    held_r = np.asarray(objective.true_reward(held))
    correlation = {}
    for target in ("standardized", "quantile"):
        parts = build_ma2ml(space, 8, MA2MLConfig(critic_target=target, ensemble=1,
                                                  critic_batch=64, updates=20))
        state = parts.searcher.init(jax.random.key(2))
        for i in range(0, 256, 16):
            state, _ = parts.searcher.tell(state, screening.take(actions, jnp.arange(i, i + 16)),
                                           rewards[i:i + 16])
        q = np.asarray(parts.critic.apply(jax.tree.map(lambda x: x[0], state.critic), held))
        good = held_r >= np.quantile(held_r, 0.5)
        correlation[target] = scipy.stats.spearmanr(q[good], held_r[good])[0]
    assert top.sum() > 50
    assert correlation["quantile"] > correlation["standardized"] + 0.1, correlation


# Numeric levels (ordered) beside an unordered decision: 8 x 5 x 3 x 6 = 720 pipelines.
LEVELS = choices_pipeline_space({
    "hpo": {"lr": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3], "depth": [2, 4, 8, 16, 32]},
    "nas": {"act": ["relu", "gelu", "silu"], "width": [8, 16, 24, 32, 48, 64]}})


def _levels_reward(actions):
    """A narrow optimum on the ordered levels (lr 5, depth 1, width 4), act 2 best."""
    x = np.concatenate([np.asarray(actions[a]) for a in LEVELS.agents], -1).astype(np.float32)
    return (-np.abs(x[:, 0] - 5) - np.abs(x[:, 1] - 1) - np.abs(x[:, 3] - 4)
            + 0.5 * (x[:, 2] == 2)).astype(np.float32)


def test_ordered_critic_and_steps_ask_and_tell_one_level_neighbours():
    config = MA2MLConfig(proposal="screened", ensemble=2, candidates=32, critic_batch=16,
                         actor_batch=8, num_alternatives=2, updates=2, critic_steps=4,
                         local_share=4, critic_order="thermometer", ordered_steps=True)
    parts = build_ma2ml(LEVELS, 4, config)
    s = parts.searcher
    steps = FlatSpace(LEVELS, ordered_steps=True)
    for seed in range(3):
        state = s.init(jax.random.key(seed))
        seen, best = set(), None
        for it in range(3):
            actions, state = s.ask(state, jax.random.key(10 * seed + it))
            keys = [pipeline_key(actions, p) for p in range(4)]
            assert len(set(keys)) == 4 and not set(keys) & seen, (seed, it)
            seen |= set(keys)
            rows = np.asarray(steps.flatten(actions))
            if best is not None:  # the local share: one-level steps from the best told so far
                k = [int(steps.neighbour_index(best, r)) for r in rows[:4]]
                assert max(k) < steps.num_neighbours, (seed, it, rows, best)
            rewards = _levels_reward(actions)
            state, metrics = s.tell(state, actions, rewards)
            assert np.isfinite(float(metrics["critic_loss"]))
            stored = np.asarray(steps.flatten(state.replay.data["tokens"]))[:4 * (it + 1)]
            best = stored[np.argmax(np.asarray(state.replay.data["reward"])[:4 * (it + 1)])]
