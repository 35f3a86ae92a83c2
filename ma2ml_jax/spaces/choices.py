"""A user's own decision space: named categorical decisions over JSON values.

The project's other spaces describe image pipelines that proxy networks train; a `choices` space
describes anything else a user's objective scores (a tabular benchmark, the hyper-parameters of a
model of their own). Each decision is a name and its values, in the user's order:

    space = choices_space({"depth": [2, 4, 8], "act": ["relu", "gelu"]})
    space.decode([1, 0]) -> {"depth": 4, "act": "relu"}

Decoding is the base class's: a ``/`` in a name nests (``"opt/lr"`` -> ``{"opt": {"lr": v}}``).
A decision whose values are all numbers (not bools) in strictly increasing or decreasing order is
`ordered` (`spaces.base.numeric_levels`): ``"depth": [2, 4, 8]`` is, ``[4, 2, 8]`` and
``["relu", "gelu"]`` are not. The flag follows from the values, so a space rebuilt from its
values (a suite table, a workdir's config.json) has the same flags.
In a config: ``config.spaces.model = {"kind": "choices", "decisions": {...}}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from ma2ml_jax.spaces.base import Decision, PipelineSpace, Space, numeric_levels

SPACE_NAME = "choices"


def choices_space(decisions: Mapping[str, Any]) -> Space:
    """A space with one decision per entry of `decisions`, in the mapping's order; numeric
    levels in monotonic order are `ordered` decisions (module doc).

    Args:
      decisions: ordered mapping {decision name: list (or tuple) of values}; values are JSON
        scalars (numbers, strings, bools, None), distinct within a decision. A ConfigDict keeps
        the order its keys were set in (not its sorted iteration order).

    Raises:
      ValueError: no decisions, a decision with no values or repeated values, a value that is
        not a JSON scalar, a name that is not a non-empty string.
    """
    if not isinstance(decisions, (Mapping, ml_collections.ConfigDict)):
        raise ValueError(f"decisions must be a mapping {{name: [values]}}, got "
                         f"{type(decisions).__name__}")
    items = _in_user_order(decisions)
    if not items:
        raise ValueError("decisions is empty: give at least one {name: [values]}")
    out = []
    for name, values in items:
        if not isinstance(name, str) or not name:
            raise ValueError(f"decision name {name!r} must be a non-empty string")
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"decision {name!r} needs a list of values, got {values!r}")
        values = tuple(_json_scalar(name, v) for v in values)
        if not values:
            raise ValueError(f"decision {name!r} has no values")
        decision = Decision(name, values, ordered=numeric_levels(values))
        # Two values that encode to one token (1 and 1.0, 0.1 and 0.1 + 1e-12) would not round
        # trip: the rule is `Decision.index`'s own.
        for i, v in enumerate(values):
            if decision.index(v) != i:
                raise ValueError(f"decision {name!r} has repeated choices: {values}")
        out.append(decision)
    return Space(SPACE_NAME, out)


def choices_pipeline_space(space: Mapping[str, Mapping[str, Any]]) -> PipelineSpace:
    """{agent: {decision: [values]}} -> a PipelineSpace of `choices` spaces, agents in order."""
    return PipelineSpace({agent: choices_space(decisions) for agent, decisions in space.items()})


def choices_spaces_config(space: PipelineSpace | Mapping[str, Mapping[str, Any]]) -> dict:
    """The `config.spaces` entries that describe `space`: {agent: {kind: choices, decisions}}.

    A PipelineSpace is described by its decisions' names and values, whatever its spaces' kinds.
    """
    if isinstance(space, PipelineSpace):
        space = {a: {d.name: list(d.choices) for d in s.decisions}
                 for a, s in space.spaces.items()}
    if not isinstance(space, (Mapping, ml_collections.ConfigDict)):
        raise ValueError(f"a space is a PipelineSpace or a dict {{agent: {{decision: [values]}}}}"
                         f", got {type(space).__name__}")
    out = {}
    for agent, decisions in space.items():
        if not isinstance(decisions, (Mapping, ml_collections.ConfigDict)):
            raise ValueError(f"agent {agent!r}: expected {{decision: [values]}}, got "
                             f"{type(decisions).__name__}")
        out[agent] = {"kind": SPACE_NAME, "decisions": {
            name: list(values) if isinstance(values, (list, tuple)) else values
            for name, values in _in_user_order(decisions)}}
    return out


def _in_user_order(decisions: Mapping[str, Any]) -> list[tuple[Any, Any]]:
    """The (name, values) pairs in the order they were given.

    A ConfigDict iterates its keys sorted, but its JSON keeps the order they were set in (and
    config.json, read back into a ConfigDict, sets them in that order again).
    """
    if isinstance(decisions, ml_collections.ConfigDict):
        return [(k, decisions[k]) for k in json.loads(decisions.to_json_best_effort())]
    return list(decisions.items())


def _json_scalar(name: str, value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"decision {name!r}: {value!r} is not a finite number")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"decision {name!r}: {value!r} ({type(value).__name__}) is not a JSON scalar "
                     "(a number, string, bool or None)")
