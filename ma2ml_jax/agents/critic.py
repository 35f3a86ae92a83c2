"""The centralized critic Q_phi(S, A) over all agents' actions, trained by equation (11).

The state S of the AutoML game is fixed (every episode starts from the same task), so the critic
is a function of the joint action A = (A_aug, A_nas, A_hpo): each decision's token has its own
learned embedding (a one-hot linear layer, computed as a gather), the embeddings of all agents are
summed, and an MLP maps the sum to Q. It is applied to any leading batch shape, so the
counterfactual baseline evaluates agents x K x batch joint actions in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ma2ml_jax.spaces import PipelineSpace


class Critic(NamedTuple):
    init: Callable[[jax.Array], Any]
    apply: Callable[[Any, Mapping[str, jax.Array]], jax.Array]  # {agent: int[..., n]} -> [...]


def make_critic(space: PipelineSpace, hidden: Sequence[int] = (64, 64)) -> Critic:
    """Q(S, A) for the joint actions of `space` with an MLP of widths `hidden`."""
    hidden = tuple(int(h) for h in hidden)
    if not hidden or min(hidden) < 1:
        raise ValueError(f"critic hidden widths must be positive, got {hidden}")
    agents = space.agents

    def init(key):
        keys = iter(jax.random.split(key, len(agents) + len(hidden)))
        width = hidden[0]
        params = {"embed": {}, "layers": []}
        for a in agents:
            s = space[a]
            # He-style scale over the number of summed embeddings (one per decision).
            n_total = sum(space[b].n_decisions for b in agents)
            params["embed"][a] = jax.random.normal(next(keys), (s.n_decisions, s.max_size, width)
                                                   ) * jnp.sqrt(2.0 / n_total)
        params["bias"] = jnp.zeros((width,))
        dims = hidden[1:] + (1,)
        fan_in = width
        for d in dims:
            w = jax.random.normal(next(keys), (fan_in, d)) * jnp.sqrt(2.0 / fan_in)
            params["layers"].append({"w": w if d > 1 else w * 0.1, "b": jnp.zeros((d,))})
            fan_in = d
        return params

    def apply(params, actions):
        h = params["bias"]
        for a in agents:
            e = params["embed"][a]  # [n, max, width]
            tok = actions[a]
            gathered = e[jnp.arange(e.shape[0]), tok]  # [..., n, width]
            h = h + gathered.sum(-2)
        for layer in params["layers"]:
            h = jax.nn.relu(h) @ layer["w"] + layer["b"]
        return h[..., 0]

    return Critic(init, apply)


def critic_loss(critic: Critic, params, actions: Mapping[str, jax.Array],
                rewards: jax.Array) -> jax.Array:
    """Equation (11): E[(Q_phi(S, A) - R)^2] over a mini-batch."""
    return jnp.mean((critic.apply(params, actions) - rewards) ** 2)
