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
    cell_arrays,
    cell_arrays_from_tokens,
    cell_runs,
    unused_mask,
)
from ma2ml_jax.models.cell_net import CellArch, CellNet, unused_blocks
from ma2ml_jax.models.cell_transfer import active_mask, embed_variables, extract_variables
from ma2ml_jax.models.layers import depthwise
from ma2ml_jax.models.masking import SuperConv
from ma2ml_jax.spaces import cell_space

# Tiny network: cell 2 is a reduction cell, so cell 3 preprocesses h_{k-2} with a factorized
# reduction and both cell types run, and cells 4-5 are one scanned run (their parameters stacked).
# Compile time, which grows with the number of op slots, not their size, dominates this file:
# hence two blocks per cell and XLA's cheapest backend optimisation (the tiny network's run time
# does not matter).
NET = dict(num_classes=5, cells=5, reduction_cells=(2,), channels=4, num_blocks=2)
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


# Every superkernel member that is not the family's largest, with stride 1 and 2: a 1x1 conv with
# stride 2 (on an even size: the shifted tap), 5x5 and 7x7 separable convolutions, a 1x3/3x1 pair,
# 7x7 max and 3x3 average pooling, beside a dilated convolution.
SUPERKERNELS = {
    "normal": _blocks(
        ((0, 1), ("conv_1x1", "sep_conv_7x7"), "add"),
        ((2, 0), ("max_pool_7x7", "dil_conv_3x3"), "concat"),
    ),
    "reduction": _blocks(
        ((0, 1), ("conv_1x1", "sep_conv_5x5"), "add"),
        ((0, 2), ("conv_1x3_3x1", "avg_pool_3x3"), "concat"),
    ),
}


def _sampled(seed):
    space = cell_space(NET["num_blocks"])
    return space.decode(np.asarray(space.sample(jax.random.key(seed), 1))[0])


ARCHS = {"hand_picked": HAND_PICKED, "superkernels": SUPERKERNELS, "seed0": _sampled(0),
         "seed1": _sampled(1), "seed2": _sampled(2)}


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

    # Train mode: batch statistics and their updates. A superkernel sums its zeroed taps too, in
    # another order than the exact kernel; normalizing by the statistics of 4 examples amplifies
    # that reassociation (up to ~1.2e-5 of the largest logit seen), hence the looser tolerance.
    (loss, (logits, stats)), _ = train_step(variables, arrays)
    e_loss, (e_logits, e_stats) = exact_train_step(exact_variables)
    _assert_close(logits, e_logits, 3e-5 * _scale(e_logits))
    _assert_close(loss, e_loss, 3e-5 * (abs(float(e_loss)) + _scale(e_logits)))
    # Active statistics move as in the exact network; those of unchosen variants stay put.
    _assert_trees_close(stats, embed_variables({"batch_stats": e_stats}, arch,
                                               {"batch_stats": variables["batch_stats"]},
                                               net)["batch_stats"], rtol=1e-5)


@pytest.mark.parametrize("name", ["hand_picked", "superkernels"])
def test_gradient_equals_exact_and_masked_out_weights_get_zero(setup, name):
    net, x, variables, _, train_step = setup
    arch = ARCHS[name]
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
    if name == "superkernels":
        _spot_check_superkernels(grads)
        return
    # Spot checks by name. Reduction cell: block 1 reads block 0 with a stride-1 identity (no
    # weights) and h_{k-1} with a stride-2 1x7/7x1 conv; block 0 concatenates, block 1 adds.
    g = jax.tree.map(np.asarray, grads["cell2"])
    assert np.all(g["block1_op1"]["factorized_s2"]["Conv_0"]["kernel"] != 0)  # all 7 taps
    assert np.all(g["block1_op1"]["factorized_s1"]["Conv_0"]["kernel"] == 0)
    assert np.all(g["block1_op0"]["conv_s1"]["ReLUConvBN_0"]["Conv_0"]["kernel"] == 0)
    assert np.any(g["block0_combine"]["concat"]["Conv_0"]["kernel"] != 0)
    assert np.all(g["block1_combine"]["concat"]["Conv_0"]["kernel"] == 0)
    # Cell 3 reads the reduction cell's output, whose block 0 is read by block 1: its slice is
    # zero and so is the gradient of the kernel rows that would read it.
    c = NET["channels"] * 2
    rows = np.abs(np.asarray(grads["cell3"]["preprocess1"]["Conv_0"]["kernel"])).sum((0, 1, 3))
    assert np.all(rows[:c] == 0) and np.all(rows[c:] != 0)
    # Cells 4 and 5 are one scanned run: every leaf has a leading axis of 2, one row per cell.
    stacked = grads["cells4_5"]["block0_op0"]["sep_conv_s1"]["SepConv_0"]["depthwise0"]["kernel"]
    assert stacked.shape == (2, 7, 7, 1, 2 * NET["channels"])
    assert np.all(np.asarray(stacked)[:, 2:5, 2:5] != 0)  # sep_conv_3x3: the centred taps


def _spot_check_superkernels(grads):
    """Only the active taps of each superkernel learn."""
    def taps(kernel):  # which spatial taps get a gradient, summed over channels (and cells)
        g = np.abs(np.asarray(kernel))
        return g.reshape(-1, *g.shape[-4:]).sum((0, 3, 4)) != 0

    normal, reduction = grads["cell1"], grads["cell2"]
    # conv_1x1 is the centre tap, with stride 1 and with stride 2 (on 8x8 the convolution moves
    # it to the pixel before the centre; the equality tests check that).
    one = np.zeros((3, 3), bool)
    one[1, 1] = True
    for g in (normal["block0_op0"]["conv_s1"], reduction["block0_op0"]["conv_s2"]):
        np.testing.assert_array_equal(taps(g["ReLUConvBN_0"]["Conv_0"]["kernel"]), one)
    five = np.zeros((7, 7), bool)
    five[1:6, 1:6] = True
    for i in (0, 1):
        np.testing.assert_array_equal(taps(reduction["block0_op1"]["sep_conv_s2"]["SepConv_0"][
            f"depthwise{i}"]["kernel"]), five)
        assert taps(normal["block0_op1"]["sep_conv_s1"]["SepConv_0"][f"depthwise{i}"][
            "kernel"]).all()
    three = (np.arange(7) >= 2) & (np.arange(7) < 5)  # conv_1x3_3x1: the centred 3 of 7 taps
    fact = reduction["block1_op0"]["factorized_s2"]
    np.testing.assert_array_equal(taps(fact["Conv_0"]["kernel"])[0], three)
    np.testing.assert_array_equal(taps(fact["Conv_1"]["kernel"])[:, 0], three)


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


def test_make_network_for_takes_the_block_count_from_the_space():
    import ml_collections

    from ma2ml_jax import models

    space = cell_space(num_blocks=2)
    model = ml_collections.ConfigDict({"cells": 2, "reduction_cells": (2,), "cell_channels": 4})
    net, arrays = models.make_network_for("cell", space, space.decode(
        np.asarray(space.sample(jax.random.key(5), 1))[0]), 10, model, masked=True)
    assert net.num_blocks == 2 and arrays.inputs.shape == (2, 2, 2)
    x = jnp.zeros((1, 8, 8, 3))
    variables = jax.eval_shape(lambda: net.init({"params": jax.random.key(0), "dropout":
                                                 jax.random.key(1)}, x, False, 0.0, 0.0, arrays))
    assert "params" in variables


def test_cell_runs_group_the_cells_of_a_stage():
    # The paper's CIFAR layout: one body for cells 1 and 2 each (they read the stem), then per
    # stage a reduction cell, the normal cell after it (h_{k-2} at twice the size) and one scan.
    runs = cell_runs(17, (6, 12), 16, 5, 3)
    assert [r.name for r in runs] == ["cell1", "cell2", "cells3_5", "cell6", "cell7", "cells8_11",
                                      "cell12", "cell13", "cells14_17"]
    assert [(r.features, r.reduction, r.reduce_prev) for r in runs[3:6]] == [
        (32, True, False), (32, False, True), (32, False, False)]
    assert [r.name for r in cell_runs(17, (6, 12), 16, 5, 3, scan=False)] == [
        f"cell{k}" for k in range(1, 18)]


def _cases(net):
    """Conditionals in the lowered forward program of `net` (one per switch it compiles)."""
    x = jnp.zeros(IMAGE, jnp.float32)
    space = cell_space(net.num_blocks)
    arch = cell_arrays(space.decode(np.asarray(space.sample(jax.random.key(0), 1))[0]))
    shapes = jax.eval_shape(functools.partial(net.init, train=False, arch=arch),
                            jax.random.key(1), x)
    forward = jax.jit(lambda v: net.apply(v, x, False, 0.0, 0.0, arch))
    return forward.lower(shapes).as_text().count("stablehlo.case")


def test_program_does_not_grow_with_cells_per_stage():
    """More normal cells in a stage lengthen a scan; the program (lowered, not compiled) keeps
    its size. Without the scan it grows with every cell."""
    small = dict(NET, num_blocks=1)
    short, long = MaskedCellNet(**small), MaskedCellNet(**{**small, "cells": 7})
    assert _cases(short) == _cases(long) > 0
    assert _cases(MaskedCellNet(**{**small, "cells": 7, "scan_cells": False})) > _cases(long)


def test_superkernel_starts_as_the_exact_kernel_is_initialized():
    """A 7x7 depthwise superkernel used as 3x3: the active taps have lecun_normal's variance for a
    3x3 kernel (fan-in 9), not a 7x7 one (49), and the convolution is the 3x3 one of those taps."""
    conv = SuperConv(4096, (7, 7), (1, 1), depthwise=True)
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 4096))
    params = jax.jit(conv.init)(jax.random.key(0), x, jnp.int32(3))
    w = params["params"]["kernel"]
    np.testing.assert_allclose(float(w[2:5, 2:5].std()), 1 / 3, rtol=0.02)
    y = jax.jit(conv.apply)(params, x, jnp.int32(3))
    _assert_close(y, depthwise(x, w[2:5, 2:5], 1, "conv"), 1e-5 * _scale(y))


@pytest.mark.parametrize("layout", [dict(op_families=False), dict(scan_cells=False)])
def test_other_layouts_embed_and_count_the_same(layout):
    """One branch per operation, or one module per cell: the embedding still round-trips and the
    active entries are still the exact network's parameters (traced only, not compiled)."""
    net = MaskedCellNet(**NET, **layout)
    x = jnp.zeros(IMAGE, jnp.float32)
    arch = ARCHS["superkernels"]
    shapes = jax.eval_shape(functools.partial(net.init, train=False, arch=cell_arrays(arch)),
                            jax.random.key(1), x)
    variables = _random_variables(shapes, seed=3)
    exact = extract_variables(variables, arch, net)
    expected = jax.eval_shape(CellNet(CellArch.from_config(arch), **EXACT).init,
                              jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, exact) == jax.tree.map(lambda s: s.shape, expected)
    mask = active_mask(variables, arch, net)
    kept = jax.tree.map(lambda v, m: jnp.where(m, v, 0.0), variables, mask)
    embedded = embed_variables(exact, arch, jax.tree.map(jnp.zeros_like, variables), net)
    _assert_trees_close(embedded, kept, rtol=0)
    active = sum(int(m.sum()) for m in jax.tree.leaves(mask["params"]))
    assert active == cell_cost(arch, NET["num_classes"], cells=NET["cells"],
                               reduction_cells=NET["reduction_cells"], channels=NET["channels"],
                               image_size=IMAGE[1]).params
