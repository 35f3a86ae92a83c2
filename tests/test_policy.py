"""Policies: log_prob against enumeration and an independent step-by-step reference, sampling
frequencies (chi-square), exact and unbiased entropy / KL."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ma2ml_jax.agents.policy import make_policy
from ma2ml_jax.bench.objectives import synthetic_space

SIZES = (2, 3, 2)  # uneven sizes: the padding of the smaller decisions must stay masked


def _space():
    return synthetic_space({"a": SIZES})["a"]


def _all_actions():
    return jnp.asarray(list(itertools.product(*[range(s) for s in SIZES])), jnp.int32)


def _random_params(policy, seed):
    """Non-uniform parameters: init plus noise on every leaf."""
    params = policy.init(jax.random.key(seed))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.8 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])


def _reference_log_prob(policy, params, tokens):
    """Step by step, without the policy's own scan: the controller's GRU applied in a Python
    loop (autoregressive), or a plain lookup of the logits table (factorized)."""
    tokens = np.asarray(tokens)
    if policy.factorized:
        total = 0.0
        for t, (tok, size) in enumerate(zip(tokens, SIZES)):
            logits = np.asarray(params["logits"][t, :size], np.float64)
            total += logits[tok] - np.log(np.exp(logits).sum())
        return total
    import flax.linen as nn

    cell = nn.GRUCell(features=params["h0"].shape[0])
    h, x, total = params["h0"], params["start"], 0.0
    for t, (tok, size) in enumerate(zip(tokens, SIZES)):
        h, _ = cell.apply({"params": params["cell"]}, h, x)
        logits = np.asarray(h @ params["head_w"][t] + params["head_b"][t], np.float64)[:size]
        total += logits[tok] - np.log(np.exp(logits).sum())
        x = params["embed"][t, tok]
    return total


@pytest.mark.parametrize("kind", ["factorized", "autoregressive"])
def test_log_prob_matches_enumeration_and_reference(kind):
    policy = make_policy(_space(), kind, hidden=8)
    params = _random_params(policy, 0)
    actions = _all_actions()
    logp = np.asarray(policy.log_prob(params, actions), np.float64)
    assert np.exp(logp).sum() == pytest.approx(1.0, abs=1e-5)  # a distribution over all actions
    ref = [_reference_log_prob(policy, params, a) for a in actions]
    np.testing.assert_allclose(logp, ref, atol=1e-4)
    assert logp.std() > 0.1  # the parameters really are non-uniform


@pytest.mark.parametrize("kind", ["factorized", "autoregressive"])
def test_initial_policy_is_uniform(kind):
    policy = make_policy(_space(), kind, hidden=8)
    logp = policy.log_prob(policy.init(jax.random.key(1)), _all_actions())
    np.testing.assert_allclose(logp, -np.log(np.prod(SIZES)), atol=1e-5)


@pytest.mark.parametrize("kind", ["factorized", "autoregressive"])
def test_sample_frequencies_chi_square(kind):
    policy = make_policy(_space(), kind, hidden=8)
    params = _random_params(policy, 2)
    n = 20000
    tokens = np.asarray(jax.jit(policy.sample, static_argnums=2)(params, jax.random.key(3), n))
    assert tokens.shape == (n, len(SIZES)) and tokens.dtype == np.int32
    assert (tokens < np.asarray(SIZES)).all() and (tokens >= 0).all()  # padding never sampled
    actions = np.asarray(_all_actions())
    index = {tuple(a): i for i, a in enumerate(actions)}
    counts = np.bincount([index[tuple(t)] for t in tokens], minlength=len(actions))
    probs = np.exp(np.asarray(policy.log_prob(params, actions), np.float64))
    expected = n * probs / probs.sum()
    assert stats.chisquare(counts, expected).pvalue > 1e-3
    # The test has power: the same counts reject the uniform distribution.
    assert stats.chisquare(counts, np.full(len(actions), n / len(actions))).pvalue < 1e-6


def _exact(policy, params, other):
    actions = _all_actions()
    lp = np.asarray(policy.log_prob(params, actions), np.float64)
    lq = np.asarray(policy.log_prob(other, actions), np.float64)
    p = np.exp(lp)
    return -(p * lp).sum(), (p * (lp - lq)).sum()


def test_factorized_entropy_and_kl_are_exact():
    policy = make_policy(_space(), "factorized")
    params, other = _random_params(policy, 4), _random_params(policy, 5)
    entropy, kl = _exact(policy, params, other)
    any_tokens = jnp.zeros((3, len(SIZES)), jnp.int32)  # the value must not depend on them
    np.testing.assert_allclose(policy.entropy(params, any_tokens), entropy, rtol=1e-5)
    np.testing.assert_allclose(policy.kl(params, other, any_tokens), kl, rtol=1e-5)
    assert kl > 0.05


def test_autoregressive_entropy_and_kl_are_unbiased():
    policy = make_policy(_space(), "autoregressive", hidden=8)
    params, other = _random_params(policy, 6), _random_params(policy, 7)
    entropy, kl = _exact(policy, params, other)
    tokens = policy.sample(params, jax.random.key(8), 40000)
    for estimate, exact in ((policy.entropy(params, tokens), entropy),
                            (policy.kl(params, other, tokens), kl)):
        estimate = np.asarray(estimate, np.float64)
        stderr = estimate.std() / np.sqrt(estimate.size)
        assert abs(estimate.mean() - exact) < 4 * stderr + 1e-4
    # Biased if the tokens are not drawn from pi: from rho, the KL estimate is off.
    wrong = np.asarray(policy.kl(params, other, policy.sample(other, jax.random.key(9), 40000)))
    assert abs(wrong.mean() - kl) > 10 * wrong.std() / np.sqrt(wrong.size)


def test_unknown_policy_kind():
    with pytest.raises(ValueError, match="factorized"):
        make_policy(_space(), "transformer")
