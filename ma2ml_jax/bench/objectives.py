"""Synthetic cooperative objectives with a known optimum, for sample-efficiency measurements.

A `CooperativeObjective` has agents (like AUG / NAS / HPO) whose actions are vectors of
categorical decisions. Its reward, normalized so that the optimum is exactly 1, is

    R(A) = [ sum_d w_d [a_d = t_d]
             + sum_{(d, e)} c_de ([a_d = t_d][a_e = t_e] - g [a_d = t_d] xor [a_e = t_e]) ] / Z

with a hidden target token t_d per decision, unary weights w_d, and pair terms between decisions
of DIFFERENT agents: getting one side of a pair right without the other costs g * c_de, so an
agent that changes its action alone can look worse although it moved towards the optimum. That
interaction is what a centralized critic with counterfactual credit is meant to untangle.
`noise` adds Gaussian noise of that standard deviation to every evaluation (the true reward is
kept for measuring distance to the optimum).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ma2ml_jax.spaces import Decision, PipelineSpace, Space


def synthetic_space(decisions: dict[str, tuple[int, ...]]) -> PipelineSpace:
    """{agent: sizes of its decisions} -> a PipelineSpace with decisions named d0, d1, ..."""
    return PipelineSpace({a: Space(a, [Decision(f"d{i}", tuple(range(s)))
                                       for i, s in enumerate(sizes)])
                          for a, sizes in decisions.items()})


@dataclasses.dataclass(frozen=True)
class CooperativeObjective:
    space: PipelineSpace
    targets: dict  # {agent: int32[n]}
    unary: dict  # {agent: float32[n]}
    pairs: np.ndarray  # int32[M, 4]: (agent_a, decision_a, agent_b, decision_b) (agent indices)
    pair_weights: np.ndarray  # float32[M]
    penalty: float
    noise: float
    name: str = ""

    @property
    def agents(self) -> tuple[str, ...]:
        return self.space.agents

    def true_reward(self, actions) -> jax.Array:
        """Noiseless reward of a batch: actions {agent: int[B, n]} -> float32[B], optimum 1."""
        match = [jnp.asarray(actions[a]) == jnp.asarray(self.targets[a]) for a in self.agents]
        total = sum((m * jnp.asarray(self.unary[a])).sum(-1) for a, m in zip(self.agents, match))
        for (ia, da, ib, db), c in zip(self.pairs, self.pair_weights):
            x, y = match[ia][..., da], match[ib][..., db]
            total = total + c * ((x & y) - self.penalty * (x ^ y))
        z = sum(float(np.sum(self.unary[a])) for a in self.agents) + float(self.pair_weights.sum())
        return (total / z).astype(jnp.float32)

    def __call__(self, actions, key) -> jax.Array:
        r = self.true_reward(actions)
        if self.noise:
            r = r + self.noise * jax.random.normal(key, r.shape)
        return r


def make_objective(decisions: dict[str, tuple[int, ...]], seed: int, pairs_per_decision=1.0,
                   penalty=0.5, noise=0.0, name="", chain=False) -> CooperativeObjective:
    """A random cooperative objective over `decisions` ({agent: decision sizes}).

    Pairs couple random decisions of two random agents, or, with `chain`, one decision of each
    agent with one of the next agent (in `space.agents` order): the interactions of consecutive
    layers of a CNN, the structure Iranfar et al.'s pairwise Q-tables model.
    """
    space = synthetic_space(decisions)
    rng = np.random.default_rng(seed)
    agents = space.agents
    targets = {a: rng.integers(0, space[a].sizes).astype(np.int32) for a in agents}
    unary = {a: rng.uniform(0.5, 1.5, space[a].n_decisions).astype(np.float32) for a in agents}
    n_total = sum(space[a].n_decisions for a in agents)
    m = int(round(pairs_per_decision * n_total)) if len(agents) > 1 else 0
    pairs = []
    if chain:
        m = 0
        for ia in range(len(agents) - 1):
            pairs.append((ia, rng.integers(space[agents[ia]].n_decisions),
                          ia + 1, rng.integers(space[agents[ia + 1]].n_decisions)))
    for _ in range(m):
        ia, ib = rng.choice(len(agents), 2, replace=False)
        pairs.append((ia, rng.integers(space[agents[ia]].n_decisions),
                      ib, rng.integers(space[agents[ib]].n_decisions)))
    pairs = np.asarray(pairs, np.int32).reshape(-1, 4)
    weights = rng.uniform(0.5, 1.5, len(pairs)).astype(np.float32)
    return CooperativeObjective(space, targets, unary, pairs, weights, penalty, noise, name)
