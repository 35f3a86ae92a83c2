"""The centralized critic Q_phi(S, A) over all agents' actions, trained by equation (11).

The state S of the AutoML game is fixed (every episode starts from the same task), so the critic
is a function of the joint action A = (A_aug, A_nas, A_hpo): each decision's token has its own
learned embedding (a one-hot linear layer, computed as a gather), the embeddings of all agents are
summed, and an MLP maps the sum to Q. It is applied to any leading batch shape, so the
counterfactual baseline evaluates agents x K x batch joint actions in one call.

With `order="thermometer"`, an ordered decision's (`spaces.Decision.ordered`) level i is embedded
as the sum of its learned vectors 0 .. i (a thermometer code): neighbouring levels share all but
one vector, so what the critic learns about one level carries to the levels around it, and the
step from level i to i + 1 is the one vector v_{i+1}. Unordered decisions keep one free vector
per value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ma2ml_jax.spaces import PipelineSpace

# How an ordered decision's levels are embedded: one free vector each | thermometer code.
ORDERS = ("none", "thermometer")


class Critic(NamedTuple):
    init: Callable[[jax.Array], Any]
    apply: Callable[[Any, Mapping[str, jax.Array]], jax.Array]  # {agent: int[..., n]} -> [...]
    # {agent: int[..., n]} -> float32[..., width]: the sum of every decision's embedding, the
    # MLP's input (before its bias)
    embed: Callable[[Any, Mapping[str, jax.Array]], jax.Array]


def make_critic(space: PipelineSpace, hidden: Sequence[int] = (64, 64), order: str = "none"
                ) -> Critic:
    """Q(S, A) for the joint actions of `space` with an MLP of widths `hidden`.

    Args:
      space: the agents' decisions.
      hidden: the MLP's widths; the first is the embeddings' width.
      order: "none" (a free vector per value of every decision) or "thermometer" (an ordered
        decision's level i embedded as the sum of its level vectors 0 .. i; module doc).
    """
    hidden = tuple(int(h) for h in hidden)
    if not hidden or min(hidden) < 1:
        raise ValueError(f"critic hidden widths must be positive, got {hidden}")
    if order not in ORDERS:
        raise ValueError(f"critic order {order!r} is not one of {list(ORDERS)}")
    agents = space.agents
    # The decisions embedded by a thermometer code, per agent (static).
    thermometer = {a: space[a].ordered & (order == "thermometer") for a in agents}

    def init(key):
        keys = iter(jax.random.split(key, len(agents) + len(hidden)))
        width = hidden[0]
        params = {"embed": {}, "layers": []}
        for a in agents:
            s = space[a]
            # He-style scale over the number of summed embeddings (one per decision).
            n_total = sum(space[b].n_decisions for b in agents)
            e = jax.random.normal(next(keys), (s.n_decisions, s.max_size, width)
                                  ) * jnp.sqrt(2.0 / n_total)
            if thermometer[a].any():
                # Level vectors 1 .. size - 1 are steps, scaled so that the last level's sum
                # has twice the variance of one free vector, not size times.
                steps = 1.0 / np.sqrt(np.maximum(s.sizes - 1, 1))
                scale = np.where(thermometer[a][:, None] & (np.arange(s.max_size) > 0)[None],
                                 steps[:, None], 1.0)
                e = e * jnp.asarray(scale, e.dtype)[..., None]
            params["embed"][a] = e
        params["bias"] = jnp.zeros((width,))
        dims = hidden[1:] + (1,)
        fan_in = width
        for d in dims:
            w = jax.random.normal(next(keys), (fan_in, d)) * jnp.sqrt(2.0 / fan_in)
            params["layers"].append({"w": w if d > 1 else w * 0.1, "b": jnp.zeros((d,))})
            fan_in = d
        return params

    def embed(params, actions):
        h = 0.0
        for a in agents:
            e = params["embed"][a]  # [n, max, width]
            if thermometer[a].any():
                # Level i of an ordered decision: its vectors 0 .. i summed, for the whole table
                # before the gather (a product with a lower-triangular matrix; tests/test_critic.py
                # checks the values and the jitted gradient).
                sums = jnp.einsum("ij,njw->niw", jnp.asarray(np.tril(
                    np.ones((e.shape[1], e.shape[1]), np.float32)), e.dtype), e)
                e = jnp.where(jnp.asarray(thermometer[a])[:, None, None], sums, e)
            tok = actions[a]
            gathered = e[jnp.arange(e.shape[0]), tok]  # [..., n, width]
            h = h + gathered.sum(-2)
        return h

    def apply(params, actions):
        h = params["bias"] + embed(params, actions)
        for layer in params["layers"]:
            h = jax.nn.relu(h) @ layer["w"] + layer["b"]
        return h[..., 0]

    return Critic(init, apply, embed)


def critic_loss(critic: Critic, params, actions: Mapping[str, jax.Array],
                rewards: jax.Array) -> jax.Array:
    """Equation (11): E[(Q_phi(S, A) - R)^2] over a mini-batch."""
    return jnp.mean((critic.apply(params, actions) - rewards) ** 2)
