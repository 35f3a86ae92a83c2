"""FBNetV3-style inverted-residual macro space: the NAS agent's action on ImageNet (MA2ML Sec. 4.1).

MA2ML uses FBNetV3's architecture space (Dai et al., "FBNetV3: Joint Architecture-Recipe Search
using Predictor Pretraining", CVPR 2021, arXiv 2006.02049, Table 1): input resolution, and per stage
kernel size, expansion, channels and depth of MobileNetV2 inverted-residual (MBConv) blocks with
hard-swish, squeeze-excitation in fixed stages, and the MBPool head of 1984 channels.

Sources and what was taken from each:

* FBNetV3 Table 1 ranges, as used here (tuples are (low, high, step), high included; stride and SE
  are fixed per stage): resolution (224, 272, 8); stem conv k3, c (16, 24, 2), s2; MBConv e1 k3
  c (16, 24, 2) n (1, 4) s1; then five stages with k {3, 5}, e (4, 7) and
  c (20, 32, 4) n (4, 7) s2 | c (24, 48, 8) n (4, 7) s2 SE | c (56, 84, 4) n (4, 8) s2 |
  c (96, 144, 8) n (6, 10) s1 SE | c (180, 224, 8) n (5, 9) s2 SE; a last MBConv k {3, 5} e6
  c (180, 224, 8) n1 s1 SE; MBPool 1984. The paper itself could not be opened from this
  workplace: these values are recalled and cross-checked against (a) a public reimplementation's
  search-space dict, which has the same first rows (c (16, 24, 2), e (4, 7), c (20, 32, 4)), and
  (b) the released FBNetV3-A..E definitions (facebookresearch/mobile-vision,
  ``arch/fbnet_v2/fbnet_modeldef_cls_fbnetv3.py``), whose resolutions, per-stage block counts
  (A: 4, 5, 5, 6, 6), strides and SE placement all fall in these ranges (their widths mostly do:
  C's 88 and D/E's 240 lie above).
* The released models split every stage into its first block (depth 1, the stride or width change,
  expansion 4-6) and the remaining blocks with their own kernel and a smaller expansion (2-5):
  FBNetV3-A's 24-channel stage is k5 e4 x1 then k5 e2 x3. A stage-uniform reading of Table 1 cannot
  hold FBNetV3-A, so the "imagenet" variant follows the released structure: each Table-1 stage is
  two decoded stages, the first block (k {3, 5}, e (4, 7), depth 1, the stage's stride) and the rest
  (k {3, 5}, e (2, 5), depth = Table-1 n minus 1, stride 1) sharing one width decision (the second
  stage's width is tied to the first's and not a decision of its own).
* The last two rows use c (180, 224, 4), a superset of Table 1's step 8, because the released
  models round widths to multiples of 8 (mobile-vision ``width_divisor=8``): FBNetV3-A's 184 is
  180 rounded.

Sizes (log10 of the number of architectures): imagenet 20.6, cifar 19.7, tiny 4.3. The paper
counts 10^17 for its ImageNet NAS space. The stage-uniform reading of Table 1 above gives 10^15.5;
the width step 4 of the last two rows adds 0.6 and the first/rest split 5 x log10(2 x 4) = 4.5 (a
second kernel and expansion per stage), so 10^20.6. Neither reproduces 10^17, whose counting
convention the paper does not state.

Decoded config (the network builder's input, `ma2ml_jax.models.macro_net`):
``{"resolution": int, "stem": {"width": int, "stride": int},
"stages": [{"kernel": int, "expansion": int, "width": int, "depth": int, "stride": int,
"se": bool}, ...], "head": {"width": int}}``; fixed items are single-choice decisions, so the
config is self-contained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ma2ml_jax.spaces.base import Decision, Space

STAGE_KEYS = ("kernel", "expansion", "width", "depth", "stride", "se")


class StageSpec(NamedTuple):
    """The choices of one decoded stage (a run of `depth` identical MBConv blocks).

    Attributes:
      kernel: depthwise kernel sizes.
      expansion: expansion ratios.
      width: output channels; None ties the width to the previous stage's (no decision).
      depth: numbers of blocks.
      stride: stride of the first block (fixed).
      se: squeeze-excitation (fixed).
    """

    kernel: tuple[int, ...]
    expansion: tuple[int, ...]
    width: tuple[int, ...] | None
    depth: tuple[int, ...]
    stride: int
    se: bool


class MacroSpec(NamedTuple):
    """All choices of one macro variant."""

    resolution: tuple[int, ...]
    stem_width: tuple[int, ...]
    stem_stride: int
    stages: tuple[StageSpec, ...]
    head_width: tuple[int, ...]


def _grid(low: int, high: int, step: int = 1) -> tuple[int, ...]:
    """FBNetV3's (low, high, step) tuple: high included."""
    return tuple(range(low, high + 1, step))


def _fbnetv3_stages(strides: Sequence[int]) -> tuple[StageSpec, ...]:
    """The FBNetV3 stages, each Table-1 MBConv stage split into its first block and the rest.

    Args:
      strides: the first-block strides of the five searched stages (ImageNet: 2, 2, 2, 1, 2).
    """
    k = (3, 5)
    first_e, rest_e = _grid(4, 7), _grid(2, 5)
    # (Table-1 widths, Table-1 total depth n, SE) of the five searched stages.
    table = ((_grid(20, 32, 4), _grid(4, 7), False),
             (_grid(24, 48, 8), _grid(4, 7), True),
             (_grid(56, 84, 4), _grid(4, 8), False),
             (_grid(96, 144, 8), _grid(6, 10), True),
             (_grid(180, 224, 4), _grid(5, 9), True))
    stages = [StageSpec((3,), (1,), _grid(16, 24, 2), _grid(1, 4), 1, False)]
    for (width, depth, se), stride in zip(table, strides, strict=True):
        stages.append(StageSpec(k, first_e, width, (1,), stride, se))
        stages.append(StageSpec(k, rest_e, None, tuple(n - 1 for n in depth), 1, se))
    stages.append(StageSpec(k, (6,), _grid(180, 224, 4), (1,), 1, True))
    return tuple(stages)


VARIANTS: dict[str, MacroSpec] = {
    # FBNetV3's ImageNet space (see the module docstring).
    "imagenet": MacroSpec(resolution=_grid(224, 272, 8), stem_width=_grid(16, 24, 2),
                          stem_stride=2, stages=_fbnetv3_stages((2, 2, 2, 1, 2)),
                          head_width=(1984,)),
    # The same stages for 32x32 inputs: the stem and the first searched stage keep the resolution,
    # so three stride-2 stages take 32x32 to 4x4 (as CIFAR versions of MobileNetV2 do).
    "cifar": MacroSpec(resolution=(32,), stem_width=_grid(16, 24, 2), stem_stride=1,
                       stages=_fbnetv3_stages((1, 2, 2, 1, 2)), head_width=(1984,)),
    # CIFAR-sized images on a CPU (configs/imagenet200.py:local): FBNetV3's stage pattern in
    # miniature, a stride-2 stem (32x32 -> 16x16), an expansion-1 stage, two searched stages, the
    # last with squeeze-excitation (16x16 -> 8x8 -> 4x4).
    "cifar_tiny": MacroSpec(resolution=(32,), stem_width=(8, 16), stem_stride=2,
                            stages=(StageSpec((3,), (1,), (8, 16), (1, 2), 1, False),
                                    StageSpec((3, 5), (2, 4), (16, 24), (1, 2), 2, False),
                                    StageSpec((3, 5), (2, 4), (24, 32), (1, 2), 2, True)),
                            head_width=(64, 128)),
    # 8x8 digits on a CPU: stem + three small stages (8x8 -> 4x4 -> 2x2).
    "tiny": MacroSpec(resolution=(8,), stem_width=(8, 16), stem_stride=1,
                      stages=(StageSpec((3, 5), (1, 2), (8, 16), (1, 2), 1, False),
                              StageSpec((3, 5), (1, 2), (16, 24, 32), (1, 2), 2, False),
                              StageSpec((3, 5), (1, 2), (16, 24, 32), (1, 2), 2, True)),
                      head_width=(64,)),
}

# The published FBNetV3-A (mobile-vision `MODEL_ARCH_FBNETV3["FBNetV3_A"]`), a member of the
# "imagenet" variant.
FBNETV3_A = {
    "resolution": 224,
    "stem": {"width": 16, "stride": 2},
    "stages": [
        {"kernel": k, "expansion": e, "width": c, "depth": n, "stride": s, "se": se}
        for k, e, c, n, s, se in (
            (3, 1, 16, 2, 1, False),
            (5, 4, 24, 1, 2, False), (5, 2, 24, 3, 1, False),
            (5, 5, 40, 1, 2, True), (5, 3, 40, 4, 1, True),
            (5, 5, 72, 1, 2, False), (3, 3, 72, 4, 1, False),
            (3, 5, 120, 1, 1, True), (5, 3, 120, 5, 1, True),
            (3, 6, 184, 1, 2, True), (5, 4, 184, 5, 1, True),
            (5, 6, 224, 1, 1, True),
        )
    ],
    "head": {"width": 1984},
}


class MacroSpace(Space):
    """A macro space whose decoded stages may share a width decision (see `StageSpec.width`).

    Attributes:
      tied_widths: {stage index: the stage index whose width it takes}.
    """

    def __init__(self, name: str, decisions: Sequence[Decision], tied_widths: Mapping[int, int]):
        super().__init__(name, decisions)
        self.tied_widths = dict(tied_widths)

    def decode(self, tokens) -> dict[str, Any]:
        """int[n_decisions] -> the architecture config (stage keys in `STAGE_KEYS` order)."""
        config = super().decode(tokens)
        stages = config["stages"]
        for stage, source in self.tied_widths.items():
            stages[stage]["width"] = stages[source]["width"]
        config["stages"] = [{k: s[k] for k in STAGE_KEYS} for s in stages]
        return config

    def encode(self, config: Any) -> np.ndarray:
        """The exact inverse of `decode`; a config that breaks a width tie is not a member."""
        try:
            stages = config["stages"]
            n_stages = len(stages)
        except (KeyError, TypeError):
            raise ValueError("macro config has no list of stages") from None
        expected = 1 + max(int(d.name.split("/")[1]) for d in self.decisions
                           if d.name.startswith("stages/"))
        if n_stages != expected:
            raise ValueError(f"macro config has {n_stages} stages, the space has {expected}")
        for stage, source in self.tied_widths.items():
            if stages[stage].get("width") != stages[source].get("width"):
                raise ValueError(f"stages/{stage}/width must equal stages/{source}/width "
                                 f"(the space ties them), got {stages[stage].get('width')} and "
                                 f"{stages[source].get('width')}")
        return super().encode(config)


def macro_space(variant: str) -> MacroSpace:
    """The FBNetV3-style macro space of one variant.

    Args:
      variant: "imagenet" (FBNetV3's space, 224-272 px), "cifar" (the same stages at 32 px),
        "cifar_tiny" (32 px, stem + 3 small stages, for a CPU) or "tiny" (8x8 digits: stem + 3
        small stages).

    Returns:
      A `MacroSpace` named "macro".
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown macro variant {variant!r}; valid: {sorted(VARIANTS)}")
    spec = VARIANTS[variant]
    # Resolutions, widths, kernel sizes, expansions and depths are numeric levels: ordered.
    decisions = [Decision("resolution", spec.resolution, ordered=True),
                 Decision("stem/width", spec.stem_width, ordered=True),
                 Decision("stem/stride", (spec.stem_stride,))]
    tied = {}
    for i, s in enumerate(spec.stages):
        p = f"stages/{i}/"
        decisions += [Decision(p + "kernel", s.kernel, ordered=True),
                      Decision(p + "expansion", s.expansion, ordered=True)]
        if s.width is None:
            if i == 0:
                raise ValueError("the first stage cannot tie its width")
            tied[i] = tied.get(i - 1, i - 1)
        else:
            decisions.append(Decision(p + "width", s.width, ordered=True))
        decisions += [Decision(p + "depth", s.depth, ordered=True),
                      Decision(p + "stride", (s.stride,)), Decision(p + "se", (s.se,))]
    decisions.append(Decision("head/width", spec.head_width, ordered=True))
    return MacroSpace("macro", decisions, tied)
