"""MA2ML: multi-agent actor-critic with counterfactual credit and a KL-regularized target policy.

One agent per ML module (AUG, NAS, HPO), each with its own policy pi_i (factorized or
autoregressive, `agents.policy`) and target policy rho_i. Per iteration (Algorithm 1 of the paper):
`ask` samples P pipelines from the current policies; `tell` stores them with their rewards in the
replay buffer and runs `updates` update steps, each one jitted function (`update_step`):

1. critic, equation (11): Q_phi(S, A) regressed onto the rewards of a replay mini-batch,
   standardized by running statistics, as they are (`critic_target="raw"`), or
   (`critic_target="quantile"`) replaced by the normal scores of their ranks among every reward
   in the replay (`agents.normalize.normal_scores`);
2. actors, equations (12)-(13): for actor actions A (see `actor_actions`),
       adv_i = [Q(S, A) - lam * log(pi_i / rho_i)(A_i)] - b_i,
       b_i   = E_{A_i' ~ pi_i}[Q(S, A_i', A_-i)] - lam * KL(pi_i || rho_i),
   the expectation estimated with K alternatives A_i' ~ pi_i per agent and per actor action: the
   agents x K x batch joint actions are scored in ONE vmapped critic call. KL is exact for the
   factorized policy, the K-sample estimate E[log(pi_i/rho_i)(A_i')] for the autoregressive one.
   Gradient: -mean_B sum_i stop_grad(adv_i) * grad log pi_i(A_i);
3. targets, equation (14): rho_i <- (1 - tau) rho_i + tau pi_i.

Where the actor's actions come from, `actor_actions` selects:
  "critic_batch": the actions of the critic step's replay mini-batch B, as Figure 2's caption
            says ("a mini-batch of <S,A,R> are sampled from the replay buffer to update the
            critic, policies, and target policies");
  "replay": the actions of a replay mini-batch of their own (what was evaluated, possibly by
            older policies);
  "fresh":  actions sampled from the current policies and scored by the critic. The critic is what
            makes learning off-policy; the policy-gradient estimate is then on-policy in A.
Which pipelines `ask` proposes, `proposal` selects:
  "policy":   P samples of the current policies (the paper's Algorithm 1);
  "screened": many candidates (policy samples, uniform samples, every one-decision neighbour of
              the best pipelines so far) scored by an ensemble of `ensemble` critics, and the P
              best never-evaluated ones by an acquisition (`agents.screening`). The critic
              members are trained as in (11), each on its own bootstrap mini-batches; equations
              (12)-(14) use their mean, so with `ensemble=1` the learner is the paper's.
              With `mutants` > 0 the candidates also hold, per best pipeline, that many
              multi-decision moves whose new values the policies draw (renormalized over the
              values the parent lacks; `agents.screening.policy_mutants`): the way the agents'
              policies reach the proposals in spaces too large for one-decision moves. With
              `mutant_agents="credit"` each move changes one agent's decisions, the agent drawn by
              its counterfactual advantage (12) at the parent (worst-rated choices likeliest).
              With `ordered_steps` the neighbours of an ordered decision (numeric levels,
              `spaces.Decision.ordered`) are one level up and down only, not all its values.
Ordered decisions in the critic, `critic_order`: "none" embeds every value of a decision with a
free vector; "thermometer" embeds level i of an ordered decision as the sum of its level vectors
0 .. i (`agents.critic`), so the critic's estimate of a level carries to its neighbours.
What the actors maximise follows the critic's target: with `critic_target="quantile"` (the
default) Q predicts the normal score Phi^-1 of a pipeline's reward rank among every reward in the
replay, so (13) raises E_pi[Phi^-1(rank of R)], not E_pi[R]: a monotone transform that weighs an
improvement near the top of the replay as much as one in the middle, and whose scale moves as
the replay grows (a pipeline's target falls as better ones arrive). With "standardized" or "raw"
the objective is E_pi[R] up to an affine map, as in the paper.
`on_policy=True` is the paper's on-policy ablation: every mini-batch is drawn from the pipelines
of the latest `tell` only (the replay buffer still stores all, but the learner sees only those).

The paper's algorithm, `PAPER` (`search.algorithm=ma2ml_paper`; `ma2ml_onpolicy` is `PAPER` with
`on_policy=True`), against Algorithm 1:
  1  initialize phi, theta_i, theta_bar_i: `init`; one critic (`ensemble=1`, `make_critic`), each
     agent's policy (`agents.policy`), its target a copy of it.
  2  for iter = 1 .. max_iter: the driver's loop (`search.run`, `search.iterations`), one `ask`,
     evaluation and `tell` per iteration.
  3  receive S_i: the state is the same every iteration (a one-step problem), so no code reads it;
     the policies are unconditional (factorized) or condition on their own earlier decisions
     (autoregressive).
  4  sample A_i ~ pi_i for each agent: `ask` with `proposal="policy"`, P = `search.pipelines`
     samples of every policy.
  5  the pipeline from A: `PipelineSpace.decode` in the driver.
  6  train the pipeline: the evaluator (`evaluate`, `proxy`), or a user's objective.
  7  top-1 validation accuracy as R: `reward.kind=accuracy` (`rewards`).
  8  store <S, A, R> in D: `tell` -> `replay.add`.
  9  sample a mini-batch B from D: `update_step`'s one critic step (`critic_steps=1`,
     `updates=1`: one update step per `tell`) draws B, `critic_batch` items with replacement.
  10 update the critic by (11): one Adam step on mean_B (Q_phi(S, A) - R~)^2 (R~: below).
  11 update each policy by (13): one Adam step of every actor on B's actions
     (`actor_actions="critic_batch"`), the baseline (12) from K = 1 alternative A_i' ~ pi_i per
     item (`num_alternatives=1`: Section 3.4's "use the sampled action A_i as input, while
     keeping other actions fixed"), KL(pi_i || rho_i) exact for the factorized policy.
  12 update each target policy by (14): rho_i <- (1 - tau) rho_i + tau pi_i, once.
  13 end for.
  14-16 top-k pipelines by validation accuracy, retrained, measured on test: `retrain`.
Where the paper is silent, `PAPER` takes the values its own sweep chose by the default's rule on
the same tuning problems (`bench.sample_efficiency --sweep --sweep_algorithm=ma2ml_paper`,
docs/BENCHMARKS.md): lam = 0.3, Adam with actor_lr = 0.3 and critic_lr = 0.03; and this class's
defaults, which that sweep kept: tau = 0.1, |B| = 64
(`critic_batch`), a critic of summed per-decision embeddings and an MLP of widths (64, 64)
(`agents.critic`), factorized policies, a replay of 4096 items, one update step per iteration
(Algorithm 1's loop body). R~ is the reward standardized by the running mean and std of every
reward told (`critic_target="standardized"`), not the raw R of (11): the paper's R is a top-1
accuracy whose spread between pipelines is a few hundredths, while the critic starts near 0 and
lam and the learning rates (which the paper does not give) act in the reward's units.
Standardizing is an affine map of R, so the critic's regression is (11)'s up to that map, and
the advantages of (13) are the raw ones divided by the reward std with lam counted in reward
stds: one lam and one learning rate serve accuracies, constrained rewards and a user's objective
alike. The price: the map moves a little as rewards arrive. `critic_target="raw"` regresses on
R itself (lam then in the reward's own units).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ma2ml_jax.agents.base import Searcher
from ma2ml_jax.agents.critic import ORDERS as CRITIC_ORDERS
from ma2ml_jax.agents.critic import critic_loss, make_critic
from ma2ml_jax.agents.neighbourhood import FlatSpace
from ma2ml_jax.agents.normalize import (
    RunningStats,
    finite_rewards,
    normal_scores,
    pad_batch,
    standardize,
    update_stats,
)
from ma2ml_jax.agents.policy import POLICIES, make_policy
from ma2ml_jax.agents.replay import ReplayState, make_replay
from ma2ml_jax.agents.screening import (
    ACQUISITIONS,
    make_hash,
    neighbours,
    novel,
    policy_mutants,
    select,
    tiers,
)
from ma2ml_jax.agents.screening import concat as concat_actions
from ma2ml_jax.agents.screening import other_values as screening_other_values
from ma2ml_jax.agents.screening import take as take_actions
from ma2ml_jax.spaces import PipelineSpace

ACTOR_ACTIONS = ("fresh", "replay", "critic_batch")
PROPOSALS = ("policy", "screened")
CRITIC_TARGETS = ("standardized", "quantile", "raw")
MUTANT_AGENTS = ("any", "credit")
FILL = 4  # screened: uniform fill-in candidates per proposal


class MA2MLState(NamedTuple):
    policy: Any  # {agent: policy params}: pi
    target: Any  # {agent: policy params}: rho, the Polyak average of pi (14)
    critic: Any  # critic params phi, every leaf with a leading [ensemble] axis
    actor_opt: Any
    critic_opt: Any
    replay: ReplayState  # items {"tokens": {agent: int32[n]}, "reward": float32[]} (raw rewards)
    stats: RunningStats  # of every reward told, for standardization
    key: jax.Array  # drives the updates (tell takes no key)
    last_batch: jax.Array  # int32[]: items added by the latest tell (the on-policy window)
    iteration: jax.Array  # int32[]


class MA2MLConfig(NamedTuple):
    """Every hyper-parameter of MA2ML (config keys `ma2ml.*`; defaults: docs/BENCHMARKS.md)."""

    policy: str = "factorized"  # factorized | autoregressive
    hidden: int = 64  # autoregressive controller width
    lam: float = 3.0  # lambda: weight of log(pi/rho), the brake on how far pi moves
    tau: float = 0.1  # Polyak rate of the target policies (14)
    num_alternatives: int = 8  # K: samples of A_i' per agent in the baseline (12)
    actor_lr: float = 0.1
    critic_lr: float = 1e-2
    updates: int = 10  # update steps per iteration (tell)
    critic_batch: int = 64
    actor_batch: int = 32
    # fresh (sampled from pi, scored by the critic) | replay (a mini-batch of its own) |
    # critic_batch (the critic step's mini-batch B, Figure 2; actor_batch is then unused)
    actor_actions: str = "fresh"
    critic_hidden: tuple = (64, 64)
    replay_capacity: int = 4096
    entropy: float = 0.0  # optional entropy bonus (0 = the paper's objective)
    on_policy: bool = False
    critic_steps: int = 32  # critic steps (11) per update step
    # What the critic regresses on: standardized rewards (running mean and std) | normal scores
    # of the rewards' ranks in the replay (agents.normalize.normal_scores) | raw rewards
    critic_target: str = "quantile"
    ensemble: int = 5  # critic members (1: the paper's critic); (12)-(13) use their mean
    # Which pipelines are evaluated: policy (P samples of the policies, the paper's Algorithm 1)
    # | screened (the P best never-evaluated candidates by the critic ensemble; agents.screening)
    proposal: str = "screened"
    candidates: int = 512  # screened: policy samples scored per ask
    uniform_candidates: int = 0  # screened: uniform samples scored per ask
    parents: int = 3  # screened: best pipelines whose one-decision neighbours are scored
    acquisition: str = "ucb"  # screened: ucb (mean + beta * std) | thompson
    beta: float = 1.0  # screened: the UCB's weight of the members' standard deviation
    # screened: per parent, multi-decision moves whose new values are drawn from the policies
    # (agents.screening.policy_mutants), changing 1 .. max_changes decisions
    mutants: int = 0
    max_changes: int = 8
    # screened: which decisions a mutant changes: any | credit (the decisions of one agent, drawn
    # with the agents whose choices the critic rates worst against their policy's alternatives,
    # eq. (12), the likeliest)
    mutant_agents: str = "any"
    # screened: proposals per batch taken from the best pipeline's new one-decision neighbours in
    # a random order (local search's move), before the acquisition picks the rest
    local_share: int = 0
    # How the critic embeds an ordered decision's levels: none (a free vector per value) |
    # thermometer (level i: the sum of level vectors 0 .. i; agents.critic)
    critic_order: str = "none"
    # screened: an ordered decision's neighbours are the adjacent levels only (x_d -+ 1, clipped;
    # agents.neighbourhood), an unordered decision's all its other values
    ordered_steps: bool = False

    def check(self, section: str = "ma2ml") -> None:
        """Raises ValueError naming the bad key as `section.key` (the config section read)."""
        for name, value, valid in (("policy", self.policy, POLICIES),
                                   ("actor_actions", self.actor_actions, ACTOR_ACTIONS),
                                   ("proposal", self.proposal, PROPOSALS),
                                   ("critic_target", self.critic_target, CRITIC_TARGETS),
                                   ("acquisition", self.acquisition, ACQUISITIONS),
                                   ("mutant_agents", self.mutant_agents, MUTANT_AGENTS),
                                   ("critic_order", self.critic_order, CRITIC_ORDERS)):
            if value not in valid:
                raise ValueError(f"{section}.{name}={value!r} is not one of {list(valid)}")
        for name in ("uniform_candidates", "parents", "mutants", "local_share"):
            if getattr(self, name) < 0:
                raise ValueError(f"{section}.{name}={getattr(self, name)} must be >= 0")
        if self.beta < 0:
            raise ValueError(f"{section}.beta={self.beta} must be >= 0")
        for name in ("num_alternatives", "updates", "critic_batch", "actor_batch",
                     "replay_capacity", "critic_steps", "ensemble", "candidates", "max_changes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{section}.{name}={getattr(self, name)} must be >= 1")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"{section}.tau={self.tau} must be in (0, 1]")
        if self.lam < 0 or self.actor_lr <= 0 or self.critic_lr <= 0:
            raise ValueError(f"{section}.lam must be >= 0 and the learning rates > 0")


# Algorithm 1 as written (search.algorithm=ma2ml_paper, config section `ma2ml_paper`): P policy
# samples evaluated; per iteration one mini-batch B, one critic step (11) on it with one critic,
# one actor step (13) on its actions with K = 1, one Polyak step (14); lam and the step sizes from
# its own sweep. Every other value is the class default (the module docstring says why).
PAPER = MA2MLConfig(proposal="policy", ensemble=1, updates=1, critic_steps=1,
                    actor_actions="critic_batch", num_alternatives=1,
                    critic_target="standardized", lam=0.3, actor_lr=0.3, critic_lr=0.03)


def counterfactual_baseline(critic_apply, policies, params, target, actions, alternatives,
                            lam: float):
    """Equation (12) for every agent, with all agents x K x B critic calls in one vmapped call.

    Args:
      critic_apply: {agent: int[..., n]} -> Q[...] (critic params already bound).
      policies: {agent: Policy}; params / target: their pi and rho parameters.
      actions: the joint actions A, {agent: int32[B, n_agent]}.
      alternatives: A_i' ~ pi_i, {agent: int32[K, B, n_agent]}.
      lam: lambda.

    Returns:
      float32[n_agents, B]: b_i(S, A_-i) in the order of `policies`.
    """
    agents = tuple(policies)
    k, b = next(iter(alternatives.values())).shape[:2]
    joint = {j: jnp.stack([alternatives[j] if i == j else
                           jnp.broadcast_to(actions[j], (k, b) + actions[j].shape[1:])
                           for i in agents]) for j in agents}  # [agents, K, B, n_j]
    flat = {j: x.reshape((-1,) + x.shape[3:]) for j, x in joint.items()}
    q = jax.vmap(critic_apply)(flat).reshape(len(agents), k, b)
    out = []
    for i, a in enumerate(agents):
        pol = policies[a]
        if pol.factorized:  # exact KL(pi_i || rho_i), the same for every action
            kl = pol.kl(params[a], target[a], alternatives[a][0])
        else:  # unbiased: E_{A_i' ~ pi_i}[log pi_i - log rho_i]
            kl = (pol.log_prob(params[a], alternatives[a])
                  - pol.log_prob(target[a], alternatives[a])).mean(0)
        out.append(q[i].mean(0) - lam * kl)
    return jnp.stack(out)


class MA2ML(NamedTuple):
    """The searcher and its parts (for tests and benchmarks)."""

    searcher: Searcher
    update_step: Any  # jitted (state, key) -> (state, metrics): (11), (13), (14) once
    policies: dict
    critic: Any
    replay: Any


def actor_surrogate(policies, params, current, target, q_apply, actions, alternatives,
                    lam: float, entropy: float = 0.0):
    """The loss whose gradient in `params` is minus the policy gradient (13) of every agent.

    Args:
      policies: {agent: Policy}; params: the parameters differentiated (equal to `current`);
        current / target: pi and rho, for the advantage (no gradient flows through them).
      q_apply: the critic, {agent: int[..., n]} -> Q[...].
      actions: actor actions A, {agent: int32[B, n]}; alternatives: {agent: int32[K, B, n]} ~ pi.
      lam: lambda; entropy: optional entropy bonus weight.

    Returns:
      (loss, (advantage float32[agents, B], log_ratio float32[agents, B])).
    """
    agents = tuple(policies)
    q = q_apply(actions)
    baseline = counterfactual_baseline(q_apply, policies, current, target, actions,
                                       alternatives, lam)
    log_ratio = jnp.stack([policies[a].log_prob(current[a], actions[a])
                           - policies[a].log_prob(target[a], actions[a]) for a in agents])
    advantage = jax.lax.stop_gradient(q[None] - lam * log_ratio - baseline)  # [agents, B]
    logp = jnp.stack([policies[a].log_prob(params[a], actions[a]) for a in agents])
    loss = -(advantage * logp).mean(1).sum()
    if entropy:
        loss -= entropy * sum(policies[a].entropy(params[a], actions[a]).mean() for a in agents)
    return loss, (advantage, log_ratio)


def make_ma2ml(space: PipelineSpace, num_pipelines: int, config: MA2MLConfig | None = None
               ) -> Searcher:
    """MA2ML over `space`, `num_pipelines` pipelines per iteration."""
    return build_ma2ml(space, num_pipelines, config).searcher


def build_ma2ml(space: PipelineSpace, num_pipelines: int, config: MA2MLConfig | None = None
                ) -> MA2ML:
    """`make_ma2ml`, returning the searcher with its policies, critic, replay and update step."""
    config = config or MA2MLConfig()
    config.check()
    if num_pipelines < 1:
        raise ValueError(f"num_pipelines must be >= 1, got {num_pipelines}")
    agents = space.agents
    policies = {a: make_policy(space[a], config.policy, config.hidden) for a in agents}
    critic = make_critic(space, config.critic_hidden, config.critic_order)
    replay = make_replay(config.replay_capacity)
    actor_tx = optax.adam(config.actor_lr)
    critic_tx = optax.adam(config.critic_lr)
    lam, K = config.lam, config.num_alternatives

    members = config.ensemble
    from_critic_batch = config.actor_actions == "critic_batch"
    actor_batch = config.critic_batch if from_critic_batch else config.actor_batch
    pipeline_hash = make_hash(space)
    flat = FlatSpace(space, config.ordered_steps)

    def init(key):
        k_pol, k_critic, k_state = jax.random.split(key, 3)
        params = {a: policies[a].init(jax.random.fold_in(k_pol, i)) for i, a in enumerate(agents)}
        phi = jax.vmap(critic.init)(jax.random.split(k_critic, members))
        example = {"tokens": {a: jnp.zeros((space[a].n_decisions,), jnp.int32) for a in agents},
                   "reward": jnp.zeros((), jnp.float32)}
        # Every leaf its own buffer: tell donates the state, and a buffer donated twice fails
        # (rho starts equal to pi, but as a copy).
        return MA2MLState(params, jax.tree.map(jnp.copy, params), phi, actor_tx.init(params),
                          critic_tx.init(phi), replay.init(example), RunningStats.zeros(),
                          k_state, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def sample_joint(params, key, num):
        return {a: policies[a].sample(params[a], jax.random.fold_in(key, i), num)
                for i, a in enumerate(agents)}

    def ensemble_q(phi, actions):
        """float32[members, ...]: every member's Q(S, A) of joint actions {agent: int[..., n]}."""
        return jax.vmap(critic.apply, in_axes=(0, None))(phi, actions)

    agent_of = np.repeat(np.arange(len(agents)), flat.widths)  # the agent of each decision

    def other_values(params, parents, key, per_parent):
        """{agent: int32[M * per_parent, n]}: per decision of every parent, a value other than
        the parent's, from the policy's conditional probabilities (`screening.other_values`).
        """
        return {a: screening_other_values(policies[a].logits(params[a], parents[a]),
                                          parents[a], jax.random.fold_in(key, i), per_parent)
                for i, a in enumerate(agents)}

    def credit_allowed(state, parents, key, num):
        """bool[num, D]: each mutant may change one agent's decisions, the agent drawn with
        probability softmax(-adv / std(adv)) over the parent's counterfactual advantages
        adv_i = Q(S, A) - b_i (12) under the ensemble's mean critic.
        """
        k_alt, k_pick = jax.random.split(key)
        m = parents[agents[0]].shape[0]
        alts = {a: x.reshape((K, m, -1)) for a, x in
                sample_joint(state.policy, k_alt, K * m).items()}
        q_apply = lambda toks: ensemble_q(state.critic, toks).mean(0)  # noqa: E731
        baseline = counterfactual_baseline(q_apply, policies, state.policy, state.target,
                                           parents, alts, lam)  # [agents, M]
        adv = q_apply(parents)[None] - baseline
        logits = -adv / (adv.std() + 1e-6)
        parent = jnp.repeat(jnp.arange(m), num // m)
        pick = jax.random.categorical(k_pick, logits.T[parent])  # [num]
        return pick[:, None] == jnp.asarray(agent_of)[None]

    def screened(state, key):
        """The P best never-evaluated candidates by the acquisition (agents.screening)."""
        k_pol, k_uni, k_sel = jax.random.split(key, 3)
        parts = [sample_joint(state.policy, k_pol, config.candidates)]
        if config.uniform_candidates:
            parts.append(space.sample(k_uni, config.uniform_candidates))
        stored = state.replay.data["tokens"]
        valid = jnp.arange(replay.capacity) < state.replay.size
        if config.parents:
            best = jax.lax.top_k(jnp.where(valid, state.replay.data["reward"], -jnp.inf),
                                 min(config.parents, replay.capacity))[1]
            parents = take_actions(stored, best)
            parts.append(neighbours(space, parents, config.ordered_steps))
            if config.mutants:
                k_mut, k_sub, k_agent = jax.random.split(jax.random.fold_in(key, 4), 3)
                num = best.shape[0] * config.mutants
                samples = other_values(state.policy, parents, k_mut, config.mutants)
                allowed = None
                if config.mutant_agents == "credit":
                    allowed = credit_allowed(state, parents, k_agent, num)
                parts.append(flat.unflatten(policy_mutants(
                    flat, flat.flatten(parents), flat.flatten(samples), k_sub,
                    config.max_changes, allowed)))
        # Last: uniform samples that are proposed only when fewer than P of the others are new
        # (collapsed policies and explored neighbourhoods), so no evaluation goes to a repeat.
        parts.append(space.sample(jax.random.fold_in(key, 3), FILL * num_pipelines))
        candidates = concat_actions(*parts)
        new = novel(pipeline_hash(candidates), pipeline_hash(stored), valid)
        filler = jnp.arange(new.shape[0]) >= new.shape[0] - FILL * num_pipelines
        local = jnp.zeros(new.shape, bool)
        if config.local_share and config.parents:
            # `local_share` of the batch: new one-decision neighbours of the best pipeline in a
            # random order, as local search tries them, whatever the critic rates them.
            start = config.candidates + config.uniform_candidates
            position = jnp.arange(new.shape[0])
            own = (position >= start) & (position < start + flat.num_neighbours) & new
            priority = jnp.where(own, jax.random.uniform(jax.random.fold_in(key, 5),
                                                         new.shape), -1.0)
            top, at = jax.lax.top_k(priority, min(config.local_share, num_pipelines))
            local = local.at[at].set(top >= 0)
        index = select(ensemble_q(state.critic, candidates),
                       tiers(local, new & ~filler, new),
                       num_pipelines, config.acquisition, config.beta, k_sel)
        return take_actions(candidates, index)

    @jax.jit
    def ask(state, key):
        if config.proposal == "screened":
            return screened(state, key), state
        return sample_joint(state.policy, key, num_pipelines), state

    def update_step(state: MA2MLState, key) -> tuple[MA2MLState, dict[str, jax.Array]]:
        """One critic step (11), one step of every actor (13), one Polyak step (14)."""
        k_critic, k_actor, k_alt = jax.random.split(key, 3)
        window = state.last_batch if config.on_policy else None

        # (11) critic on standardized rewards (or their ranks' normal scores); each member on
        # its own mini-batches.
        fitted = state.replay
        if config.critic_target == "quantile":
            valid = jnp.arange(replay.capacity) < state.replay.size
            fitted = fitted._replace(data={**fitted.data, "reward": normal_scores(
                fitted.data["reward"], valid)})

        def critic_step(carry, k):
            phi, opt = carry
            batch = jax.vmap(lambda kk: replay.sample(fitted, kk, config.critic_batch,
                                                      window))(jax.random.split(k, members))
            if config.critic_target == "standardized":
                target_r = standardize(state.stats, batch["reward"])  # [members, batch]
            else:  # quantile: normal scores already in the replay; raw: the rewards R
                target_r = batch["reward"]

            def loss(phi):
                return jax.vmap(lambda p, toks, r: critic_loss(critic, p, toks, r))(
                    phi, batch["tokens"], target_r).sum()

            value, grads = jax.value_and_grad(loss)(phi)
            updates, opt = critic_tx.update(grads, opt, phi)
            # The mini-batch B goes on to the actors only where they learn from it (a Python
            # branch: the other settings trace the program they always traced).
            used = (jax.tree.map(lambda x: x[0], batch["tokens"]) if from_critic_batch
                    else None)
            return (optax.apply_updates(phi, updates), opt), (value / members, used)

        (phi, critic_opt), (losses, critic_actions) = jax.lax.scan(
            critic_step, (state.critic, state.critic_opt),
            jax.random.split(k_critic, config.critic_steps))
        loss_q = losses[-1]

        # (12)-(13) actors.
        if from_critic_batch:  # the last critic step's B (the first member's, if several)
            actions = jax.tree.map(lambda x: x[-1], critic_actions)
        elif config.actor_actions == "replay":
            actions = replay.sample(state.replay, k_actor, config.actor_batch, window)["tokens"]
        else:
            actions = sample_joint(state.policy, k_actor, config.actor_batch)
        alternatives = {a: x.reshape((K, actor_batch, -1)) for a, x in
                        sample_joint(state.policy, k_alt, K * actor_batch).items()}
        q_apply = lambda toks: ensemble_q(phi, toks).mean(0)  # noqa: E731
        (_, (advantage, log_ratio)), grads = jax.value_and_grad(
            lambda params: actor_surrogate(policies, params, state.policy, state.target, q_apply,
                                           actions, alternatives, lam, config.entropy),
            has_aux=True)(state.policy)
        updates, actor_opt = actor_tx.update(grads, state.actor_opt, state.policy)
        params = optax.apply_updates(state.policy, updates)
        # (14) target policies.
        target = jax.tree.map(lambda r, p: (1 - config.tau) * r + config.tau * p,
                              state.target, params)
        metrics = {"critic_loss": loss_q, "advantage_std": advantage.std(),
                   "kl": log_ratio.mean()}
        return state._replace(policy=params, target=target, critic=phi, actor_opt=actor_opt,
                              critic_opt=critic_opt), metrics

    def _tell(state, actions, rewards, valid):
        rewards = finite_rewards(rewards, valid)
        n = valid.sum().astype(jnp.int32)
        state = state._replace(
            replay=replay.add(state.replay, {"tokens": actions, "reward": rewards}, n),
            stats=update_stats(state.stats, rewards, valid), last_batch=n)
        key, sub = jax.random.split(state.key)
        state, metrics = jax.lax.scan(update_step, state, jax.random.split(sub, config.updates))
        metrics = jax.tree.map(lambda m: m[-1], metrics)
        metrics["mean_reward"] = jnp.where(valid, rewards, 0.0).sum() / jnp.maximum(n, 1)
        return state._replace(key=key, iteration=state.iteration + 1), metrics

    tell_jit = jax.jit(_tell, donate_argnums=0)

    def tell(state, actions, rewards):
        """Any batch size (the driver appends replaced repeats): padded to P or 2P rows."""
        return tell_jit(state, *pad_batch({a: actions[a] for a in agents}, rewards,
                                          num_pipelines))

    return MA2ML(Searcher(init, ask, tell), jax.jit(update_step), policies, critic, replay)
