"""The masked cell network computes the exact CellNet's function, in one compiled program."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compiles import compilations
from flax import traverse_util

from ma2ml_jax.cost import cell_cost
from ma2ml_jax.models.cell_masked import (
    CellArrays,
    MaskedCellNet,
    active_mask,
    cell_arrays,
    cell_arrays_from_tokens,
    embed_variables,
    extract_variables,
    unused_mask,
)
from ma2ml_jax.models.cell_net import CellArch, CellNet, unused_blocks
from ma2ml_jax.spaces import cell_space

# Tiny network: cell 2 is a reduction cell, so cell 3 preprocesses h_{k-2} with a factorized
# reduction and both cell types run. Compile time, which grows with the number of op slots, not
# their size, dominates this file: hence two blocks per cell and XLA's cheapest backend
# optimisation (the tiny network's run time does not matter).
NET = dict(num_classes=5, cells=3, reduction_cells=(2,), channels=4, num_blocks=2)
EXACT = {k: v for k, v in NET.items() if k != "num_blocks"}
IMAGE = (4, 8, 8, 3)
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _blocks(*rows):
    return [{"inputs": list(i), "ops": list(o), "combine": c} for i, o, c in rows]


# Concat combines; identity in a reduction cell on a cell input (factorized reduction, stride 2)
# and on a block (stride 1) beside a stride-2 conv; a block reading a block; a normal cell whose
# output concatenates two blocks.
HAND_PICKED = {
    "normal": _blocks(
        ((0, 1), ("sep_conv_3x3", "identity"), "concat"),
        ((1, 0), ("max_pool_3x3", "conv_1x3_3x1"), "add"),
    ),
    "reduction": _blocks(
        ((0, 1), ("identity", "max_pool_5x5"), "concat"),
        ((2, 1), ("identity", "conv_1x7_7x1"), "add"),
    ),
}


def _sampled(seed):
    space = cell_space(NET["num_blocks"])
    return space.decode(np.asarray(space.sample(jax.random.key(seed), 1))[0])


ARCHS = {"hand_picked": HAND_PICKED, "seed0": _sampled(0), "seed1": _sampled(1),
         "seed2": _sampled(2)}


def _random_variables(shapes, seed=0):
    """Random weights and non-trivial BatchNorm statistics, without compiling a flax init."""
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, s.shape)
        return 0.1 * rng.normal(size=s.shape)  # bias, mean

    return jax.tree_util.tree_map_with_path(
        lambda p, s: jnp.asarray(fill(p, s), jnp.float32), shapes)


def _loss(logits):
    # Fixed random weighting so every logit and example contributes to the gradient.
    w = jax.random.normal(jax.random.key(7), logits.shape)
    return jnp.sum(logits * w)


@pytest.fixture(scope="module")
def setup():
    net = MaskedCellNet(**NET)
    x = jax.random.normal(jax.random.key(0), IMAGE)
    shapes = jax.eval_shape(functools.partial(net.init, train=False, arch=cell_arrays(HAND_PICKED)),
                            jax.random.key(1), x)
    variables = _random_variables(shapes)

    @jit
    def evaluate(variables, arch):
        return net.apply(variables, x, False, 0.0, 0.0, arch)

    @jit
    def train_step(variables, arch):
        def loss_fn(params):
            logits, new = net.apply({**variables, "params": params}, x, True, 0.0, 0.0, arch,
                                    rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats"])
            return _loss(logits), (logits, new["batch_stats"])

        return jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])

    return net, x, variables, evaluate, train_step


def _exact(arch, x, grad=False):
    """The exact network's eval logits and train-mode (loss, logits, new batch stats) [, grads]."""
    exact = CellNet(CellArch.from_config(arch), **EXACT)

    @jit
    def evaluate(variables):
        return exact.apply(variables, x, False)

    def loss_fn(params, variables):
        logits, new = exact.apply({**variables, "params": params}, x, True, 0.0, 0.0,
                                  rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats"])
        return _loss(logits), (logits, new["batch_stats"])

    @jit
    def train_step(variables):
        if grad:
            return jax.value_and_grad(loss_fn, has_aux=True)(variables["params"], variables)
        return loss_fn(variables["params"], variables)

    return exact, evaluate, train_step


def _assert_close(a, b, atol):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol)


def _assert_trees_close(a, b, rtol):
    """Equal up to float reassociation, relative to the largest entry of the reference tree."""
    fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert fa.keys() == fb.keys()
    scale = max(float(np.abs(v).max()) for v in fb.values())
    for k in fa:
        _assert_close(fa[k], fb[k], rtol * scale)


def _scale(x):
    return float(np.abs(x).max())


@pytest.mark.parametrize("name", list(ARCHS))
def test_equals_exact_network(setup, name):
    arch = ARCHS[name]
    net, x, variables, evaluate, train_step = setup
    exact, exact_evaluate, exact_train_step = _exact(arch, x)
    exact_variables = extract_variables(variables, arch, net)
    # The extracted tree is exactly the exact network's variable tree.
    expected = jax.eval_shape(exact.init, jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, exact_variables) == jax.tree.map(lambda s: s.shape, expected)
    arrays = cell_arrays(arch)

    # Eval mode: running BatchNorm statistics.
    e_logits = exact_evaluate(exact_variables)
    _assert_close(evaluate(variables, arrays), e_logits, 1e-5 * _scale(e_logits))

    # Train mode: batch statistics and their updates.
    (loss, (logits, stats)), _ = train_step(variables, arrays)
    e_loss, (e_logits, e_stats) = exact_train_step(exact_variables)
    _assert_close(logits, e_logits, 1e-5 * _scale(e_logits))
    _assert_close(loss, e_loss, 1e-5 * (abs(float(e_loss)) + _scale(e_logits)))
    # Active statistics move as in the exact network; those of unchosen variants stay put.
    _assert_trees_close(stats, embed_variables({"batch_stats": e_stats}, arch,
                                               {"batch_stats": variables["batch_stats"]},
                                               net)["batch_stats"], rtol=1e-5)


def test_gradient_equals_exact_and_masked_out_weights_get_zero(setup):
    net, x, variables, _, train_step = setup
    arch = HAND_PICKED
    _, grads = train_step(variables, cell_arrays(arch))
    _, _, exact_train_step = _exact(arch, x, grad=True)
    _, e_grads = exact_train_step(extract_variables(variables, arch, net))
    zeros = jax.tree.map(jnp.zeros_like, variables["params"])
    embedded = embed_variables({"params": e_grads}, arch, {"params": zeros}, net)["params"]
    _assert_trees_close(grads, embedded, rtol=1e-5)

    mask = active_mask(variables, arch, net)["params"]
    flat_mask = traverse_util.flatten_dict(mask)
    for path, g in traverse_util.flatten_dict(grads).items():
        g, m = np.asarray(g), flat_mask[path]
        assert np.all(g[~m] == 0.0), path  # exactly: unchosen branch or zeroed input rows
        if m.any() and path[-1] == "kernel":
            assert np.any(g[m] != 0.0), path
    # Spot checks by name. Reduction cell: block 1 reads block 0 with a stride-1 identity (no
    # weights) and h_{k-1} with a stride-2 1x7/7x1 conv; block 0 concatenates, block 1 adds.
    g = jax.tree.map(np.asarray, grads["cell2"])
    assert np.any(g["block1_op1"]["conv_1x7_7x1_s2"]["Conv_0"]["kernel"] != 0)
    assert np.all(g["block1_op1"]["conv_1x7_7x1_s1"]["Conv_0"]["kernel"] == 0)
    assert np.all(g["block1_op0"]["conv_3x3_s1"]["ReLUConvBN_0"]["Conv_0"]["kernel"] == 0)
    assert np.any(g["block0_combine"]["concat"]["Conv_0"]["kernel"] != 0)
    assert np.all(g["block1_combine"]["concat"]["Conv_0"]["kernel"] == 0)
    # Cell 3 reads the reduction cell's output, whose block 0 is read by block 1: its slice is
    # zero and so is the gradient of the kernel rows that would read it.
    c = NET["channels"] * 2
    rows = np.abs(np.asarray(grads["cell3"]["preprocess1"]["Conv_0"]["kernel"])).sum((0, 1, 3))
    assert np.all(rows[:c] == 0) and np.all(rows[c:] != 0)


def test_one_compiled_program_for_all_architectures(setup):
    net, _, variables, evaluate, train_step = setup
    first, *others = [cell_arrays(arch) for arch in ARCHS.values()]
    evaluate(variables, first)  # compile, unless an earlier test did
    train_step(variables, first)
    with compilations() as programs:
        for arrays in others:
            evaluate(variables, arrays)
            train_step(variables, arrays)
    assert programs == []


def test_active_parameters_match_cost_model(setup):
    net, _, variables, _, _ = setup
    for arch in ARCHS.values():
        mask = active_mask(variables, arch, net)["params"]
        active = sum(int(m.sum()) for m in jax.tree.leaves(mask))
        assert active == cell_cost(arch, NET["num_classes"], cells=NET["cells"],
                                   reduction_cells=NET["reduction_cells"],
                                   channels=NET["channels"], image_size=IMAGE[1]).params


def test_embed_extract_round_trip(setup):
    net, _, variables, _, _ = setup
    arch = ARCHS["seed1"]
    exact = extract_variables(variables, arch, net)
    zeros = jax.tree.map(jnp.zeros_like, variables)
    embedded = embed_variables(exact, arch, zeros, net)
    mask = active_mask(variables, arch, net)
    kept = jax.tree.map(lambda v, m: jnp.where(m, v, 0.0), variables, mask)
    _assert_trees_close(embedded, kept, rtol=0)
    _assert_trees_close(extract_variables(embedded, arch, net), exact, rtol=0)


def test_arrays_from_tokens_and_config_agree():
    nb = NET["num_blocks"]
    space = cell_space(nb)
    tokens = np.asarray(space.sample(jax.random.key(5), 3))
    batched = jax.jit(cell_arrays_from_tokens)(tokens)
    for n in range(3):
        one = cell_arrays(space.decode(tokens[n]))
        for a, b in zip(jax.tree.map(lambda v, n=n: v[n], batched), one):
            np.testing.assert_array_equal(a, b)
    arrays = cell_arrays(HAND_PICKED)
    assert arrays.inputs.shape == arrays.ops.shape == (2, nb, 2)
    assert arrays.combine.shape == (2, nb) and arrays.inputs.dtype == jnp.int32
    for t, cell in enumerate(("normal", "reduction")):
        expected = np.zeros(nb, bool)
        expected[unused_blocks(CellArch.from_config(HAND_PICKED)[t])] = True
        np.testing.assert_array_equal(unused_mask(arrays.inputs)[t], expected, err_msg=cell)
    with pytest.raises(ValueError, match="reads"):
        cell_arrays({"normal": _blocks(((0, 2), ("identity",) * 2, "add")) * nb,
                     "reduction": HAND_PICKED["reduction"]})


def test_traces_over_stacked_pipelines(setup):
    """Architectures stacked over a pipeline axis go through vmap (traced only, not compiled)."""
    net, x, variables, _, _ = setup
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[cell_arrays(a) for a in ARCHS.values()])
    assert isinstance(stacked, CellArrays)
    assert stacked.ops.shape == (len(ARCHS), 2, NET["num_blocks"], 2)
    out = jax.eval_shape(jax.vmap(lambda a: net.apply(variables, x, False, 0.0, 0.0, a)), stacked)
    assert out.shape == (len(ARCHS), IMAGE[0], NET["num_classes"])


def test_make_network_for_gives_one_masked_network_for_every_cell_architecture():
    import ml_collections

    from ma2ml_jax import models

    space = cell_space(num_blocks=5)
    model = ml_collections.ConfigDict({"cells": 5, "reduction_cells": (2, 4),
                                       "cell_channels": 8})
    built = [models.make_network_for("cell", space, space.decode(t), 10, model, masked=True)
             for t in np.asarray(space.sample(jax.random.key(3), 3))]
    assert len({repr(net) for net, _ in built}) == 1
    net, arrays = built[0]
    assert isinstance(net, MaskedCellNet) and (net.cells, net.channels) == (5, 8)
    assert arrays.inputs.shape == (2, 5, 2) and arrays.combine.shape == (2, 5)
    exact, none = models.make_network_for("cell", space, space.decode(
        np.asarray(space.sample(jax.random.key(4), 1))[0]), 10, model, masked=False)
    assert isinstance(exact, CellNet) and none is None
