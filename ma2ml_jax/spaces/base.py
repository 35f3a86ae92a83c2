"""Search spaces as ordered lists of categorical decisions.

Every module of a pipeline (augmentation, architecture, recipe) is one agent whose action is a
vector of integer tokens, one per decision. A `Space` knows the decisions, their sizes, and the
mapping between tokens and a readable, JSON-serialisable config:

    space.decode(tokens) -> config      # int[n] -> nested dict/list of readable values
    space.encode(config) -> tokens      # exact inverse of decode

Decisions are named by paths such as ``"subpolicies/3/1/op"``. `decode` builds the nested
config from those paths (path parts that are integers become list positions), so a subclass only
declares its decisions; it overrides `decode`/`encode` only when the readable form is not a plain
tree of the chosen values.

A decision is `ordered` when its choices are levels of one quantity in increasing or decreasing
order (learning rates, widths, magnitudes): token i + 1 is the level next to token i. Searchers
may use it (MA2ML's `critic_order` and `ordered_steps`); the tokens mean the same either way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Decision:
    """One categorical decision: a path-like name and its choices (JSON values), in token order.

    Attributes:
      name: the decision's path in the decoded config.
      choices: the values; token i picks choices[i].
      ordered: the choices are levels of one quantity in monotonic order, so choices i and
        i + 1 are neighbours (`numeric_levels` is the rule for plain numbers).
    """

    name: str
    choices: tuple
    ordered: bool = False

    def __post_init__(self):
        if len(self.choices) < 1:
            raise ValueError(f"decision {self.name!r} has no choices")
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError(f"decision {self.name!r} has repeated choices: {self.choices}")
        if not isinstance(self.ordered, bool):
            raise ValueError(f"decision {self.name!r}: ordered must be a bool, got "
                             f"{self.ordered!r}")

    @property
    def size(self) -> int:
        return len(self.choices)

    def index(self, value: Any) -> int:
        """Token of a readable value; raises ValueError naming the valid choices."""
        for i, c in enumerate(self.choices):
            if c == value and type(c) is type(value) or _close(c, value):
                return i
        raise ValueError(f"{self.name}: {value!r} is not one of {list(self.choices)}")


def numeric_levels(choices) -> bool:
    """Whether `choices` are numbers (int or float, not bool) in strictly monotonic order."""
    if len(choices) < 2 or not all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                   for c in choices):
        return False
    steps = np.diff(np.asarray(choices, np.float64))
    return bool(np.all(steps > 0) or np.all(steps < 0))


def _close(a, b) -> bool:
    """Floats from JSON round trips compare by value, not identity of type."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return False


class Space:
    """An ordered list of categorical decisions.

    Attributes:
      name: short name of the space (e.g. ``"augment"``).
      decisions: the ordered decisions; token ``i`` of an action picks ``decisions[i].choices``.
    """

    def __init__(self, name: str, decisions: Sequence[Decision]):
        if not decisions:
            raise ValueError(f"space {name!r} has no decisions")
        names = [d.name for d in decisions]
        if len(set(names)) != len(names):
            raise ValueError(f"space {name!r} has repeated decision names")
        self.name = name
        self.decisions = tuple(decisions)

    # ----------------------------------------------------------------------------- sizes
    @property
    def n_decisions(self) -> int:
        return len(self.decisions)

    @property
    def sizes(self) -> np.ndarray:
        """int32[n_decisions]: the number of choices of each decision."""
        return np.array([d.size for d in self.decisions], dtype=np.int32)

    @property
    def ordered(self) -> np.ndarray:
        """bool[n_decisions]: which decisions are ordered levels (`Decision.ordered`)."""
        return np.array([d.ordered for d in self.decisions], dtype=bool)

    @property
    def max_size(self) -> int:
        return int(self.sizes.max())

    @property
    def log10_size(self) -> float:
        """log10 of the number of candidates: the sum of log10 of every decision's size."""
        return float(np.sum(np.log10(self.sizes.astype(np.float64))))

    # ----------------------------------------------------------------------------- sampling
    def sample(self, key: jax.Array, num: int) -> jax.Array:
        """Uniform samples, int32[num, n_decisions]."""
        return jax.random.randint(key, (num, self.n_decisions), 0, jnp.asarray(self.sizes))

    def validate(self, tokens) -> np.ndarray:
        """Checks an action's shape and range; returns it as int32[..., n_decisions]."""
        tokens = np.asarray(tokens)
        if tokens.shape[-1:] != (self.n_decisions,):
            raise ValueError(f"{self.name}: expected tokens [..., {self.n_decisions}], "
                             f"got shape {tokens.shape}")
        if np.any(tokens < 0) or np.any(tokens >= self.sizes):
            raise ValueError(f"{self.name}: token out of range for decision sizes")
        return tokens.astype(np.int32)

    # ----------------------------------------------------------------------------- decode
    def decode(self, tokens) -> Any:
        """int[n_decisions] -> the readable config (nested dicts and lists of choices)."""
        tokens = self.validate(tokens)
        if tokens.ndim != 1:
            raise ValueError(f"{self.name}: decode takes one action, got shape {tokens.shape}")
        tree: dict = {}
        for d, t in zip(self.decisions, tokens):
            _set_path(tree, d.name.split("/"), d.choices[int(t)])
        return _lists_from_int_keys(tree)

    def encode(self, config: Any) -> np.ndarray:
        """The exact inverse of `decode`: readable config -> int32[n_decisions]."""
        return np.array([d.index(_get_path(config, d.name.split("/"), d.name))
                         for d in self.decisions], dtype=np.int32)

    def format(self, config: Any) -> str:
        """A readable, multi-line rendering of a decoded config."""
        return _format_tree(config)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, n_decisions={self.n_decisions}, "
                f"log10_size={self.log10_size:.1f})")


class PipelineSpace:
    """The joint space of all agents: an ordered mapping agent name -> Space."""

    def __init__(self, spaces: Mapping[str, Space]):
        if not spaces:
            raise ValueError("a pipeline needs at least one agent space")
        self.spaces = dict(spaces)

    @property
    def agents(self) -> tuple[str, ...]:
        return tuple(self.spaces)

    def __getitem__(self, agent: str) -> Space:
        return self.spaces[agent]

    def sample(self, key: jax.Array, num: int) -> dict[str, jax.Array]:
        keys = jax.random.split(key, len(self.spaces))
        return {a: s.sample(k, num) for (a, s), k in zip(self.spaces.items(), keys)}

    def decode(self, actions: Mapping[str, Any], index: int | None = None) -> dict[str, Any]:
        """Decodes one pipeline: actions {agent: int[n]} (or int[P, n] with `index`)."""
        out = {}
        for a, s in self.spaces.items():
            tokens = np.asarray(actions[a])
            out[a] = s.decode(tokens if index is None else tokens[index])
        return out

    def encode(self, pipeline: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {a: s.encode(pipeline[a]) for a, s in self.spaces.items()}

    def format(self, pipeline: Mapping[str, Any]) -> str:
        parts = []
        for a, s in self.spaces.items():
            body = s.format(pipeline[a]).rstrip("\n")
            parts.append(f"[{a}] {s.name}\n" + "\n".join("  " + ln for ln in body.splitlines()))
        return "\n".join(parts)

    @property
    def log10_sizes(self) -> dict[str, float]:
        return {a: s.log10_size for a, s in self.spaces.items()}


# --------------------------------------------------------------------------------- paths
def _set_path(tree: dict, parts: list[str], value: Any) -> None:
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"decision path {'/'.join(parts)} collides with a leaf")
    if parts[-1] in node:
        raise ValueError(f"decision path {'/'.join(parts)} is a prefix of another")
    node[parts[-1]] = value


def _lists_from_int_keys(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    node = {k: _lists_from_int_keys(v) for k, v in node.items()}
    if node and all(k.isdigit() for k in node):
        idx = sorted(int(k) for k in node)
        if idx == list(range(len(idx))):
            return [node[str(i)] for i in idx]
    return node


def _get_path(config: Any, parts: list[str], name: str) -> Any:
    node = config
    for p in parts:
        try:
            node = node[int(p)] if isinstance(node, (list, tuple)) else node[p]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ValueError(f"config has no value for decision {name!r}") from None
    return node


def _format_tree(node: Any, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(node, dict):
        lines = []
        for k, v in node.items():
            if isinstance(v, (dict, list)) and not _is_flat(v):
                lines.append(f"{pad}{k}:")
                lines.append(_format_tree(v, indent + 1))
            else:
                lines.append(f"{pad}{k}: {_inline(v)}")
        return "\n".join(lines)
    if isinstance(node, list):
        return "\n".join(f"{pad}- {_inline(v)}" if _is_flat(v) else
                         f"{pad}-\n{_format_tree(v, indent + 1)}" for v in node)
    return f"{pad}{_inline(node)}"


def _is_flat(v: Any) -> bool:
    if isinstance(v, dict):
        return all(not isinstance(x, (dict, list)) for x in v.values())
    if isinstance(v, list):
        return all(not isinstance(x, (dict, list)) for x in v)
    return True


def _inline(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={_inline(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "[" + ", ".join(_inline(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)
