"""The masked max-size macro network equals the exactly-shaped one and is one program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compiles import compilations

from ma2ml_jax.models import MacroArch, MacroNet
from ma2ml_jax.models.macro_masked import MacroBounds, MaskedMacroNet, embed_params, macro_arrays
from ma2ml_jax.spaces import macro_space
from ma2ml_jax.spaces.macro import VARIANTS


def _nets(variant, impl="conv"):
    space = macro_space(variant)
    spec = VARIANTS[variant]
    masked = MaskedMacroNet(MacroBounds.from_spec(spec), 10, spec.resolution[0], impl)
    return space, masked


def _variables(masked, exact, arch, x, seed=0):
    ev = exact.init({"params": jax.random.key(seed), "dropout": jax.random.key(1)}, x, False)
    mv = masked.init({"params": jax.random.key(seed + 1), "dropout": jax.random.key(1)}, x, False,
                     0.0, 0.0, jax.tree.map(jnp.asarray, macro_arrays(arch)))
    # Random batch statistics so that eval mode really uses them.
    ev = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.1 * jax.random.uniform(jax.random.key(hash(str(p)) % 2**31), v.shape)
        if "batch_stats" in str(p[0]) else v, ev)
    return ev, embed_params(ev, mv)


TINY_ARCHS = [  # hand-picked: residual first blocks, expansion 1 and 2, kernel 3 and 5, depths
    {"resolution": 8, "stem": {"width": 8, "stride": 1},
     "stages": [{"kernel": 3, "expansion": 1, "width": 8, "depth": 2, "stride": 1, "se": False},
                {"kernel": 5, "expansion": 2, "width": 16, "depth": 1, "stride": 2, "se": False},
                {"kernel": 3, "expansion": 2, "width": 32, "depth": 2, "stride": 2, "se": True}],
     "head": {"width": 64}},
]


@pytest.mark.parametrize("variant, seed, impl", [
    ("tiny", 0, "conv"), ("tiny", 1, "taps"), ("tiny", 2, "conv"), ("tiny", -1, "taps"),
    pytest.param("cifar", 0, "taps", marks=pytest.mark.slow),  # FBNetV3 depth: minutes on CPU
])
def test_masked_equals_exact(variant, seed, impl):
    space, masked = _nets(variant, impl)
    arch = TINY_ARCHS[0] if seed < 0 else space.decode(space.sample(jax.random.key(seed), 1)[0])
    exact = MacroNet(MacroArch.from_config(arch), 10)
    res = arch["resolution"]
    x = jax.random.normal(jax.random.key(7), (4, res, res, 3 if variant == "cifar" else 1))
    ev, mv = _variables(masked, exact, arch, x)
    a = jax.tree.map(jnp.asarray, macro_arrays(arch))
    want = exact.apply(ev, x, False)
    got = masked.apply(mv, x, False, 0.0, 0.0, a)
    np.testing.assert_allclose(got, want, atol=1e-4 * float(jnp.abs(want).max()) + 1e-5)
    # Train mode: batch statistics, and the updated running statistics of the active channels.
    rngs = {"dropout": jax.random.key(3)}
    want, wu = exact.apply(ev, x, True, 0.0, 0.0, rngs=rngs, mutable=["batch_stats"])
    got, gu = masked.apply(mv, x, True, 0.0, 0.0, a, rngs=rngs, mutable=["batch_stats"])
    np.testing.assert_allclose(got, want, atol=1e-4 * float(jnp.abs(want).max()) + 1e-5)
    w = wu["batch_stats"]["stage0_block0"]["bn_project"]["mean"]
    np.testing.assert_allclose(gu["batch_stats"]["stage0_block0"]["bn_project"]["mean"][
        :w.shape[0]], w, atol=1e-5)


def test_masked_out_weights_get_zero_gradient():
    space, masked = _nets("tiny")
    arch = TINY_ARCHS[0]
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    a = jax.tree.map(jnp.asarray, macro_arrays(arch))
    mv = masked.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x, False, 0.0,
                     0.0, a)

    def loss(params):
        out, _ = masked.apply({**mv, "params": params}, x, True, 0.0, 0.0, a,
                              rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats"])
        return (out ** 2).sum()

    g = jax.grad(loss)(mv["params"])
    # Stage 0 has max depth 2 and this arch depth 2; stage 1 (depth 1) has an unused second block.
    assert float(jnp.abs(g["stage1_block1"]["project"]["kernel"]).max()) == 0.0
    assert float(jnp.abs(g["stage1_block0"]["project"]["kernel"]).max()) > 0.0
    # Stage 0 has expansion 1: its expand convolution is unused.
    assert float(jnp.abs(g["stage0_block0"]["expand"]["kernel"]).max()) == 0.0
    # Kernel 3 inside a 5x5 depthwise kernel: the outer ring gets no gradient.
    dw = g["stage2_block0"]["depthwise"]["kernel"]
    assert float(jnp.abs(dw[0]).max()) == 0.0 and float(jnp.abs(dw[2, 2]).max()) > 0.0
    # Width 16 of max 32 in stage 1: output channels 16.. of its projection get no gradient.
    proj = g["stage1_block0"]["project"]["kernel"]
    assert float(jnp.abs(proj[..., 16:]).max()) == 0.0 and float(jnp.abs(proj[..., :16]).max()) > 0


def test_one_program_for_every_architecture():
    space, masked = _nets("tiny")
    x = jnp.ones((2, 8, 8, 1))
    archs = [space.decode(space.sample(jax.random.key(s), 1)[0]) for s in range(3)]
    a0 = jax.tree.map(jnp.asarray, macro_arrays(archs[0]))
    v = masked.init(jax.random.key(0), x, False, 0.0, 0.0, a0)

    def apply(v, x, a):
        return masked.apply(v, x, False, 0.0, 0.0, a)

    f = jax.jit(apply)
    arrays = [jax.tree.map(jnp.asarray, macro_arrays(a)) for a in archs]
    with compilations() as programs:
        outs = [f(v, x, a) for a in arrays]
    assert programs.count("jit(apply)") == 1
    assert not np.allclose(outs[0], outs[1])


@pytest.mark.parametrize("stride, size, k", [(1, 8, 3), (2, 8, 5), (2, 7, 3), (1, 5, 5)])
def test_depthwise_taps_equals_grouped_conv(stride, size, k):
    from ma2ml_jax.models.layers import depthwise_taps
    x = jax.random.normal(jax.random.key(0), (2, size, size, 6))
    w = jax.random.normal(jax.random.key(1), (k, k, 1, 6))
    want = jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", feature_group_count=6,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(depthwise_taps(x, w, stride), want, atol=1e-5)


def test_exact_network_gives_the_same_logits_with_either_depthwise_kernel():
    space = macro_space("tiny")
    arch = MacroArch.from_config(space.decode(space.sample(jax.random.key(3), 1)[0]))
    x = jax.random.normal(jax.random.key(4), (2, arch.resolution, arch.resolution, 3))
    conv, taps = MacroNet(arch, 10, "conv"), MacroNet(arch, 10, "taps")
    v = conv.init(jax.random.key(5), x, False)  # one parameter tree serves both
    np.testing.assert_allclose(taps.apply(v, x, False), conv.apply(v, x, False), atol=1e-4)
