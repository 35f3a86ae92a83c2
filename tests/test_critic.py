"""The centralized critic's embeddings: free vectors per value, or a thermometer code on ordered
decisions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma2ml_jax.agents.critic import make_critic
from ma2ml_jax.spaces import Decision, PipelineSpace, Space

SPACE = PipelineSpace({
    "hpo": Space("hpo", [Decision("lr", (1e-3, 1e-2, 1e-1, 1.0), ordered=True),
                         Decision("opt", ("sgd", "adam", "rmsprop"))]),
    "nas": Space("nas", [Decision("depth", (1, 2, 3, 4, 5), ordered=True)]),
})


def _levels(agent, d, values, space=SPACE):
    """Joint actions that differ only in decision d of `agent`, which takes `values`."""
    n = len(values)
    out = {a: jnp.zeros((n, space[a].n_decisions), jnp.int32) for a in space.agents}
    out[agent] = out[agent].at[:, d].set(jnp.asarray(values))
    return out


def test_thermometer_levels_differ_by_exactly_one_level_vector():
    critic = make_critic(SPACE, (8, 8), order="thermometer")
    params = critic.init(jax.random.key(0))
    for agent, d, size in (("hpo", 0, 4), ("nas", 0, 5)):
        e = np.asarray(critic.embed(params, _levels(agent, d, list(range(size)))))
        table = np.asarray(params["embed"][agent][d])
        for i in range(size - 1):
            np.testing.assert_allclose(e[i + 1] - e[i], table[i + 1], rtol=1e-5, atol=1e-6)
    # The unordered decision keeps a free vector per value.
    e = np.asarray(critic.embed(params, _levels("hpo", 1, [0, 1, 2])))
    table = np.asarray(params["embed"]["hpo"][1])
    np.testing.assert_allclose(e[2] - e[0], table[2] - table[0], rtol=1e-5, atol=1e-6)


def test_without_order_every_value_has_a_free_vector():
    critic = make_critic(SPACE, (8, 8))
    params = critic.init(jax.random.key(0))
    e = np.asarray(critic.embed(params, _levels("hpo", 0, [0, 1, 2, 3])))
    table = np.asarray(params["embed"]["hpo"][0])
    np.testing.assert_allclose(e[1:] - e[0], table[1:4] - table[0], rtol=1e-5, atol=1e-6)


def test_a_thermometer_level_learns_through_the_levels_below_it():
    critic = make_critic(SPACE, (8, 8), order="thermometer")
    params = critic.init(jax.random.key(1))
    actions = _levels("nas", 0, [2])
    grads = jax.jit(jax.grad(lambda p: critic.apply(p, actions).sum()))(params)
    g = np.abs(np.asarray(grads["embed"]["nas"][0])).sum(-1)  # per level vector
    assert (g[:3] > 0).all() and (g[3:] == 0).all()
    g_hpo = np.abs(np.asarray(grads["embed"]["hpo"][0])).sum(-1)
    assert g_hpo[0] > 0 and (g_hpo[1:] == 0).all()  # lr at level 0: its own vector only


def test_the_two_orders_have_the_same_parameters_and_the_order_is_checked():
    shapes = [jax.tree.map(jnp.shape, make_critic(SPACE, (8, 8), order=o).init(jax.random.key(0)))
              for o in ("none", "thermometer")]
    assert shapes[0] == shapes[1]
    with pytest.raises(ValueError, match="thermometer"):
        make_critic(SPACE, (8, 8), order="onehot")
