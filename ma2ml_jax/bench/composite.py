"""Several tabulated problems searched at once: one problem of the paper's kind of size.

A suite table has 5-13 decisions, where critic-screened one-decision moves around the best
pipeline do the work and the agents' policies need not carry anything. A composite keeps every
part's agents (named `<part>/<agent>`, e.g. `nb_macro/stage1`) side by side, so a pipeline is one
pipeline of every part, and its reward is the mean of the parts' normalized rewards:

    reward(A) = mean_i (r_i(A_i) - median_i) / (optimum_i - median_i)

Each part is normalized so that its optimum is 1 and its median pipeline 0: raw accuracies would
let a part whose table spans 0.02 (NAS-Bench-Macro) contribute nothing beside one that spans 0.9
(an HPO surrogate with failing configurations). The median, not the mean over the table, is the
zero because a few broken configurations (the surrogates' 10%-accuracy corner) drag the mean down
and would shrink the part's scale by how many such corners its grid happens to hold. A pipeline
worse than the median scores below 0 (bounded by the part's worst value). The composite's
optimum is therefore exactly 1.0: every part at its own optimum, the parts' optima together.

Reached: each part's own rule (`TableObjective.threshold`: within 0.005 of its optimum and among
its best 0.1%) normalized the same way, averaged over the parts. A best-so-far composite reward
at that value means the parts are, on average, as close to their optima as the rule allows for
each one alone (the normalized gap may be spent unevenly between parts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ma2ml_jax.spaces import PipelineSpace

SEPARATOR = "/"


@dataclasses.dataclass(frozen=True)
class CompositeObjective:
    """Parts searched at once; plugs into `bench.sample_efficiency` like a `TableObjective`.

    Attributes:
      parts: the parts (each with `space`, `values`, `optimum`, `true_reward`, `threshold`).
      part_names: a prefix per part, unique (agents are `<prefix>/<agent>`).
      name: the composite's name.
      noise: Gaussian noise of this sd on the composite reward a searcher is told.
      description: what the composite is built from.
    """

    parts: tuple
    part_names: tuple[str, ...]
    name: str = ""
    noise: float = 0.0
    description: str = ""
    # Derived once (a median of 5.5M values is not free): the joint space; every part's median
    # (its normalized 0) and optimum - median (1 where a part is flat), float64[parts].
    space: PipelineSpace = dataclasses.field(init=False, repr=False, compare=False)
    centers: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)
    scales: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if len(self.parts) != len(self.part_names) or not self.parts:
            raise ValueError("a composite needs one name per part, and at least one part")
        if len(set(self.part_names)) != len(self.part_names):
            raise ValueError(f"repeated part names: {self.part_names}")
        bad = [p for p in self.part_names if SEPARATOR in p]
        if bad:
            raise ValueError(f"part names may not contain {SEPARATOR!r}: {bad}")
        space = PipelineSpace({f"{p}{SEPARATOR}{a}": part.space[a]
                               for p, part in zip(self.part_names, self.parts)
                               for a in part.space.agents})
        centers = np.asarray([np.median(p.values) for p in self.parts], np.float64)
        scales = np.asarray([p.optimum for p in self.parts], np.float64) - centers
        object.__setattr__(self, "space", space)
        object.__setattr__(self, "centers", centers)
        object.__setattr__(self, "scales", np.where(scales > 0, scales, 1.0))

    def normalize(self, i: int, values) -> np.ndarray:
        """Part i's raw values in its normalized units (optimum 1, median 0)."""
        return (np.asarray(values, np.float64) - self.centers[i]) / self.scales[i]

    @property
    def optimum(self) -> float:
        """The mean of the parts' normalized optima: 1.0 (0 for a flat part)."""
        return float(np.mean([self.normalize(i, p.optimum) for i, p in enumerate(self.parts)]))

    @property
    def n_decisions(self) -> int:
        return int(sum(s.n_decisions for s in self.space.spaces.values()))

    @property
    def log10_size(self) -> float:
        return float(sum(np.log10(len(p.values)) for p in self.parts))

    def split(self, actions: Mapping[str, Any]) -> list[dict[str, Any]]:
        """{`<part>/<agent>`: tokens} -> one {agent: tokens} per part."""
        return [{a: actions[f"{p}{SEPARATOR}{a}"] for a in part.space.agents}
                for p, part in zip(self.part_names, self.parts)]

    def part_rewards(self, actions: Mapping[str, Any]) -> np.ndarray:
        """float64[parts, B]: every part's normalized reward of a batch."""
        return np.stack([self.normalize(i, part.true_reward(a))
                         for i, (part, a) in enumerate(zip(self.parts, self.split(actions)))])

    def true_reward(self, actions: Mapping[str, Any]) -> np.ndarray:
        """float32[B]: the mean of the parts' normalized rewards of a batch."""
        return self.part_rewards(actions).mean(0).astype(np.float32)

    def __call__(self, actions: Mapping[str, Any], key) -> np.ndarray:
        r = self.true_reward(actions)
        if self.noise:
            import jax

            r = r + self.noise * np.asarray(jax.random.normal(key, r.shape))
        return r.astype(np.float32)

    def threshold(self) -> float:
        """The mean of the parts' own thresholds, each normalized (see the module docstring)."""
        return float(np.mean([self.normalize(i, p.threshold())
                              for i, p in enumerate(self.parts)]))


def make_composite(parts: Mapping[str, Any] | Sequence[tuple[str, Any]], name: str = "",
                   noise: float = 0.0, description: str = "") -> CompositeObjective:
    """A composite of {part name: objective}, agents in the parts' order."""
    items = list(parts.items()) if isinstance(parts, Mapping) else list(parts)
    return CompositeObjective(tuple(o for _, o in items), tuple(n for n, _ in items), name,
                              noise, description)
