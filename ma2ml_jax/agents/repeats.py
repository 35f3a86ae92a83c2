"""Repeats: do not spend evaluations on pipelines whose reward is already known.

On a deterministic objective a second evaluation of the same pipeline buys nothing, yet
policy-gradient searchers drift into asking for what they already tried (the policy sharpens
around the best pipelines). `avoid_repeats` replaces every asked pipeline that was evaluated
before, or that duplicates an earlier one of the same batch, by a fresh sample of the searcher
(drawn by asking again with derived keys, at most `max_rounds` rounds), and returns the replaced
originals so that the learner is still told them, with their known rewards: a policy-gradient
estimate stays one over what the policy asked for, and no evaluation is spent on it.

It needs a searcher whose `ask` does not change its state and whose `tell` takes any batch size
(random search, MA2ML and its ablations, MA2ML-Lite). Everything is host-side and deterministic
given the keys and the history, so a resumed search replays it exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np


def iteration_keys(root: jax.Array, iteration: int) -> tuple[jax.Array, jax.Array]:
    """(ask key, evaluation key) of a search iteration, by fold_in so that a resumed search
    draws the same numbers (big_vision); the searcher's init key is `fold_in(root, 0)`.
    """
    k_ask, k_eval = jax.random.split(jax.random.fold_in(root, iteration + 1))
    return k_ask, k_eval


def pipeline_key(actions: Mapping[str, Any], index: int) -> bytes:
    """A hashable identity of pipeline `index` of a batch {agent: int[P, n]}."""
    return b"|".join(np.asarray(actions[a][index], np.int32).tobytes() for a in sorted(actions))


def count_repeats(actions: Mapping[str, Any], seen: Mapping[bytes, Any] | set) -> int:
    """Pipelines of a batch that were evaluated before or repeat an earlier one of the batch."""
    num = next(iter(actions.values())).shape[0]
    in_batch: set[bytes] = set()
    repeats = 0
    for p in range(num):
        k = pipeline_key(actions, p)
        repeats += k in seen or k in in_batch
        in_batch.add(k)
    return repeats


class Deduplicated(NamedTuple):
    actions: dict[str, np.ndarray]  # the P pipelines to evaluate
    replaced: dict[str, np.ndarray]  # the asked repeats that were replaced, {agent: int[E, n]}
    asked_repeats: int  # asked pipelines that were repeats (replaced or not)


def avoid_repeats(ask: Callable, state, actions: Mapping[str, Any], key: jax.Array,
                  seen: Mapping[bytes, Any] | set, max_rounds: int = 10) -> Deduplicated:
    """Replaces repeats in `actions` by fresh samples of `ask(state, key')` (see module doc).

    Args:
      ask: the searcher's ask; called with `fold_in(key, round)`, its new state is discarded.
      state: the searcher state the batch was asked with.
      actions: the asked batch {agent: int[P, n]}.
      key: the key the batch was asked with.
      seen: identities (`pipeline_key`) of every pipeline evaluated before.
      max_rounds: asks for replacements; a repeat left after them is evaluated again.
    """
    final = {a: np.array(v, np.int32) for a, v in actions.items()}
    num = next(iter(final.values())).shape[0]
    in_batch: set[bytes] = set()
    pending, originals = [], {}
    for p in range(num):
        k = pipeline_key(final, p)
        if k in seen or k in in_batch:
            pending.append(p)
            originals[p] = {a: v[p].copy() for a, v in final.items()}
        else:
            in_batch.add(k)
    asked_repeats = len(pending)
    for r in range(max_rounds):
        if not pending:
            break
        candidates, _ = ask(state, jax.random.fold_in(key, r + 1))
        candidates = {a: np.asarray(v) for a, v in candidates.items()}
        for q in range(num):
            if not pending:
                break
            k = pipeline_key(candidates, q)
            if k in seen or k in in_batch:
                continue
            p = pending.pop(0)
            for a in final:
                final[a][p] = candidates[a][q]
            in_batch.add(k)
    for p in pending:  # not replaced: evaluated again, so not told twice
        del originals[p]
    replaced = {a: np.stack([originals[p][a] for p in sorted(originals)]) if originals else
                np.zeros((0,) + final[a].shape[1:], np.int32) for a in final}
    return Deduplicated(final, replaced, asked_repeats)


def known_rewards(replaced: Mapping[str, np.ndarray], history: Mapping[bytes, float],
                  actions: Mapping[str, Any], rewards) -> np.ndarray:
    """Rewards of the replaced repeats: from `history`, or from this batch's (actions, rewards)."""
    batch = {pipeline_key(actions, p): float(r) for p, r in enumerate(rewards)}
    n = next(iter(replaced.values())).shape[0]
    out = []
    for e in range(n):
        k = pipeline_key(replaced, e)
        out.append(history[k] if k in history else batch[k])
    return np.asarray(out, np.float32)


class RepeatGuard:
    """The driver's ask/tell around a searcher, with repeats handled (see the module doc).

        guard = RepeatGuard(searcher, avoid=True, max_rounds=10)
        actions, replaced, state = guard.propose(state, key)   # P pipelines to evaluate
        state = guard.learn(state, actions, replaced, rewards) # tells them and the replaced
        state, actions, out = guard.step(state, root, it, evaluate)   # one whole iteration

    Keeps every evaluated pipeline's first reward (`history`) and counts asked pipelines and
    asked repeats, also when `avoid` is off (so every algorithm's repeat fraction is known), and
    the repeats actually evaluated (those no replacement was found for).
    `step` is the search iteration of `search.run` and of the sample-efficiency benchmark.
    """

    def __init__(self, searcher, avoid: bool, max_rounds: int = 10):
        self.searcher, self.avoid, self.max_rounds = searcher, avoid, max_rounds
        self.history: dict[bytes, float] = {}
        self.asked = 0
        self.asked_repeats = 0
        self.evaluated = 0
        self.evaluated_repeats = 0

    @property
    def repeat_fraction(self) -> float:
        """Asked pipelines that were repeats (before any replacement)."""
        return self.asked_repeats / max(self.asked, 1)

    @property
    def evaluated_repeat_fraction(self) -> float:
        """Evaluated pipelines that had been evaluated before (or twice in one batch)."""
        return self.evaluated_repeats / max(self.evaluated, 1)

    @property
    def counters(self) -> dict[str, int]:
        return {"asked": self.asked, "asked_repeats": self.asked_repeats,
                "evaluated": self.evaluated, "evaluated_repeats": self.evaluated_repeats}

    def restore(self, counters: Mapping[str, int], actions: Mapping[str, Any], rewards) -> None:
        """State of a resumed search: the saved counters, and the history rebuilt from every
        evaluated pipeline in order ({agent: int[N, n]}, float[N], as in the trial log).
        """
        for name, value in counters.items():
            setattr(self, name, int(value))
        for p, r in enumerate(rewards):
            self.history.setdefault(pipeline_key(actions, p), float(r))

    def propose(self, state, key):
        actions, state = self.searcher.ask(state, key)
        actions = {a: np.asarray(v) for a, v in actions.items()}
        self.asked += len(next(iter(actions.values())))
        if not self.avoid:
            self.asked_repeats += count_repeats(actions, self.history)
            return actions, None, state
        d = avoid_repeats(self.searcher.ask, state, actions, key, self.history, self.max_rounds)
        self.asked_repeats += d.asked_repeats
        return d.actions, d.replaced, state

    def learn(self, state, actions, replaced, rewards):
        rewards = np.asarray(rewards, np.float32)
        self.evaluated += len(rewards)
        self.evaluated_repeats += count_repeats(actions, self.history)
        if replaced is not None and len(next(iter(replaced.values()))):
            known = known_rewards(replaced, self.history, actions, rewards)
            actions = {a: np.concatenate([actions[a], replaced[a]]) for a in actions}
            rewards = np.concatenate([rewards, known])
        for p in range(len(rewards)):
            self.history.setdefault(pipeline_key(actions, p), float(rewards[p]))
        state, _ = self.searcher.tell(state, actions, rewards)
        return state

    def step(self, state, root: jax.Array, iteration: int, evaluate: Callable):
        """One search iteration: ask (repeats replaced) -> evaluate -> tell.

        Args:
          state: the searcher's state.
          root: the search's root key (`iteration_keys`).
          iteration: its index.
          evaluate: (actions {agent: int[P, n]}, key) -> (rewards float[P], out): evaluates the
            batch with the iteration's evaluation key; `out` is passed back.

        Returns:
          (the searcher's state after tell, the evaluated actions, out).
        """
        k_ask, k_eval = iteration_keys(root, iteration)
        actions, replaced, state = self.propose(state, k_ask)
        rewards, out = evaluate(actions, k_eval)
        return self.learn(state, actions, replaced, rewards), actions, out
