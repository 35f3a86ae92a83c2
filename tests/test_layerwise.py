"""The layerwise space (Iranfar Table III), its CNN, costs, clamping and config validation."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma2ml_jax import config as config_lib
from ma2ml_jax import cost, proxy, search
from ma2ml_jax import spaces as S
from ma2ml_jax.errors import ConfigError
from ma2ml_jax.models import layerwise_net as N
from ma2ml_jax.spaces import layerwise as L
from ma2ml_jax.spaces import make_pipeline_space


# ------------------------------------------------------------------------------- the space
def test_vgg16_is_table_iii():
    decisions = L.layerwise_decisions("vgg16")
    assert list(decisions) == [f"layer{i:02d}" for i in range(19)]
    spec = L.get_spec("vgg16")
    types = [layer.type for layer in spec.layers]
    assert types.count("conv") == 13 and types.count("pool") == 5 and types == (
        ["conv"] * 2 + ["pool"] + ["conv"] * 2 + ["pool"] + (["conv"] * 3 + ["pool"]) * 3
        + ["dense"])
    sizes = {t: {decisions[L.agent_name(i)][0] for i, x in enumerate(types) if x == t}
             for t in ("conv", "pool", "dense")}
    assert sizes == {"conv": {20}, "pool": {2}, "dense": {6}}  # 5 x 2 x 2, 2, 6
    conv = spec.layers[0].choices
    assert {c[0] for c in conv} == {16, 32, 64, 128, 256}
    assert {c[1] for c in conv} == {3, 5} and {c[2] for c in conv} == {1, 2}
    assert {c[0] for c in spec.layers[18].choices} == {128, 256, 512, 1024, 2048, 4096}
    assert spec.edges() == tuple((i, i + 1) for i in range(18))


@pytest.mark.parametrize("variant", sorted(L.VARIANTS))
def test_decode_encode_round_trip(variant):
    space = L.layerwise_pipeline_space(variant)
    assert L.is_layerwise(space) and L.spec_of(space).name == variant
    tokens = space.sample(jax.random.key(0), 40)
    for p in range(40):
        pipeline = space.decode(tokens, p)
        again = json.loads(json.dumps(pipeline))  # the trial log's round trip
        assert again == pipeline
        encoded = space.encode(again)
        for a in space.agents:
            np.testing.assert_array_equal(encoded[a], np.asarray(tokens[a][p]))


def test_decoded_layers_are_readable_and_encode_checks_them():
    space = L.layerwise_space("vgg_small", 0)
    # A_conv in (kernels, kernel size, stride) order: token 3 = (16, 5, 2).
    assert space.decode([3]) == {"type": "conv", "kernels": 16, "kernel_size": 5, "stride": 2}
    assert space.encode({"type": "conv", "kernels": 64, "kernel_size": 3, "stride": 1})[0] == 8
    assert L.layerwise_space("vgg_small", 1).decode([1]) == {"type": "pool", "size": 3}
    assert L.layerwise_space("vgg_small", 6).decode([2]) == {"type": "dense", "units": 256}
    with pytest.raises(ValueError, match="is not one of"):
        space.encode({"type": "conv", "kernels": 512, "kernel_size": 3, "stride": 1})
    with pytest.raises(ValueError, match="is a conv"):
        space.encode({"type": "pool", "size": 2})
    with pytest.raises(ValueError, match="needs"):
        space.encode({"type": "conv", "kernels": 16})


def test_make_space_registers_the_kind():
    s = S.make_space("layerwise", variant="vgg16", layer=18)
    assert s.name == "layerwise" and s.sizes.tolist() == [6]
    with pytest.raises(ValueError, match="layer=19 is not a layer"):
        S.make_space("layerwise", variant="vgg16", layer=19)
    with pytest.raises(ValueError, match="unknown layerwise variant 'vgg19'"):
        S.make_space("layerwise", variant="vgg19", layer=0)
    with pytest.raises(ValueError, match="'layerwise' \\(one agent per layer"):
        S.make_space("resnet")


def test_spec_checks_the_layer_graph():
    with pytest.raises(ValueError, match="feed no later layer"):
        L.make_spec("x", [L.conv((4,), (3,), (1,), ()), L.conv((4,), (3,), (1,), (0,)),
                          L.dense((8,), (0,))])
    with pytest.raises(ValueError, match="cannot follow a dense"):
        L.make_spec("x", [L.dense((8,), ()), L.conv((4,), (3,), (1,), (0,))])
    with pytest.raises(ValueError, match="distinct earlier layers"):
        L.make_spec("x", [L.conv((4,), (3,), (1,), ()), L.pool((2,), (1,))])


# ------------------------------------------------------------------------------- the network
TINY = L.make_spec("tiny", [L.conv((4,), (3,), (1,), ()), L.pool((2,), (0,)),
                            L.dense((8,), (1,))])


def _arch(spec, tokens):
    space = L.layerwise_pipeline_space(spec)
    return N.LayerwiseArch.from_pipeline(spec, space.decode(
        {L.agent_name(i): [t] for i, t in enumerate(tokens)}))


def _params(net, shape):
    variables = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, *shape))))
    return proxy.num_params(variables["params"])


def test_tiny_net_output_shape_and_cost_by_hand():
    arch = _arch(TINY, [0, 0, 0])
    net = N.LayerwiseNet(arch, 3)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    variables = net.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
    logits = net.apply(variables, x, False, 0.0, 0.0)
    assert logits.shape == (2, 3) and bool(jnp.isfinite(logits).all())
    # conv 3x3, 1 -> 4 on 8x8 (SAME): 8*8*4*9 = 2304 MACs, 36 weights + 8 BN;
    # pool 2: 4x4x4 = 64 features; dense 64 -> 8: 512 MACs, 520 params; classifier 8 -> 3: 24, 27.
    counted = cost.layerwise_cost(arch, 3, (8, 8, 1))
    assert counted == cost.Cost(2304 + 512 + 24, 44 + 520 + 27)
    assert counted.params == proxy.num_params(variables["params"])
    assert cost.count("layerwise", arch, 3, (8, 8, 1)) == counted


@pytest.mark.parametrize("variant, shape", [("vgg_small", (32, 32, 3)), ("branch_tiny", (8, 8, 1)),
                                            ("vgg16", (32, 32, 3))])
def test_cost_matches_the_network(variant, shape):
    space = L.layerwise_pipeline_space(variant)
    spec = L.get_spec(variant)
    for seed in range(2):
        arch = N.LayerwiseArch.from_pipeline(spec, space.decode(
            space.sample(jax.random.key(seed), 1), 0))
        net = N.LayerwiseNet(arch, 10)
        assert cost.layerwise_cost(arch, 10, shape).params == _params(net, shape)
        assert cost.layerwise_cost(arch, 10, shape).flops == _conv_dot_macs(net, shape)


def _conv_dot_macs(net, shape):
    """Multiply-adds of the convolutions and dense layers read off the traced program."""
    x = jnp.zeros((1, *shape))
    variables = jax.eval_shape(lambda: net.init(jax.random.key(0), x))
    jaxpr = jax.make_jaxpr(lambda v, x: net.apply(v, x, False))(variables, x).jaxpr
    total = 0
    for eqn in jaxpr.eqns:
        out = eqn.outvars[0].aval.shape
        if eqn.primitive.name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape  # HWIO
            total += int(np.prod(out)) * int(np.prod(kernel[:3]))
        elif eqn.primitive.name == "dot_general":
            total += int(np.prod(out)) * eqn.invars[0].aval.shape[-1]
    return total


def test_collapsing_feature_maps_are_clamped_not_crashed():
    spec = L.get_spec("vgg16")
    # Every convolution (256, 5, 2) and every pooling of size 3 on an 8x8 image: the map would
    # reach 0 pixels; the pooling windows are clamped to the map and the output is 1x1.
    tokens = [len(layer.choices) - 1 if layer.type != "dense" else 0 for layer in spec.layers]
    arch = _arch(spec, tokens)
    shapes = N.plan(arch, (8, 8, 1))
    assert all(min(s.out_h, s.out_w) >= 1 for s in shapes[:-1])  # the last is the dense layer
    # 8 -> 4 -> 2 by the strides; the first pooling (3 > 2 pixels, VALID: 0) takes a 2x2 window;
    # from there on every stride and window meets a 1x1 map.
    assert shapes[2].window == (2, 2) and (shapes[2].out_h, shapes[2].out_w) == (1, 1)
    assert N.clamped_layers(arch, (8, 8, 1)) == list(range(2, 18))
    # VGG-16's own strides and poolings (1 and 2) on 32x32: 32 / 2^5 = 1, nothing clamped.
    plain = _arch(spec, [0 if layer.type != "dense" else 5 for layer in spec.layers])
    assert N.clamped_layers(plain, (32, 32, 3)) == [] and N.plan(plain, (32, 32, 3))[17].out_h == 1
    net = N.LayerwiseNet(arch, 10)
    out = jax.eval_shape(lambda: net.apply(net.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1))),
                                           jnp.zeros((2, 8, 8, 1))))
    assert out.shape == (2, 10)
    assert cost.layerwise_cost(arch, 10, (8, 8, 1)).params == _params(net, (8, 8, 1))


def test_branches_are_concatenated():
    spec = L.get_spec("branch_tiny")
    # layer 1: stride 2 (4x4), layer 2: stride 1 (8x8) -> layer 3 takes both at 4x4 with 16 + 8.
    arch = _arch(spec, [0, 1, 0, 0, 0, 0])
    shapes = N.plan(arch, (8, 8, 1))
    assert (shapes[1].out_h, shapes[2].out_h) == (4, 8)
    assert (shapes[3].in_h, shapes[3].in_c) == (4, 8 + 8)
    net = N.LayerwiseNet(arch, 5)
    x = jnp.ones((2, 8, 8, 1))
    logits = jax.jit(lambda x: net.apply(net.init(jax.random.key(0), x), x))(x)
    assert logits.shape == (2, 5) and bool(jnp.isfinite(logits).all())


# ------------------------------------------------------------------------------- the config
def _config(variant="vgg_small"):
    c = config_lib.base_config()
    c.spaces = L.layerwise_spaces_config(variant)
    c.evaluate.epochs = 3
    return c


def test_layerwise_config_is_the_whole_pipeline():
    c = _config()
    config_lib.validate(c)
    space = make_pipeline_space(c.spaces)
    assert space.agents == tuple(f"layer{i:02d}" for i in range(7))
    assert L.layer_agents(space) == list(space.agents)


@pytest.mark.parametrize("change, message", [
    (lambda c: c.spaces.update({"hpo": {"kind": "recipe", "variant": "tiny"}}),
     "cannot be mixed with other kinds: spaces.hpo.kind='recipe'"),
    (lambda c: c.spaces.layer03.update({"layer": 4}), "wrong or missing: layer03"),
    (lambda c: c.spaces.update({"layer07": {"kind": "layerwise", "variant": "vgg_small",
                                            "layer": 7}}), "wrong or missing: layer07"),
    (lambda c: c.spaces.layer00.update({"variant": "vgg16"}), "different variants"),
    (lambda c: [s.update({"variant": "vgg19"}) for s in c.spaces.values()],
     "unknown layerwise variant 'vgg19'"),
])
def test_bad_layerwise_configs(change, message):
    c = _config()
    change(c)
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(c)


def test_other_searchers_run_on_a_layerwise_space(tmp_path):
    c = _config("vgg16")
    c.search.algorithm = "random"
    c.search.iterations = 2
    decisions = L.layerwise_decisions("vgg16")
    result = search.run(c, str(tmp_path), objective=lambda ps: [
        float(np.mean([p[a]["type"] == "conv" and p[a]["stride"] == 1 for a in decisions]))
        for p in ps], progress=False)
    assert len(result.trials) == 16


def test_the_paper_config_loads_and_validates():
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                        "iranfar_vgg_cifar10.py")
    spec = importlib.util.spec_from_file_location("iranfar", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for arg in (None, "local", "vgg16"):
        c = module.get_config(arg)
        config_lib.validate(c)
        assert c.search.algorithm == "qlearning" and c.reward.kind == "iranfar"
    assert len(module.get_config("vgg16").spaces) == 19
    with pytest.raises(ValueError, match="takes no argument"):
        module.get_config("big")
