"""Search spaces: round trips, coverage, the paper's counts, FBNetV3-A, policy and recipe arrays."""

import copy
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma2ml_jax import augment
from ma2ml_jax import spaces as S
from ma2ml_jax.spaces import cell as cell_lib
from ma2ml_jax.spaces import macro as macro_lib
from ma2ml_jax.spaces import recipe as recipe_lib

ALL_SPACES = [
    ("augment", {"num_subpolicies": 25}),
    ("augment", {"num_subpolicies": 5}),
    ("augment", {"num_subpolicies": 3, "sample_pairing": True}),
    ("macro", {"variant": "imagenet"}),
    ("macro", {"variant": "cifar"}),
    ("macro", {"variant": "tiny"}),
    ("cell", {}),
    ("cell", {"num_blocks": 2}),
    ("recipe", {"variant": "imagenet"}),
    ("recipe", {"variant": "cifar"}),
    ("recipe", {"variant": "tiny"}),
]
IDS = [f"{k}-{'-'.join(f'{a}={b}' for a, b in kw.items())}" for k, kw in ALL_SPACES]


@pytest.fixture(scope="module", params=ALL_SPACES, ids=IDS)
def space(request):
    kind, kwargs = request.param
    return S.make_space(kind, **kwargs)


def test_sampling_stays_in_range_and_covers_every_choice(space):
    tokens = np.asarray(space.sample(jax.random.key(0), 600))
    assert tokens.shape == (600, space.n_decisions)
    assert tokens.dtype == np.int32
    space.validate(tokens)  # raises if out of range
    for d, column in zip(space.decisions, tokens.T):
        assert set(np.unique(column).tolist()) == set(range(d.size)), d.name


def test_decode_encode_round_trip_is_exact(space):
    tokens = np.asarray(space.sample(jax.random.key(1), 150))
    for t in tokens:
        config = space.decode(t)
        np.testing.assert_array_equal(space.encode(config), t)
        # Through JSON (what the trial log stores) and back.
        again = json.loads(json.dumps(config))
        assert again == config
        np.testing.assert_array_equal(space.encode(again), t)
        assert space.decode(space.encode(again)) == config


def test_decode_is_readable(space):
    config = space.decode(np.zeros(space.n_decisions, np.int32))
    text = space.format(config)
    assert isinstance(text, str) and text.count("\n") >= 1
    top = next(iter(config))
    assert top in text


def test_repr_names_the_size(space):
    assert f"log10_size={space.log10_size:.1f}" in repr(space)


# ------------------------------------------------------------------------------- paper counts
def test_paper_orders_of_magnitude():
    """The paper's counts (Sec. 4.1 and 4.2 Settings) and the conventions that reproduce them.

    * AUG: 2N operations x (15 ops x 11 probabilities x 10 magnitudes): log10 = 2N log10(1650).
      ImageNet 10^160 is N = 25 (160.9, the paper truncates); CIFAR 10^32 is N = 5 (32.2), one
      AutoAugment controller sample (the final CIFAR policy concatenates five of them: 25).
    * NAS, CIFAR: NASNet normal + reduction cell, per cell prod_b (2+b)^2 13^2 2 over 5 blocks:
      36.7, the paper's 10^37 (rounded).
    * HPO, CIFAR: 20 decisions of 4 values (10 learning-rate and 10 weight-decay phases): 4^20 =
      10^12.04. HPO, ImageNet: FBNetV3-style grids, 3.6e6 = 10^6.56, the paper's 10^7 (rounded).
    * NAS, ImageNet: NOT reproduced. FBNetV3 Table 1 read stage-uniformly gives 10^15.5; the
      "imagenet" macro space splits each stage into first block and rest (so that the released
      FBNetV3-A is a member) and counts 10^20.6; the paper says 10^17.
    """
    aug_imagenet = S.augment_space(25).log10_size
    aug_cifar = S.augment_space(5).log10_size
    assert aug_imagenet == pytest.approx(50 * math.log10(15 * 11 * 10))
    assert aug_cifar == pytest.approx(10 * math.log10(15 * 11 * 10))
    assert math.floor(aug_imagenet) == 160
    assert round(aug_cifar) == 32

    per_cell = sum(2 * math.log10(2 + b) + 2 * math.log10(13) + math.log10(2) for b in range(5))
    nas_cifar = S.cell_space().log10_size
    assert nas_cifar == pytest.approx(2 * per_cell)
    assert round(nas_cifar) == 37

    hpo_cifar = S.recipe_space("cifar").log10_size
    assert hpo_cifar == pytest.approx(20 * math.log10(4))
    assert round(hpo_cifar) == 12
    assert round(S.recipe_space("imagenet").log10_size) == 7

    nas_imagenet = S.macro_space("imagenet").log10_size
    assert nas_imagenet == pytest.approx(20.589, abs=1e-3)  # documented discrepancy with 10^17


# ------------------------------------------------------------------------------- make_space
def test_make_space_names_valid_choices():
    with pytest.raises(ValueError, match="valid: \\['augment', 'cell', 'macro', 'recipe'\\]"):
        S.make_space("resnet")
    with pytest.raises(ValueError, match="valid: \\['cifar', 'cifar_tiny', 'imagenet', 'tiny'\\]"):
        S.make_space("macro", variant="mobilenet")
    with pytest.raises(ValueError, match="valid: \\['cifar', 'imagenet', 'tiny'\\]"):
        S.make_space("recipe", variant="huge")
    with pytest.raises(ValueError, match="valid: \\['variant'\\]"):
        S.make_space("macro", num_blocks=3)
    with pytest.raises(ValueError, match="needs argument\\(s\\) \\['variant'\\]"):
        S.make_space("recipe")
    with pytest.raises(ValueError, match="num_subpolicies"):
        S.make_space("augment", num_subpolicies=0)
    with pytest.raises(ValueError, match="num_blocks"):
        S.make_space("cell", num_blocks=0)


def test_pipeline_space_of_the_default_agents():
    p = S.PipelineSpace({"aug": S.augment_space(5), "nas": S.macro_space("tiny"),
                         "hpo": S.recipe_space("tiny")})
    actions = p.sample(jax.random.key(2), 4)
    pipeline = p.decode(actions, index=3)
    enc = p.encode(pipeline)
    for a in p.agents:
        np.testing.assert_array_equal(enc[a], np.asarray(actions[a][3]))
    assert "[nas] macro" in p.format(pipeline)


# ------------------------------------------------------------------------------- augment
def test_augment_decisions_and_decoded_shape():
    s = S.augment_space(2)
    assert [d.name for d in s.decisions[:3]] == [
        "subpolicies/0/0/op", "subpolicies/0/0/prob", "subpolicies/0/0/magnitude"]
    assert s.decisions[0].choices == augment.OP_NAMES[:15]
    assert S.augment_space(2, sample_pairing=True).decisions[0].choices == augment.OP_NAMES
    assert s.decisions[1].choices == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert s.decisions[2].choices == tuple(range(10))
    tokens = np.zeros(12, np.int32)
    tokens[6:9] = (14, 10, 9)  # sub-policy 1, first operation
    config = s.decode(tokens)
    assert config["subpolicies"][1][0] == {"op": "Cutout", "prob": 1.0, "magnitude": 9}
    assert config["subpolicies"][0][1] == {"op": "ShearX", "prob": 0.0, "magnitude": 0}


def test_to_policy_hand_picked():
    s = S.augment_space(2)
    tokens = np.array([4, 3, 7, 0, 10, 0,  # Rotate p0.3 m7, ShearX p1.0 m0
                       14, 5, 9, 8, 1, 2])  # Cutout p0.5 m9, Solarize p0.1 m2
    policy = S.to_policy(s, jnp.asarray(tokens))
    assert isinstance(policy, augment.Policy)
    np.testing.assert_array_equal(policy.op, [[4, 0], [14, 8]])
    np.testing.assert_allclose(policy.prob, [[0.3, 1.0], [0.5, 0.1]], rtol=1e-6)
    np.testing.assert_array_equal(policy.level, [[7, 0], [9, 2]])
    assert policy.op.dtype == jnp.int32 and policy.level.dtype == jnp.int32
    assert policy.prob.dtype == jnp.float32


def test_to_policy_under_jit_and_batched_matches_decode():
    s = S.augment_space(5)
    tokens = s.sample(jax.random.key(3), 6).reshape(2, 3, s.n_decisions)
    policy = jax.jit(lambda t: S.to_policy(s, t))(tokens)
    assert policy.op.shape == policy.prob.shape == policy.level.shape == (2, 3, 5, 2)
    vmapped = jax.vmap(jax.vmap(lambda t: S.to_policy(s, t)))(tokens)
    for a, b in zip(policy, vmapped):
        np.testing.assert_array_equal(a, b)
    config = s.decode(np.asarray(tokens[1, 2]))
    for i, sub in enumerate(config["subpolicies"]):
        for j, op in enumerate(sub):
            assert augment.OP_NAMES[int(policy.op[1, 2, i, j])] == op["op"]
            assert float(policy.prob[1, 2, i, j]) == pytest.approx(op["prob"])
            assert int(policy.level[1, 2, i, j]) == op["magnitude"]


def test_to_policy_a_new_policy_does_not_retrace():
    s = S.augment_space(5)
    traces = []

    @jax.jit
    def f(tokens):
        traces.append(1)
        return S.to_policy(s, tokens).prob.sum()

    for k in range(3):
        f(s.sample(jax.random.key(10 + k), 1)[0])
    assert len(traces) == 1


def test_to_policy_rejects_other_spaces():
    with pytest.raises(ValueError, match="not an augment space"):
        S.to_policy(S.recipe_space("tiny"), jnp.zeros(8, jnp.int32))
    with pytest.raises(ValueError, match="expected tokens"):
        S.to_policy(S.augment_space(2), jnp.zeros(11, jnp.int32))


# ------------------------------------------------------------------------------- cell
def test_cell_space_structure():
    s = S.cell_space()
    assert s.n_decisions == 2 * 5 * 5
    sizes = {d.name: d.size for d in s.decisions}
    for cell in ("normal", "reduction"):
        for b in range(5):
            assert sizes[f"{cell}/{b}/inputs/0"] == sizes[f"{cell}/{b}/inputs/1"] == 2 + b
            assert sizes[f"{cell}/{b}/ops/0"] == 13
            assert sizes[f"{cell}/{b}/combine"] == 2
    assert len(set(S.CELL_OPS)) == 13
    assert all(op == op.lower() and " " not in op for op in S.CELL_OPS)
    assert S.CIFAR_CELL_LAYOUT == (17, (6, 12))


def _normal_cells_between_reductions(net, image_size=32):
    """Normal cells before, between and after the reduction cells of a built cell network, read
    off the spatial size of each cell's output (a reduction cell halves it)."""
    from ma2ml_jax.models.cell_net import Cell

    x = jnp.zeros((1, image_size, image_size, 3))
    variables = jax.eval_shape(lambda: net.init(
        jax.random.key(0), x, capture_intermediates=lambda m, name: isinstance(m, Cell)
        and name == "__call__"))
    cells = variables["intermediates"]
    sizes = [cells[f"cell{k}"]["__call__"][0].shape[1] for k in range(1, len(cells) + 1)]
    runs, size = [0], image_size
    for s in sizes:
        if s < size:
            runs.append(0)
        else:
            runs[-1] += 1
        size = s
    return runs


@pytest.mark.parametrize("arg, cells, runs", [(None, 17, [5, 5, 5]), ("local", 2, [1, 0])])
def test_cifar_networks_have_as_many_normal_cells_around_each_reduction(arg, cells, runs):
    # The paper's 17 cells are NASNet's 3N + 2 with N = 5 (DARTS' reduction cells at
    # layers // 3 and 2 * layers // 3, 0-based); the tiny variant is a normal cell and a
    # reduction cell.
    from configs import cifar10, cifar100
    from ma2ml_jax import models

    config = cifar10.get_config(arg)
    assert config.model == cifar100.get_config(arg).model
    assert config.model.cells == cells
    if arg is None:
        assert tuple(config.model.reduction_cells) == S.CIFAR_CELL_LAYOUT.reduction_cells
        assert tuple(config.model.reduction_cells) == (cells // 3 + 1, 2 * cells // 3 + 1)
    space = S.cell_space()
    net = models.make_network("cell", space.decode(np.asarray(space.sample(
        jax.random.key(0), 1))[0]), 10, config.model)
    assert _normal_cells_between_reductions(net) == runs


@pytest.mark.parametrize("positions", [(0, 11), (6, 18), (6, 6)])
def test_reduction_cells_outside_the_network_are_rejected_naming_the_convention(positions):
    from configs import cifar10
    from ma2ml_jax import config as config_lib
    from ma2ml_jax.errors import ConfigError

    c = cifar10.get_config()
    c.model.reduction_cells = positions
    with pytest.raises(ConfigError, match=r"model\.reduction_cells=.* must be distinct 1-based "
                       r"cell positions in 1\.\.17 \(the first cell is 1"):
        config_lib.validate(c)
    c.model.reduction_cells = S.CIFAR_CELL_LAYOUT.reduction_cells
    config_lib.validate(c)


def test_cell_decode_hand_picked():
    s = S.cell_space(num_blocks=2)
    tokens = [1, 0, 10, 5, 0,  # normal block 0: sep_conv_3x3(h_k-1) + max_pool_3x3(h_k-2)
              2, 1, 0, 12, 1,  # normal block 1: identity(block 0), sep_conv_7x7(h_k-1), concat
              0, 0, 4, 4, 0,
              1, 1, 1, 2, 1]
    config = s.decode(tokens)
    assert config["normal"] == [
        {"inputs": [1, 0], "ops": ["sep_conv_3x3", "max_pool_3x3"], "combine": "add"},
        {"inputs": [2, 1], "ops": ["identity", "sep_conv_7x7"], "combine": "concat"},
    ]
    assert config["reduction"][1] == {"inputs": [1, 1], "ops": ["conv_1x3_3x1", "conv_1x7_7x1"],
                                      "combine": "concat"}
    bad = copy.deepcopy(config)
    bad["normal"][0]["inputs"][0] = 2  # block 0 cannot read block 0
    with pytest.raises(ValueError, match="not one of"):
        s.encode(bad)


# ------------------------------------------------------------------------------- macro
def test_fbnetv3_a_is_a_member_of_the_imagenet_space():
    s = S.macro_space("imagenet")
    tokens = s.encode(macro_lib.FBNETV3_A)
    assert s.decode(tokens) == macro_lib.FBNETV3_A
    assert sum(st["depth"] for st in macro_lib.FBNETV3_A["stages"]) == 1 + 2 + 4 + 5 + 5 + 6 + 6
    with pytest.raises(ValueError, match="not one of"):
        S.macro_space("cifar").encode(macro_lib.FBNETV3_A)  # resolution 224 is not 32


def test_macro_decoded_keys_and_ties():
    for variant in ("imagenet", "cifar", "cifar_tiny", "tiny"):
        s = S.macro_space(variant)
        for t in np.asarray(s.sample(jax.random.key(4), 20)):
            config = s.decode(t)
            assert list(config) == ["resolution", "stem", "stages", "head"]
            assert list(config["stem"]) == ["width", "stride"]
            assert list(config["head"]) == ["width"]
            for st in config["stages"]:
                assert list(st) == list(macro_lib.STAGE_KEYS)
                assert all(type(st[k]) is int for k in STAGE_KEYS_INT)
                assert type(st["se"]) is bool
            for stage, source in s.tied_widths.items():
                assert config["stages"][stage]["width"] == config["stages"][source]["width"]
    s = S.macro_space("imagenet")
    assert s.tied_widths == {2: 1, 4: 3, 6: 5, 8: 7, 10: 9}
    broken = copy.deepcopy(macro_lib.FBNETV3_A)
    broken["stages"][2]["width"] = 28
    with pytest.raises(ValueError, match="ties them"):
        s.encode(broken)
    extra = copy.deepcopy(macro_lib.FBNETV3_A)
    extra["stages"].append(dict(extra["stages"][-1]))
    with pytest.raises(ValueError, match="13 stages, the space has 12"):
        s.encode(extra)


STAGE_KEYS_INT = ("kernel", "expansion", "width", "depth", "stride")


def test_macro_variants_shapes():
    cifar = S.macro_space("cifar").decode(np.zeros(S.macro_space("cifar").n_decisions, np.int32))
    assert cifar["resolution"] == 32 and cifar["stem"]["stride"] == 1
    reduction = cifar["stem"]["stride"] * math.prod(st["stride"] for st in cifar["stages"])
    assert reduction == 8  # 32x32 -> 4x4
    tiny_space = S.macro_space("tiny")
    for t in np.asarray(tiny_space.sample(jax.random.key(5), 30)):
        tiny = tiny_space.decode(t)
        assert tiny["resolution"] == 8 and 2 <= len(tiny["stages"]) <= 3
        assert all(8 <= st["width"] <= 32 and 1 <= st["depth"] <= 2 for st in tiny["stages"])
        assert all(st["kernel"] in (3, 5) and st["expansion"] in (1, 2) for st in tiny["stages"])


def test_macro_configs_build_the_network_description():
    from ma2ml_jax.models.macro_net import MacroArch

    for variant in ("imagenet", "tiny"):
        s = S.macro_space(variant)
        config = s.decode(np.asarray(s.sample(jax.random.key(6), 1))[0])
        arch = MacroArch.from_config(config)
        assert arch.num_blocks == sum(st["depth"] for st in config["stages"])


# ------------------------------------------------------------------------------- recipe
def test_to_hparams_imagenet_hand_picked():
    s = S.recipe_space("imagenet")
    config = s.decode([1, 7, 4, 4, 4, 2, 1, 3])
    assert config == {"optimizer": "rmsprop", "learning_rate": 0.016, "weight_decay": 1e-5,
                      "mixup": 0.2, "dropout": 0.2, "stochastic_depth": 0.1, "ema": True,
                      "warmup_epochs": 3}
    hp = S.to_hparams(s, config)
    assert hp == {"optimizer": 1, "learning_rate": 0.016, "weight_decay": 1e-5, "mixup": 0.2,
                  "dropout": 0.2, "stochastic_depth": 0.1, "ema": 1, "warmup_epochs": 3,
                  "label_smoothing": 0.0}
    assert type(hp["optimizer"]) is int and type(hp["ema"]) is int
    assert S.to_hparams(s, np.array([1, 7, 4, 4, 4, 2, 1, 3])) == hp  # tokens are decoded
    assert S.to_hparams(s, s.decode([2] + [0] * 7))["optimizer"] == 2  # adamw


def test_to_hparams_tiny_fills_unsearched_keys():
    s = S.recipe_space("tiny")
    hp = S.to_hparams(s, s.decode([1, 2, 1, 1, 0, 1, 0, 1]))
    assert hp == {"optimizer": 2, "learning_rate": 0.01, "weight_decay": 1e-4, "mixup": 0.0,
                  "dropout": 0.1, "stochastic_depth": 0.0, "ema": 0, "warmup_epochs": 1,
                  "label_smoothing": 0.1}
    from ma2ml_jax import proxy

    arrays = proxy.Hyperparams.from_recipe(hp, steps_per_epoch=10)
    assert float(arrays.warmup_steps) == 10.0
    assert float(arrays.label_smoothing) == pytest.approx(0.1)
    assert proxy.OPTIMIZERS[hp["optimizer"]] == "adamw"


def test_to_hparams_cifar_schedules():
    s = S.recipe_space("cifar")
    assert s.decisions[0].choices == ("sgd",)
    lr_tokens = [0, 1, 2, 3, 3, 3, 2, 1, 0, 0]
    wd_tokens = [2] * 10
    config = s.decode([0] + lr_tokens + wd_tokens)
    assert config["learning_rate_schedule"] == [0.025, 0.05, 0.1, 0.2, 0.2, 0.2, 0.1, 0.05, 0.025,
                                                0.025]
    hp = S.to_hparams(s, config)
    assert hp["optimizer"] == 0
    assert hp["learning_rate_schedule"] == tuple(config["learning_rate_schedule"])
    assert hp["weight_decay_schedule"] == (5e-4,) * 10
    assert len(hp["learning_rate_schedule"]) == recipe_lib.SCHEDULE_PHASES
    assert hp["learning_rate"] == 0.2  # the peak: the fallback for trainers without schedules
    assert hp["weight_decay"] == pytest.approx(5e-4)
    assert hp["mixup"] == 0.0 and hp["ema"] == 0


def test_to_hparams_rejects_other_spaces():
    with pytest.raises(ValueError, match="recipe space"):
        S.to_hparams(S.cell_space(), {})


def test_cell_module_constants_are_reexported():
    assert S.CELL_OPS is cell_lib.CELL_OPS


# Which decisions of each named space are ordered levels, by the last part of their names.
ORDERED_NAMES = {
    "augment": ({"prob", "magnitude"}, {"op"}),
    "macro": ({"resolution", "width", "kernel", "expansion", "depth"}, {"stride", "se"}),
    "recipe": ({"learning_rate", "weight_decay", "mixup", "dropout", "stochastic_depth",
                "warmup_epochs", "label_smoothing", "learning_rate_schedule",
                "weight_decay_schedule"}, {"optimizer", "ema"}),
    "cell": (set(), {"0", "1", "combine"}),
}


def _kind_of(space):
    return space.name if space.name in ORDERED_NAMES else "cell"


def _field(decision):
    """A decision's kind within its space: the last name part, or the one before a position."""
    parts = decision.name.split("/")
    return parts[-2] if parts[-1].isdigit() and parts[-2] in (
        "learning_rate_schedule", "weight_decay_schedule") else parts[-1]


def test_named_spaces_mark_their_numeric_levels_ordered(space):
    ordered, unordered = ORDERED_NAMES[_kind_of(space)]
    np.testing.assert_array_equal(space.ordered, [d.ordered for d in space.decisions])
    for d in space.decisions:
        field = _field(d)
        assert field in ordered | unordered, d.name
        assert d.ordered == (field in ordered), d.name
        if d.ordered and d.size > 1:  # what `ordered` promises: monotonic numeric levels
            assert S.numeric_levels(d.choices), d.name


def test_layerwise_pool_and_dense_are_ordered_and_convolutions_are_not():
    pipeline = S.layerwise_pipeline_space("vgg_small")
    kinds = {a: pipeline[a].layer_spec.type for a in pipeline.agents}
    flags = {a: bool(pipeline[a].ordered[0]) for a in pipeline.agents}
    assert flags == {a: kinds[a] in ("pool", "dense") for a in pipeline.agents}
    assert set(kinds.values()) == {"conv", "pool", "dense"}


@pytest.mark.parametrize("choices, expected", [
    ((2, 4, 8), True), ((0.3, 0.1, 0.03), True), ((0, 1.5), True), ((4, 2, 8), False),
    ((1, 1.0), False), (("relu", "gelu"), False), ((False, True), False), ((3,), False),
    ((0, None), False)])
def test_numeric_levels_are_strictly_monotonic_numbers(choices, expected):
    assert S.numeric_levels(choices) is expected


def test_ordered_must_be_a_bool():
    with pytest.raises(ValueError, match="ordered must be a bool"):
        S.Decision("x", (1, 2), ordered=1)
