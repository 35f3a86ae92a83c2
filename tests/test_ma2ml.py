"""MA2ML's math on a small cooperative problem with a known reward table: the counterfactual
baseline (12) and the advantages of (13) against brute-force enumeration, the policy gradient (13)
against the exact gradient of the regularized objective and its direction, one update step's
critic (11) and target (14) against a hand-made step, the paper's Algorithm 1 (`PAPER`) tell
against a hand-made iteration, Theorem 1's monotone improvement, and search against random
search."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from ma2ml_jax.agents.ma2ml import (
    PAPER,
    MA2MLConfig,
    actor_surrogate,
    build_ma2ml,
    counterfactual_baseline,
    make_ma2ml,
)
from ma2ml_jax.agents.policy import make_policy
from ma2ml_jax.agents.random import make_random_search
from ma2ml_jax.bench.objectives import make_objective

LAM = 0.3
# 3 agents x 2 decisions: 12 * 6 * 4 = 288 joint actions, enumerable; pair terms couple agents.
TABLE = make_objective({"aug": (3, 4), "nas": (2, 3), "hpo": (2, 2)}, seed=7, penalty=0.8)


def _policies(kind):
    return {a: make_policy(TABLE.space[a], kind, hidden=8) for a in TABLE.agents}


def _random_params(policies, seed, scale=1.0):
    out = {}
    for i, (a, pol) in enumerate(policies.items()):
        p = pol.init(jax.random.key(seed + i))
        leaves, tree = jax.tree.flatten(p)
        keys = jax.random.split(jax.random.key(seed + 50 + i), len(leaves))
        out[a] = jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape)
                                           for x, k in zip(leaves, keys)])
    return out


def _agent_actions(agent):
    sizes = TABLE.space[agent].sizes
    return jnp.asarray(list(itertools.product(*[range(s) for s in sizes])), jnp.int32)


def _joint_actions():
    per = [np.asarray(_agent_actions(a)) for a in TABLE.agents]
    idx = np.asarray(list(itertools.product(*[range(len(p)) for p in per])))
    return {a: jnp.asarray(p[idx[:, i]]) for i, (a, p) in enumerate(zip(TABLE.agents, per))}


def _sample(policies, params, key, num):
    return {a: policies[a].sample(params[a], jax.random.fold_in(key, i), num)
            for i, a in enumerate(policies)}


@pytest.mark.parametrize("kind", ["factorized", "autoregressive"])
def test_counterfactual_baseline_converges_to_its_expectation(kind):
    """(12) with large K equals sum_{a_i} pi_i(a_i) [Q(a_i, A_-i) - lam log(pi_i/rho_i)(a_i)]."""
    policies = _policies(kind)
    params, target = _random_params(policies, 0), _random_params(policies, 10)
    b, k = 3, 20000
    actions = _sample(policies, params, jax.random.key(1), b)
    alternatives = {a: x.reshape(k, b, -1) for a, x in
                    _sample(policies, params, jax.random.key(2), k * b).items()}
    got = counterfactual_baseline(TABLE.true_reward, policies, params, target, actions,
                                  alternatives, LAM)
    for i, a in enumerate(TABLE.agents):
        own = _agent_actions(a)
        pi = jnp.exp(policies[a].log_prob(params[a], own))
        ratio = policies[a].log_prob(params[a], own) - policies[a].log_prob(target[a], own)
        for j in range(b):
            joint = {c: own if c == a else jnp.broadcast_to(actions[c][j], (len(own),) +
                                                           actions[c].shape[1:])
                     for c in TABLE.agents}
            exact = float((pi * (TABLE.true_reward(joint) - LAM * ratio)).sum())
            assert float(got[i, j]) == pytest.approx(exact, abs=0.02), (a, j)


def _j_reg(policies, params, target, joint, lam):
    """Exact J_reg(pi, rho) = E_pi[R] - lam KL(pi || rho) over the enumerated joint actions (8)."""
    logp = sum(policies[a].log_prob(params[a], joint[a]) for a in policies)
    logq = sum(policies[a].log_prob(target[a], joint[a]) for a in policies)
    p = jnp.exp(logp)
    return (p * TABLE.true_reward(joint)).sum() - lam * (p * (logp - logq)).sum()


def test_policy_gradient_estimates_the_exact_gradient():
    """The surrogate of (13), with exact Q and fresh actions ~ pi, is an unbiased estimate of
    -grad J_reg(pi, rho): checked against jax.grad of the enumerated objective."""
    policies = _policies("factorized")
    params, target = _random_params(policies, 3, 0.7), _random_params(policies, 4, 0.7)
    joint = _joint_actions()
    exact = jax.grad(lambda p: -_j_reg(policies, p, target, joint, LAM))(params)
    b, k = 40000, 16
    actions = _sample(policies, params, jax.random.key(5), b)
    alternatives = {a: x.reshape(k, b, -1) for a, x in
                    _sample(policies, params, jax.random.key(6), k * b).items()}
    estimate = jax.grad(lambda p: actor_surrogate(policies, p, params, target, TABLE.true_reward,
                                                  actions, alternatives, LAM)[0])(params)
    for a in TABLE.agents:
        g, e = np.asarray(exact[a]["logits"]), np.asarray(estimate[a]["logits"])
        valid = np.arange(g.shape[1])[None] < TABLE.space[a].sizes[:, None]
        assert np.abs(g[valid]).max() > 0.01
        np.testing.assert_allclose(e[valid], g[valid], atol=0.1 * np.abs(g[valid]).max())
    scale = max(np.abs(np.asarray(exact[a]["logits"])).max() for a in TABLE.agents)

    def surrogate(p, ratio_term, baseline_kl):
        """(13) with the advantage's -lam log(pi/rho)(A_i) and the baseline's -lam KL term
        switched on or off (the baseline's expectation of Q is always there)."""
        q = TABLE.true_reward(actions)
        b = counterfactual_baseline(TABLE.true_reward, policies, params, target, actions,
                                    alternatives, LAM if baseline_kl else 0.0)
        ratio = jnp.stack([policies[a].log_prob(params[a], actions[a])
                           - policies[a].log_prob(target[a], actions[a]) for a in TABLE.agents])
        adv = jax.lax.stop_gradient(q[None] - (LAM * ratio if ratio_term else 0.0) - b)
        logp = jnp.stack([policies[a].log_prob(p[a], actions[a]) for a in TABLE.agents])
        return -(adv * logp).mean(1).sum()

    def max_error(grads):
        return max(np.abs(np.asarray(grads[a]["logits"]) - np.asarray(exact[a]["logits"]))[
            np.arange(exact[a]["logits"].shape[1])[None] < TABLE.space[a].sizes[:, None]].max()
            for a in TABLE.agents)

    # The hand-written surrogate with both terms is actor_surrogate's estimate.
    assert max_error(jax.grad(surrogate)(params, True, True)) < 0.1 * scale
    # The baseline's -lam KL(pi_i || rho_i) does not depend on A_i: dropping it leaves the
    # estimate unbiased (it only changes the variance).
    assert max_error(jax.grad(surrogate)(params, True, False)) < 0.1 * scale
    # The advantage's -lam log(pi_i/rho_i)(A_i) does depend on A_i: without it the estimate is
    # the gradient of E[R] alone, biased for J_reg.
    assert max_error(jax.grad(surrogate)(params, False, True)) > 0.3 * scale


def test_theorem1_policy_iteration_never_decreases_j():
    """Exact divergence policy iteration (9), rho^{k+1} = pi^k, over factorized policies: each
    pi^{k+1} maximizes J_reg(., pi^k) (exact gradient ascent from pi^k); J_init never drops."""
    policies = _policies("factorized")
    params = _random_params(policies, 8, 0.5)
    joint = _joint_actions()
    j_init = jax.jit(lambda p: _j_reg(policies, p, p, joint, 0.0))
    grad = jax.jit(jax.grad(lambda p, rho: _j_reg(policies, p, rho, joint, 1.0)))
    values = [float(j_init(params))]
    for _ in range(8):
        target = params
        for _ in range(60):
            params = jax.tree.map(lambda x, g: x + 0.5 * g, params, grad(params, target))
        values.append(float(j_init(params)))
    assert all(b >= a - 1e-6 for a, b in zip(values, values[1:])), values
    assert values[-1] > values[0] + 0.1


def _first_hit(searcher, seed, iterations, num):
    """Evaluations until the optimum (true reward 1) is evaluated, or None."""
    objective = make_objective({"aug": (4,) * 3, "nas": (4,) * 3, "hpo": (4,) * 3}, seed=100)
    state = searcher.init(jax.random.key(seed))
    for it in range(iterations):
        key = jax.random.fold_in(jax.random.key(seed + 1000), it)
        actions, state = searcher.ask(state, key)
        reward = np.asarray(objective.true_reward(actions))
        if (reward > 0.999).any():
            return it * num + int(np.argmax(reward > 0.999)) + 1
        state, _ = searcher.tell(state, actions, reward)
    return None


def test_ma2ml_finds_the_optimum_where_random_search_does_not():
    """4^9 = 262,144 joint actions, 240 evaluations: random search hits the optimum with
    probability < 0.1%; MA2ML does on most seeds."""
    space = make_objective({"aug": (4,) * 3, "nas": (4,) * 3, "hpo": (4,) * 3}, seed=100).space
    ma2ml, rand = make_ma2ml(space, 8), make_random_search(space, 8)
    hits = [_first_hit(ma2ml, s, 30, 8) for s in range(3)]
    assert sum(h is not None for h in hits) >= 2, hits
    assert all(_first_hit(rand, s, 30, 8) is None for s in range(3))


@pytest.mark.parametrize("options", [dict(actor_actions="replay", on_policy=True),
                                     dict(policy="autoregressive", hidden=8, updates=2)])
def test_variants_run_and_take_any_batch_size(options):
    space = TABLE.space
    parts = build_ma2ml(space, 4, MA2MLConfig(critic_batch=8, actor_batch=4, num_alternatives=2,
                                              **options))
    s = parts.searcher
    state = s.init(jax.random.key(0))
    # The driver tells replaced repeats too: 6 rows for P = 4, padded to 8 inside tell.
    actions, state = s.ask(state, jax.random.key(1))
    actions = {a: jnp.concatenate([x, x[:2]]) for a, x in actions.items()}
    rewards = TABLE.true_reward(actions)
    state, metrics = s.tell(state, actions, rewards)
    assert np.isfinite(float(metrics["critic_loss"]))
    assert int(state.replay.size) == 6 and int(state.last_batch) == 6
    assert float(state.stats.count) == 6
    assert float(state.stats.mean) == pytest.approx(float(rewards.mean()), abs=1e-6)
    np.testing.assert_allclose(state.replay.data["reward"][:6], rewards, atol=1e-6)
    state, _ = parts.update_step(state, jax.random.key(9))  # one update is one jitted call
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.policy))


def test_nan_reward_is_told_as_the_worst():
    s = make_ma2ml(TABLE.space, 4, MA2MLConfig(critic_batch=8, actor_batch=4, updates=1))
    state = s.init(jax.random.key(0))
    actions, state = s.ask(state, jax.random.key(1))
    state, metrics = s.tell(state, actions, jnp.asarray([0.5, jnp.nan, 0.2, 0.9]))
    assert np.asarray(state.replay.data["reward"][:4]).tolist() == pytest.approx(
        [0.5, 0.2, 0.2, 0.9])
    assert np.isfinite(float(metrics["critic_loss"]))


@pytest.mark.parametrize("options, message", [(dict(policy="lstm"), "autoregressive"),
                                              (dict(actor_actions="buffer"), "fresh"),
                                              (dict(tau=0.0), "tau"),
                                              (dict(num_alternatives=0), "num_alternatives"),
                                              (dict(critic_order="onehot"), "thermometer")])
def test_bad_options_name_the_key(options, message):
    with pytest.raises(ValueError, match=message):
        make_ma2ml(TABLE.space, 4, MA2MLConfig(**options))


# One critic, one step (11) per update on standardized rewards: the paper's update, which the
# exact checks derive by hand.
PAPER_CRITIC = dict(critic_steps=1, ensemble=1, proposal="policy", critic_target="standardized")


def _filled(config, tells=1, seed=0):
    """An MA2ML state whose replay holds `tells` batches of 8 told pipelines."""
    parts = build_ma2ml(TABLE.space, 8, config)
    s = parts.searcher
    state = s.init(jax.random.key(seed))
    for t in range(tells):
        actions, _ = s.ask(state, jax.random.key(100 + t))
        # Distinct reward levels per tell, so a mini-batch from the wrong tell is visible.
        state, _ = s.tell(state, actions, np.asarray(TABLE.true_reward(actions)) + 3.0 * t)
    return parts, state


def _expected_critic(parts, config, state, key, window):
    """One Adam step on loss (11), E[(Q(S, A) - standardized R)^2], over the mini-batch that
    `update_step(state, key)` draws (critic_steps = 1, one member): derived by hand."""
    import optax

    from ma2ml_jax.agents.critic import critic_loss
    from ma2ml_jax.agents.normalize import standardize

    k_critic = jax.random.split(key, 3)[0]
    k_member = jax.random.split(jax.random.split(k_critic, 1)[0], 1)[0]
    batch = parts.replay.sample(state.replay, k_member, config.critic_batch, window)
    phi = jax.tree.map(lambda x: x[0], state.critic)
    if config.critic_target == "quantile":  # normal scores of the ranks among the replay's
        n = int(state.replay.size)
        rewards = np.asarray(state.replay.data["reward"])
        scores = np.zeros_like(rewards)
        scores[:n] = scipy.stats.norm.ppf((scipy.stats.rankdata(rewards[:n]) - 0.5) / n)
        scored = state.replay._replace(data={**state.replay.data, "reward": jnp.asarray(scores)})
        target_r = parts.replay.sample(scored, k_member, config.critic_batch, window)["reward"]
    else:
        target_r = (batch["reward"] - state.stats.mean) / state.stats.std
        np.testing.assert_allclose(standardize(state.stats, batch["reward"]), target_r,
                                   rtol=1e-6)
    grads = jax.grad(lambda p: critic_loss(parts.critic, p, batch["tokens"], target_r))(phi)
    opt = jax.tree.map(lambda x: x[0] if getattr(x, "ndim", 0) else x, state.critic_opt)
    updates, _ = optax.adam(config.critic_lr).update(grads, opt, phi)
    return optax.apply_updates(phi, updates), batch


@pytest.mark.parametrize("critic_target", ["standardized", "quantile"])
def test_one_update_fits_the_critic_to_its_targets_and_moves_rho(critic_target):
    config = MA2MLConfig(critic_batch=16, actor_batch=8, num_alternatives=2, updates=1, tau=0.3,
                         **{**PAPER_CRITIC, "critic_target": critic_target})
    parts, state = _filled(config, tells=2)
    key = jax.random.key(7)
    expected, _ = _expected_critic(parts, config, state, key, None)
    new, _ = parts.update_step(state, key)
    got = jax.tree.map(lambda x: x[0], new.critic)
    for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)
    # (14): rho' = (1 - tau) rho + tau pi', with pi' the policy after this step's actor update.
    for a in TABLE.agents:
        for r, p, t in zip(jax.tree.leaves(state.target[a]), jax.tree.leaves(new.policy[a]),
                           jax.tree.leaves(new.target[a])):
            np.testing.assert_allclose(t, 0.7 * np.asarray(r) + 0.3 * np.asarray(p), rtol=1e-5,
                                       atol=1e-7)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(new.policy),
                                                     jax.tree.leaves(state.policy)))


def test_on_policy_updates_see_only_the_last_tell():
    config = MA2MLConfig(critic_batch=16, actor_batch=8, num_alternatives=2, updates=1,
                         on_policy=True, actor_actions="replay", **PAPER_CRITIC)
    parts, state = _filled(config, tells=3)
    assert int(state.last_batch) == 8 and int(state.replay.size) == 24
    key = jax.random.key(3)
    expected, batch = _expected_critic(parts, config, state, key, state.last_batch)
    # Every item of the mini-batch is one of the last tell's (their rewards are offset by 6).
    assert (np.asarray(batch["reward"]) > 5.0).all()
    new, _ = parts.update_step(state, key)
    for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(new.critic)):
        np.testing.assert_allclose(g[0], e, rtol=1e-4, atol=1e-6)
    # The off-policy learner's step, from the whole buffer, is another step.
    off, _ = _expected_critic(parts, config, state, key, None)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(off),
                                                     jax.tree.leaves(expected)))


# An exact problem: 2 agents x 2 decisions of 2 choices, so 4 actions per agent, and a known table
# Q[aug action, nas action] (an action's index: 2 * d0 + d1) as the perfect critic. Best: (3, 1).
EXACT_SPACE = make_objective({"aug": (2, 2), "nas": (2, 2)}, seed=0).space
Q_TABLE = np.asarray([[0.1, 0.3, 0.0, 0.2],
                      [0.4, 0.2, 0.1, 0.0],
                      [0.0, 0.5, 0.3, 0.1],
                      [0.2, 1.0, 0.0, 0.3]], np.float32)
OWN = np.asarray([[0, 0], [0, 1], [1, 0], [1, 1]], np.int32)  # an agent's 4 actions, by index


def _q_exact(actions):
    """The perfect critic: {agent: int[..., 2]} -> Q_TABLE[aug index, nas index]."""
    i, j = (2 * actions[a][..., 0] + actions[a][..., 1] for a in ("aug", "nas"))
    return jnp.asarray(Q_TABLE)[i, j]


def _exact_policies():
    return {a: make_policy(EXACT_SPACE[a], "factorized") for a in EXACT_SPACE.agents}


def _probs(logits):
    """float64[4]: a factorized 2 x 2 policy's probability of each of OWN's actions."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return p[0, OWN[:, 0]] * p[1, OWN[:, 1]]


def test_advantages_are_eq_12_and_13_by_brute_force():
    """actor_surrogate's advantage Q(A) - lam log(pi_i/rho_i)(A_i) - b_i, with b_i of (12), equals
    the enumeration sum_{a'} pi_i(a') Q(a', A_-i) - lam KL(pi_i || rho_i) for every joint action.
    pi's probabilities are multiples of 1/16, so K = 16 alternatives listed with those
    multiplicities make the baseline's sample mean the exact expectation."""
    policies = _exact_policies()
    # aug: d0 (3/4, 1/4), d1 (1/2, 1/2); nas: d0 (1/4, 3/4), d1 (3/4, 1/4).
    params = {"aug": {"logits": jnp.log(jnp.asarray([[0.75, 0.25], [0.5, 0.5]]))},
              "nas": {"logits": jnp.log(jnp.asarray([[0.25, 0.75], [0.75, 0.25]]))}}
    target = {a: {"logits": jnp.asarray(np.random.default_rng(i).normal(size=(2, 2)),
                                        jnp.float32)} for i, a in enumerate(policies)}
    pi = {a: _probs(np.asarray(params[a]["logits"], np.float64)) for a in policies}
    rho = {a: _probs(np.asarray(target[a]["logits"], np.float64)) for a in policies}
    # Every joint action once: B = 16, aug index = row // 4, nas index = row % 4.
    rows = np.arange(16)
    index = {"aug": rows // 4, "nas": rows % 4}
    actions = {a: jnp.asarray(OWN[index[a]]) for a in policies}
    listed = {a: np.repeat(np.arange(4), np.round(16 * pi[a]).astype(int)) for a in policies}
    assert all(len(x) == 16 for x in listed.values())
    alternatives = {a: jnp.asarray(np.broadcast_to(OWN[listed[a]][:, None], (16, 16, 2)))
                    for a in policies}
    _, (advantage, _) = actor_surrogate(policies, params, params, target, _q_exact, actions,
                                        alternatives, LAM)
    baseline = counterfactual_baseline(_q_exact, policies, params, target, actions,
                                       alternatives, LAM)
    for i, a in enumerate(policies):
        kl = (pi[a] * np.log(pi[a] / rho[a])).sum()
        for r in rows:
            if a == "aug":
                expected_q = (pi[a] * Q_TABLE[:, index["nas"][r]]).sum()
            else:
                expected_q = (pi[a] * Q_TABLE[index["aug"][r], :]).sum()
            b = expected_q - LAM * kl
            own = index[a][r]
            adv = (Q_TABLE[index["aug"][r], index["nas"][r]]
                   - LAM * np.log(pi[a][own] / rho[a][own]) - b)
            assert float(baseline[i, r]) == pytest.approx(b, abs=1e-5), (a, r)
            assert float(advantage[i, r]) == pytest.approx(adv, abs=1e-5), (a, r)


def test_actor_step_with_a_perfect_critic_raises_the_best_joint_action():
    """From uniform pi = rho, with every joint action in the batch once (under a uniform policy
    that is the exact expectation) and every alternative listed, (13)'s surrogate gradient is
    minus the exact gradient of J_reg; a small step against it raises pi(best joint action)."""
    policies = _exact_policies()
    params = {a: policies[a].init(jax.random.key(0)) for a in policies}
    rows = np.arange(16)
    actions = {"aug": jnp.asarray(OWN[rows // 4]), "nas": jnp.asarray(OWN[rows % 4])}
    alternatives = {a: jnp.asarray(np.broadcast_to(OWN[:, None], (4, 16, 2))) for a in policies}
    grads = jax.grad(lambda p: actor_surrogate(policies, p, params, params, _q_exact, actions,
                                               alternatives, LAM)[0])(params)

    def j_init(p):
        pa, pn = (jnp.exp(policies[a].log_prob(p[a], jnp.asarray(OWN))) for a in policies)
        return (pa[:, None] * pn[None, :] * jnp.asarray(Q_TABLE)).sum()

    # At pi = rho the KL term's gradient vanishes: -grad J_reg = -grad E_pi[Q].
    exact = jax.grad(lambda p: -j_init(p))(params)
    for a in policies:
        np.testing.assert_allclose(grads[a]["logits"], exact[a]["logits"], atol=1e-6)

    def best(p):
        return float(jnp.exp(policies["aug"].log_prob(p["aug"], jnp.asarray(OWN[3]))
                             + policies["nas"].log_prob(p["nas"], jnp.asarray(OWN[1]))))

    stepped = jax.tree.map(lambda x, g: x - 0.5 * g, params, grads)
    assert best(stepped) > best(params) + 0.005
    assert float(j_init(stepped)) > float(j_init(params))


@pytest.mark.parametrize("config", [MA2MLConfig(critic_batch=8, actor_batch=4, updates=1,
                                                num_alternatives=2, candidates=16),
                                    PAPER._replace(critic_batch=8)],
                         ids=["default", "paper"])
def test_tell_with_rewards_moves_the_policies_and_their_targets(config):
    s = make_ma2ml(TABLE.space, 4, config)
    state = s.init(jax.random.key(0))
    policy0 = jax.tree.map(np.asarray, state.policy)
    actions, state = s.ask(state, jax.random.key(1))
    state, _ = s.tell(state, actions, np.asarray(TABLE.true_reward(actions)))
    for tree in (state.policy, state.target):
        assert any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(tree),
                                                         jax.tree.leaves(policy0)))


def test_paper_ask_is_p_samples_of_the_policies():
    parts = build_ma2ml(TABLE.space, 4, PAPER._replace(critic_batch=8))
    state = parts.searcher.init(jax.random.key(0))
    state = state._replace(policy=_random_params(parts.policies, 1))
    key = jax.random.key(2)
    actions, _ = parts.searcher.ask(state, key)
    for i, a in enumerate(TABLE.agents):
        assert actions[a].shape == (4, TABLE.space[a].n_decisions)
        np.testing.assert_array_equal(actions[a], parts.policies[a].sample(
            state.policy[a], jax.random.fold_in(key, i), 4))


def test_paper_tell_is_one_step_of_11_13_14_on_one_minibatch():
    """Algorithm 1, lines 8-12, recomputed by hand: store the batch, draw ONE mini-batch B, one
    Adam step of the critic on B's standardized rewards (11), one Adam step of every actor on B's
    actions with K = 1 (12)-(13), one Polyak step (14)."""
    import optax

    from ma2ml_jax.agents.critic import critic_loss
    from ma2ml_jax.agents.normalize import update_stats

    config = PAPER._replace(critic_batch=8)
    assert (config.updates, config.critic_steps, config.ensemble, config.num_alternatives,
            config.proposal, config.actor_actions) == (1, 1, 1, 1, "policy", "critic_batch")
    parts = build_ma2ml(TABLE.space, 4, config)
    s, policies = parts.searcher, parts.policies
    state = s.init(jax.random.key(0))
    for t in range(2):  # so that pi, rho and the optimizers' moments are no longer at their start
        actions, state = s.ask(state, jax.random.key(10 + t))
        state, _ = s.tell(state, actions, np.asarray(TABLE.true_reward(actions)))
    actions, _ = s.ask(state, jax.random.key(20))
    rewards = np.asarray(TABLE.true_reward(actions))
    before = jax.tree.map(jnp.copy, state)  # tell donates its state
    after, _ = s.tell(state, actions, rewards)

    # Line 8: the told pipelines are in D.
    replay = parts.replay.add(jax.tree.map(jnp.copy, before.replay),
                              {"tokens": actions, "reward": jnp.asarray(rewards)})
    stats = update_stats(before.stats, rewards)
    for x, y in zip(jax.tree.leaves(replay), jax.tree.leaves(after.replay)):
        np.testing.assert_array_equal(x, y)
    # Line 9: B, drawn with tell's key chain (one update step, one critic step, one member).
    step_key = jax.random.split(jax.random.split(before.key)[1], 1)[0]
    k_critic, k_actor, k_alt = jax.random.split(step_key, 3)
    k_batch = jax.random.split(jax.random.split(k_critic, 1)[0], 1)[0]
    batch = parts.replay.sample(replay, k_batch, 8)
    # Line 10, (11): one Adam step on mean_B (Q - standardized R)^2.
    phi = jax.tree.map(lambda x: x[0], before.critic)
    target_r = (batch["reward"] - stats.mean) / stats.std
    grads = jax.grad(lambda p: critic_loss(parts.critic, p, batch["tokens"], target_r))(phi)
    critic_opt = jax.tree.map(lambda x: x[0] if getattr(x, "ndim", 0) else x, before.critic_opt)
    updates, _ = optax.adam(config.critic_lr).update(grads, critic_opt, phi)
    phi = optax.apply_updates(phi, updates)
    for e, g in zip(jax.tree.leaves(phi), jax.tree.leaves(after.critic)):
        np.testing.assert_allclose(g[0], e, rtol=1e-4, atol=1e-6)

    # Line 11, (12)-(13): one Adam step of the actors on B's actions, K = 1 alternative each.
    def actor_step(actor_actions):
        alternatives = {a: policies[a].sample(before.policy[a], jax.random.fold_in(k_alt, i),
                                              8)[None] for i, a in enumerate(TABLE.agents)}
        q = lambda toks: parts.critic.apply(phi, toks)  # noqa: E731
        g = jax.grad(lambda p: actor_surrogate(policies, p, before.policy, before.target, q,
                                               actor_actions, alternatives, config.lam)[0])(
            before.policy)
        u, _ = optax.adam(config.actor_lr).update(g, before.actor_opt, before.policy)
        return optax.apply_updates(before.policy, u)

    policy = actor_step(batch["tokens"])
    for e, g in zip(jax.tree.leaves(policy), jax.tree.leaves(after.policy)):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)
    # The check can tell mini-batches apart: actions of another replay sample give another step.
    other = actor_step(parts.replay.sample(replay, k_actor, 8)["tokens"])
    assert any(not np.allclose(e, g) for e, g in zip(jax.tree.leaves(other),
                                                     jax.tree.leaves(after.policy)))
    # Line 12, (14): rho' = (1 - tau) rho + tau pi', once.
    for r, p, t in zip(jax.tree.leaves(before.target), jax.tree.leaves(policy),
                       jax.tree.leaves(after.target)):
        np.testing.assert_allclose(t, (1 - config.tau) * np.asarray(r) + config.tau * np.asarray(p),
                                   rtol=1e-5, atol=1e-7)
    # One optimizer step each per tell: three tells, three steps.
    counts = [int(x) for x in jax.tree.leaves(after.actor_opt) + jax.tree.leaves(after.critic_opt)
              if jnp.issubdtype(x.dtype, jnp.integer)]
    assert counts and set(counts) == {3}
