"""FLOP and parameter counts against the real networks and XLA's own cost analysis."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ma2ml_jax import cost
from ma2ml_jax.models import MacroArch, MacroNet
from ma2ml_jax.models.cell_net import CellArch, CellNet
from ma2ml_jax.spaces import cell_space, macro_space
from ma2ml_jax.spaces.macro import FBNETV3_A

CELL_NET = dict(cells=4, reduction_cells=(2, 4), channels=8)


def _xla_counts(net, shape):
    """XLA's flops of the whole forward pass, XLA's flops of its convolutions and dots alone
    (each primitive of the traced program compiled on its own, zero padding counted), and the
    parameter count."""
    x = jnp.zeros((1, *shape))
    variables = jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=False))
    fwd = lambda v, x: net.apply(v, x, False)  # noqa: E731
    whole = _flops(jax.jit(fwd).lower(variables, x))
    conv_dot, seen = 0.0, {}
    for eqn in _eqns(jax.make_jaxpr(fwd)(variables, x).jaxpr):
        if eqn.primitive.name not in ("conv_general_dilated", "dot_general"):
            continue
        avals = tuple(v.aval for v in eqn.invars)
        key = (eqn.primitive.name, tuple((a.shape, a.dtype) for a in avals),
               tuple(sorted((k, str(v)) for k, v in eqn.params.items())))
        if key not in seen:
            shapes, params = [a.shape for a in avals], dict(eqn.params)
            if eqn.primitive.name == "conv_general_dilated":
                # XLA's cost analysis skips multiply-adds on zero padding; the NAS convention
                # (kernel x output size) counts them. Pad the input explicitly so XLA counts them.
                spatial = params["dimension_numbers"].lhs_spec[2:]
                lhs = list(shapes[0])
                for d, (lo, hi) in zip(spatial, params["padding"]):
                    lhs[d] += lo + hi
                shapes[0] = tuple(lhs)
                params["padding"] = tuple((0, 0) for _ in spatial)
            f = lambda *a, e=eqn, p=params: e.primitive.bind(*a, **p)  # noqa: E731
            seen[key] = _flops(jax.jit(f).lower(*[jax.ShapeDtypeStruct(sh, a.dtype)
                                                  for sh, a in zip(shapes, avals)]))
        conv_dot += seen[key]
    params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
    return whole, conv_dot, params


def _eqns(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else ():
            yield from _eqns(sub)
        for p in eqn.params.values():
            if hasattr(p, "jaxpr") and hasattr(p.jaxpr, "eqns"):
                yield from _eqns(p.jaxpr)


def _flops(lowered):
    c = lowered.compile().cost_analysis()
    c = c[0] if isinstance(c, (list, tuple)) else c
    return float(c["flops"])


def _check(counted, whole, conv_dot, params):
    assert counted.params == params  # exact
    # XLA counts a multiply-add as two flops.
    assert 2 * counted.flops == pytest.approx(conv_dot, rel=0.05)
    # The whole program skips padding but adds element-wise work (BN, activations, pooling).
    assert 2 * counted.flops == pytest.approx(whole, rel=0.25)


@pytest.mark.parametrize("seed", range(3))
def test_macro_cost_matches_xla(seed):
    space = macro_space("cifar")
    arch = space.decode(space.sample(jax.random.key(seed), 1)[0])
    net = MacroNet(MacroArch.from_config(arch), 10)
    _check(cost.macro_cost(arch, 10), *_xla_counts(net, (32, 32, 3)))


@pytest.mark.parametrize("seed", range(3))
def test_cell_cost_matches_xla(seed):
    space = cell_space()
    arch = space.decode(space.sample(jax.random.key(seed), 1)[0])
    net = CellNet(CellArch.from_config(arch), 10, **CELL_NET)
    _check(cost.cell_cost(arch, 10, **CELL_NET, image_size=16),
           *_xla_counts(net, (16, 16, 3)))


def test_macro_cost_by_hand():
    # 8x8x1 input; stem 3x3 (1->4, stride 1); one block e=2 k=3 (4->8 mid, 8->4 out, stride 1,
    # no SE, residual); head 1x1 (4->16); classifier 16->10.
    arch = {"resolution": 8, "stem": {"width": 4, "stride": 1},
            "stages": [{"kernel": 3, "expansion": 2, "width": 4, "depth": 1, "stride": 1,
                        "se": False}], "head": {"width": 16}}
    hw = 64
    flops = (hw * 9 * 1 * 4  # stem
             + hw * 4 * 8  # expand 1x1
             + hw * 9 * 8  # depthwise 3x3
             + hw * 8 * 4  # project 1x1
             + hw * 4 * 16  # head
             + 16 * 10)  # classifier
    params = (9 * 4 + 2 * 4) + (4 * 8 + 2 * 8) + (9 * 8 + 2 * 8) + (8 * 4 + 2 * 4) + \
        (4 * 16 + 2 * 16) + (16 * 10 + 10)
    assert cost.macro_cost(arch, 10, in_channels=1) == cost.Cost(flops, params)


def test_flops_counted_at_another_class_count_by_hand():
    # ImageNet-200's proxy network counted as ImageNet's (reward.flops_classes = 1000): only the
    # classifier grows, by head_width x (1000 - 200) multiply-adds; parameters stay at 200.
    arch = FBNETV3_A
    trained = cost.count("macro", arch, 200, (224, 224, 3))
    counted = cost.count("macro", arch, 200, (224, 224, 3), flops_classes=1000)
    assert counted.flops - trained.flops == 1984 * (1000 - 200)
    assert counted.params == trained.params
    assert counted.flops == cost.count("macro", arch, 1000, (224, 224, 3)).flops
    assert cost.count("macro", arch, 200, (224, 224, 3), flops_classes=0) == trained
    # A cell network's classifier reads the concatenated unused blocks of its last cell: two
    # here (both blocks read only the cell inputs), 2 x 8 x 2 channels after a reduction at 2.
    block = {"inputs": [0, 1], "ops": ["conv_3x3", "max_pool_3x3"], "combine": "add"}
    cell_arch = {"normal": [block] * 2, "reduction": [block] * 2}
    model = ml_collections.ConfigDict({"cells": 2, "reduction_cells": (2,), "cell_channels": 8})
    trained = cost.count("cell", cell_arch, 10, (16, 16, 3), model)
    counted = cost.count("cell", cell_arch, 10, (16, 16, 3), model, flops_classes=1000)
    assert counted.flops - trained.flops == 32 * (1000 - 10)


def test_cell_op_costs_by_hand():
    # A sep_conv_3x3 with stride 2 on [8, 8, 4]: depthwise 3x3 s2 (4x4 out), pointwise 4->4,
    # then depthwise 3x3 and pointwise at 4x4, each pointwise followed by BN.
    c, h, w = cost._cell_op_cost("sep_conv_3x3", 8, 8, 4, 2)
    assert (h, w) == (4, 4)
    assert c.flops == 2 * (16 * 9 * 4 + 16 * 4 * 4)
    assert c.params == 2 * (9 * 4 + 4 * 4 + 2 * 4)
    assert cost._cell_op_cost("max_pool_5x5", 8, 8, 4, 2) == (cost.ZERO, 4, 4)


def test_cell_net_taps_equals_grouped_conv():
    # The CPU implementation of the separable convolutions: same parameters, same output.
    # Every block uses a separable convolution, so the test does not depend on a random draw.
    block = {"inputs": [0, 1], "ops": ["sep_conv_3x3", "sep_conv_5x5"], "combine": "add"}
    arch = {"normal": [block] * 2, "reduction": [block] * 2}  # two blocks: compile time
    nets = [CellNet(CellArch.from_config(arch), 10, cells=2, reduction_cells=(2,), channels=4,
                    depthwise_impl=impl) for impl in ("conv", "taps")]
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    shapes = [jax.eval_shape(lambda n=n: n.init(jax.random.key(1), x, False)) for n in nets]
    assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])
    v = jax.jit(lambda: nets[0].init(jax.random.key(1), x, False))()
    outs = [jax.jit(lambda v, n=n: n.apply(v, x, False))(v) for n in nets]
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-4)
