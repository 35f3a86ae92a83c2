"""Iranfar et al.'s per-layer multi-agent Q-learning (IEEE TCAD; Sec. V and VI, Alg. 1-3).

One Q-learning agent per layer acts in layer order; its state is the previous agent's action, so
every two consecutive agents share one Q-table of N_Ai x N_Ai+1 cells (Sec. V-D), initialized to
zero. All agents receive the same reward R (eq. 2) at the end of an episode (one CNN trained).

* Exploration (Alg. 1): the first two agents pick a cell of their table that is still zero; every
  next agent picks an action whose cell in the row chosen by its predecessor is zero; an agent
  with no zero cell left takes a random action. The phase lasts until no table has a zero cell
  (and at least `min_exploration` episodes). Alpha stays at 0.95.
* Update (Alg. 2), for every table Qt_i with the episode's actions (a_i, a_i+1):
  the last table:                         Qt_i += alpha R
  the next table's row a_i+1 has a zero:  Qt_i += alpha R
  otherwise:      Qt_i = (1 - alpha) Qt_i + alpha (R + gamma max_a Qt_i+1[a_i+1, a]).
  After exploration alpha_new = alpha_old * 0.999^n (eq. 3, n = exploitation episodes so far;
  `alpha_schedule="exponential"` gives 0.95 * 0.999^n instead).
* Exploration-exploitation (Alg. 3 under epsilon-greedy): with probability epsilon = 0.99^n every
  agent acts at random, else the first two take the argmax cell of their table and every next one
  the argmax of the row its predecessor chose.
* A hyper-parameter set (all agents' actions) that was seen before updates nothing (Sec. VI-C).
* Layer graphs (Sec. VI-D): every connection u -> v of the layer graph is one table. A layer that
  feeds several layers picks its action (with one successor) among the zero cells of all its
  tables, is updated with the max over all of its successors' tables, and exploits the action
  with the best cell in any of them (Fig. 8a). A layer fed by several layers explores the action
  that is zero in the most of its incoming rows and exploits the action that is the argmax of
  the most incoming rows, else the one with the best mean over them (Fig. 8b).

"Zero cell" is read as "never updated": a visit count per cell marks it, so a cell whose update
happens to give exactly 0 (R = 0 on a fresh cell) is not explored again. Spaces that are not
layerwise are learned by the same rules on the chain of all their decisions (each decision one
agent), so the searcher runs on any pipeline space.

The driver asks for P pipelines per iteration: `ask` produces P episodes one after another, the
exploration bookkeeping (cells claimed by earlier episodes of the batch) and the exploitation
counter carried across them; `tell` updates with each episode in order, as P sequential episodes
whose rewards arrived together. The greedy episodes of one batch read the same Q-tables, so in
exploitation they repeat one another (only the first updates anything): P = 1 is the paper's
sequential setting. Not in `config.REPEAT_AWARE`: a repeat is evaluated again, as in the paper
(it is how convergence shows). The state is a NamedTuple of numpy arrays (host-side, like TPE's
study, but a plain pytree: checkpointable).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ma2ml_jax.agents.base import Searcher
from ma2ml_jax.spaces import PipelineSpace, layerwise

ALPHA_SCHEDULES = ("compound", "exponential")
PENALTY = -1.0  # the reward of a non-finite reward (eq. 2's termination)


class QLearningConfig(NamedTuple):
    """Hyper-parameters (config section `qlearning`)."""

    alpha: float = 0.95  # learning rate of the exploration phase (Sec. VI-B)
    alpha_decay: float = 0.999  # eq. (3): alpha <- alpha * 0.999^n after exploration
    alpha_schedule: str = "compound"  # compound: eq. 3 as written; exponential: alpha * decay^n
    gamma: float = 1.0  # discount of the next table's max (Alg. 2 line 8; MetaQNN's 1)
    epsilon_decay: float = 0.99  # epsilon = decay^n in exploration-exploitation (Sec. VIII-G)
    epsilon_min: float = 0.0
    min_exploration: int = 0  # exploration episodes at least (the paper: 500 for VGG-16)
    memory: int = 16384  # hyper-parameter sets remembered for the no-update-on-repeat rule


class QGraph(NamedTuple):
    """The Q-agents and their tables.

    Attributes:
      nodes: (agent, decision index) of each Q-agent, in acting order.
      sizes: its number of actions.
      edges: (u, v) with u < v, one Q-table of sizes[u] x sizes[v] each.
    """

    nodes: tuple[tuple[str, int], ...]
    sizes: tuple[int, ...]
    edges: tuple[tuple[int, int], ...]

    def in_edges(self, v: int) -> list[int]:
        return [e for e, (_, d) in enumerate(self.edges) if d == v]

    def out_edges(self, u: int) -> list[int]:
        return [e for e, (s, _) in enumerate(self.edges) if s == u]


def graph_of(space: PipelineSpace) -> QGraph:
    """A layerwise space's layer graph; otherwise the chain of every decision in space order."""
    if layerwise.is_layerwise(space):
        spec = layerwise.spec_of(space)
        agents = layerwise.layer_agents(space)
        return QGraph(tuple((a, 0) for a in agents),
                      tuple(int(space[a].sizes[0]) for a in agents), spec.edges())
    nodes = tuple((a, d) for a in space.agents for d in range(space[a].n_decisions))
    sizes = tuple(int(space[a].sizes[d]) for a, d in nodes)
    return QGraph(nodes, sizes, tuple((i, i + 1) for i in range(len(nodes) - 1)))


def check_graph(graph: QGraph) -> QGraph:
    n = len(graph.nodes)
    if n < 1 or len(graph.sizes) != n or any(s < 1 for s in graph.sizes):
        raise ValueError("a Q-graph needs at least one node, each with >= 1 action")
    if len(set(graph.edges)) != len(graph.edges) or any(
            not 0 <= u < v < n for u, v in graph.edges):
        raise ValueError(f"Q-graph edges must be distinct (u, v) with 0 <= u < v < {n}")
    return graph


class QLearningState(NamedTuple):
    q: tuple[np.ndarray, ...]  # float32[N_u, N_v] per edge: the Q-tables (Sec. V-D)
    visits: tuple[np.ndarray, ...]  # int32[N_u, N_v]: updates per cell (0: the "zero cell")
    seen: np.ndarray  # int32[memory, n_nodes]: hyper-parameter sets told (a ring)
    n_seen: np.ndarray  # int32[]: sets ever added to `seen`
    episodes: np.ndarray  # int32[]: episodes told
    exploit_episodes: np.ndarray  # int32[]: episodes told in exploration-exploitation
    alpha: np.ndarray  # float32[]: the current learning rate


def init_state(graph: QGraph, config: QLearningConfig) -> QLearningState:
    q = tuple(np.zeros((graph.sizes[u], graph.sizes[v]), np.float32) for u, v in graph.edges)
    return QLearningState(q, tuple(np.zeros(t.shape, np.int32) for t in q),
                          np.zeros((config.memory, len(graph.nodes)), np.int32),
                          np.int32(0), np.int32(0), np.int32(0), np.float32(config.alpha))


def exploring(visited: list[np.ndarray], episodes: int, config: QLearningConfig) -> bool:
    """Whether the next episode belongs to the exploration phase (a zero cell is left)."""
    return episodes < config.min_exploration or any(not v.all() for v in visited)


def _choice(rng: np.random.Generator, candidates: np.ndarray) -> int:
    return int(candidates[rng.integers(len(candidates))])


def _argmax(rng: np.random.Generator, values: np.ndarray) -> int:
    """Argmax with ties broken at random."""
    return _choice(rng, np.flatnonzero(values == values.max()))


def explore_episode(graph: QGraph, visited: list[np.ndarray],
                    rng: np.random.Generator) -> np.ndarray:
    """Algorithm 1: actions int32[n_nodes] that fill zero (unvisited) cells where they can."""
    a = np.full(len(graph.nodes), -1, np.int64)
    for v, size in enumerate(graph.sizes):
        if a[v] >= 0:  # chosen with its predecessor (Alg. 1 line 3)
            continue
        ins = graph.in_edges(v)
        if not ins:
            # Line 3 (and Sec. VI-D's j in 1..n): a zero cell of any table to an unassigned
            # successor; the successor takes the cell's column.
            cells = [(e, i, j) for e in graph.out_edges(v) if a[graph.edges[e][1]] < 0
                     for i, j in np.argwhere(~visited[e])]
            if cells:
                e, i, j = cells[rng.integers(len(cells))]
                a[v], a[graph.edges[e][1]] = i, j
            else:
                a[v] = rng.integers(size)
            continue
        # Line 5: zero in the row the predecessor chose; with several predecessors, zero in as
        # many of their rows as possible (Sec. VI-D, Fig. 8b).
        zeros = sum((~visited[e][a[graph.edges[e][0]]]).astype(np.int64) for e in ins)
        a[v] = _argmax(rng, zeros) if zeros.max() > 0 else rng.integers(size)
    return a.astype(np.int32)


def exploit_episode(graph: QGraph, q: tuple[np.ndarray, ...],
                    rng: np.random.Generator) -> np.ndarray:
    """Algorithm 3: every agent's greedy action given its predecessors' (ties at random)."""
    a = np.full(len(graph.nodes), -1, np.int64)
    for v, size in enumerate(graph.sizes):
        ins = graph.in_edges(v)
        if not ins:
            outs = graph.out_edges(v)
            if not outs:
                a[v] = rng.integers(size)  # no table to exploit
            else:
                # Line 3 (joint argmax of the first table; Sec. VI-D: over all its tables). The
                # successor then takes the argmax of this row: the joint argmax's column.
                a[v] = _argmax(rng, np.max([q[e].max(axis=1) for e in outs], axis=0))
            continue
        rows = np.stack([q[e][a[graph.edges[e][0]]] for e in ins])
        if len(ins) == 1:
            a[v] = _argmax(rng, rows[0])  # line 5
            continue
        # Fig. 8b: the action that maximizes the most incoming rows, else the best mean.
        votes = (rows == rows.max(axis=1, keepdims=True)).sum(axis=0)
        top = np.flatnonzero(votes == votes.max())
        a[v] = top[0] if len(top) == 1 else _argmax(rng, rows.mean(axis=0))
    return a.astype(np.int32)


def update(graph: QGraph, q: tuple[np.ndarray, ...], visits: tuple[np.ndarray, ...],
           actions: np.ndarray, reward: float, alpha: float, gamma: float
           ) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Algorithm 2 on every table with one episode's actions; returns new (q, visits).

    Every table reads the others as they were before this episode (the paper's loop runs from
    the first table on, and a table only reads the NEXT one, not yet updated).
    """
    new_q = [t.copy() for t in q]
    new_visits = [t.copy() for t in visits]
    for e, (u, v) in enumerate(graph.edges):
        i, j = actions[u], actions[v]
        outs = graph.out_edges(v)
        if not outs or any((visits[f][j] == 0).any() for f in outs):
            new_q[e][i, j] = q[e][i, j] + alpha * reward  # lines 3 and 6
        else:
            best_next = max(q[f][j].max() for f in outs)
            new_q[e][i, j] = (1 - alpha) * q[e][i, j] + alpha * (reward + gamma * best_next)
        new_visits[e][i, j] += 1
    return tuple(new_q), tuple(new_visits)


def make_qlearning(space: PipelineSpace, num_pipelines: int,
                   config: QLearningConfig | None = None, graph: QGraph | None = None
                   ) -> Searcher:
    """Iranfar's multi-agent Q-learning over `space`, `num_pipelines` episodes per ask.

    Args:
      space: the pipeline space (a layerwise one: one agent per layer, its layer graph).
      num_pipelines: P, episodes per ask.
      config: the hyper-parameters (default `QLearningConfig()`).
      graph: the Q-agents and tables (default `graph_of(space)`).
    """
    config = config or QLearningConfig()
    if num_pipelines < 1:
        raise ValueError(f"num_pipelines must be >= 1, got {num_pipelines}")
    if config.alpha_schedule not in ALPHA_SCHEDULES:
        raise ValueError(f"qlearning.alpha_schedule={config.alpha_schedule!r} is not one of "
                         f"{ALPHA_SCHEDULES}")
    for name in ("alpha", "alpha_decay", "epsilon_decay"):
        if not 0 < getattr(config, name) <= 1:
            raise ValueError(f"qlearning.{name}={getattr(config, name)} must be in (0, 1]")
    if not 0 <= config.gamma <= 1 or not 0 <= config.epsilon_min <= 1:
        raise ValueError("qlearning.gamma and qlearning.epsilon_min must be in [0, 1]")
    if config.min_exploration < 0 or config.memory < 1:
        raise ValueError("qlearning.min_exploration must be >= 0 and qlearning.memory >= 1")
    graph = check_graph(graph or graph_of(space))
    n_decisions = {a: space[a].n_decisions for a in space.agents}

    def epsilon(n: int) -> float:
        return max(config.epsilon_min, config.epsilon_decay ** n)

    def init(key):
        del key
        return init_state(graph, config)

    def ask(state: QLearningState, key):
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
        claimed = [v > 0 for v in state.visits]
        n_exploit = int(state.exploit_episodes)
        rows = []
        for p in range(num_pipelines):
            if exploring(claimed, int(state.episodes) + p, config):
                a = explore_episode(graph, claimed, rng)
            else:
                greedy = rng.random() >= epsilon(n_exploit)
                n_exploit += 1
                a = (exploit_episode(graph, state.q, rng) if greedy else
                     np.array([rng.integers(s) for s in graph.sizes], np.int32))
            for e, (u, v) in enumerate(graph.edges):  # no repetition across the batch
                claimed[e][a[u], a[v]] = True
            rows.append(a)
        return _to_actions(np.stack(rows)), state

    def _to_actions(rows: np.ndarray) -> dict[str, jax.Array]:
        out = {a: np.zeros((len(rows), n), np.int32) for a, n in n_decisions.items()}
        for k, (agent, d) in enumerate(graph.nodes):
            out[agent][:, d] = rows[:, k]
        return {a: jnp.asarray(v) for a, v in out.items()}

    def tell(state: QLearningState, actions, rewards):
        rewards = np.asarray(rewards, np.float64)
        tokens = np.stack([np.asarray(actions[a])[:, d] for a, d in graph.nodes], axis=1)
        if len(tokens) != len(rewards):
            raise ValueError(f"tell got {len(rewards)} rewards for {len(tokens)} pipelines")
        q, visits, seen = state.q, state.visits, state.seen.copy()
        n_seen, episodes = int(state.n_seen), int(state.episodes)
        n_exploit, alpha = int(state.exploit_episodes), float(state.alpha)
        explored = repeats = 0
        for a, r in zip(tokens, rewards):
            r = float(r) if np.isfinite(r) else PENALTY
            if exploring([v > 0 for v in visits], episodes, config):
                step_alpha = config.alpha
                explored += 1
            else:
                # eq. 3 with n = exploitation episodes already passed
                alpha = (alpha * config.alpha_decay ** n_exploit
                         if config.alpha_schedule == "compound" else
                         config.alpha * config.alpha_decay ** n_exploit)
                step_alpha = alpha
                n_exploit += 1
            known = seen[:min(n_seen, config.memory)]
            if len(known) and (known == a).all(axis=1).any():
                repeats += 1  # a repeated hyper-parameter set updates nothing
            else:
                q, visits = update(graph, q, visits, a, r, step_alpha, config.gamma)
                seen[n_seen % config.memory] = a
                n_seen += 1
            episodes += 1
        state = QLearningState(q, visits, seen, np.int32(n_seen), np.int32(episodes),
                               np.int32(n_exploit), np.float32(alpha))
        metrics = {"mean_reward": jnp.asarray(rewards.mean(), jnp.float32),
                   "explored": jnp.asarray(explored, jnp.int32),
                   "repeats": jnp.asarray(repeats, jnp.int32),
                   "zero_cells": jnp.asarray(sum(int((v == 0).sum()) for v in visits), jnp.int32),
                   "alpha": jnp.asarray(alpha, jnp.float32),
                   "epsilon": jnp.asarray(epsilon(n_exploit), jnp.float32)}
        return state, metrics

    return Searcher(init, ask, tell)
