"""Tests of ma2ml_jax.augment: every operation against PIL on real photos, and apply_policy.

The PIL references use the AutoAugment reference code's level -> parameter formulas written out
here independently (tensorflow/models research/autoaugment/augmentation_transforms.py), with the
pixel ranges scaled to the image size as the module documents.

Tolerances, stated per operation family:
  * Invert, Posterize, Solarize, Equalize, Contrast, Color, Brightness, Sharpness, Cutout,
    SamplePairing: bit-exact.
  * AutoContrast: PIL computes its table in double precision and sometimes truncates an exact
    integer one level lower; we compute it exactly. So: at most 1 grey level, and only at pixels
    whose exact stretched value (v - lo) * 255 / (hi - lo) is a whole number, where PIL is lower.
  * ShearX/Y, TranslateX/Y, Rotate (and their compositions): bit-exact at every pixel whose source
    coordinate (computed in float64) is more than 1e-3 from a pixel boundary; at the others, PIL's
    16.16 fixed point and our float32 may round the tie either way. Those pixels must be few.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compiles import compilations
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from sklearn.datasets import load_sample_images

from ma2ml_jax import augment

OPS = augment.OP_NAMES
GEOMETRIC = OPS[:5]
FILL = 128
TIE_BAND = 1e-3


# ---------------------------------------------------------------------------------------------
# Real photos (scikit-learn's china.jpg and flower.jpg), cropped and resized once.
# ---------------------------------------------------------------------------------------------
@functools.cache
def _sample_photos():
    return load_sample_images().images  # two uint8[427, 640, 3]


def _crop(index, box, size, mode="RGB"):
    """uint8[H, W, C] of photo `index` cropped to `box` and resized to `size` = (W, H)."""
    im = Image.fromarray(_sample_photos()[index]).crop(box).resize(size, Image.BILINEAR)
    arr = np.asarray(im.convert(mode))
    return arr[..., None] if arr.ndim == 2 else arr


@functools.cache
def photos():
    return {
        "china_32x32": _crop(0, (100, 50, 400, 350), (32, 32)),
        "flower_24x40": _crop(1, (100, 50, 500, 290), (40, 24)),  # H=24, W=40: non-square
        "flower_grey_20x28": _crop(1, (200, 100, 400, 380), (28, 20), "L"),  # 1 channel
        "china_tiny_6x7": _crop(0, (300, 200, 370, 260), (7, 6)),  # few pixels: Equalize edge
    }


def batch_of_crops(n, h, w, mode="RGB", seed=0):
    """uint8[n, h, w, C]: n random crops of the two photos."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x0, y0 = rng.integers(0, 400), rng.integers(0, 250)
        size = rng.integers(60, 170)
        out.append(_crop(rng.integers(0, 2), (x0, y0, x0 + size, y0 + size * h // w), (w, h), mode))
    return np.stack(out)


def to_pil(x):
    return Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x)


def from_pil(im, shape):
    return np.asarray(im).reshape(shape).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# The reference: PIL with the reference code's parameters.
# ---------------------------------------------------------------------------------------------
def reference_params(name, level, sign, h, w):
    """The reference code's parameter of op `name` at `level` (scaled to an h x w image)."""
    if name in ("ShearX", "ShearY"):
        return sign * level * 0.3 / 10
    if name == "TranslateX":
        return sign * int(level * (150 / 331 * w) / 10)
    if name == "TranslateY":
        return sign * int(level * (150 / 331 * h) / 10)
    if name == "Rotate":
        return sign * int(level * 30 / 10)
    if name == "Solarize":
        return 256 - int(level * 256 / 10)
    if name == "Posterize":
        return 4 - int(level * 4 / 10)
    if name in ("Contrast", "Color", "Brightness", "Sharpness"):
        return level * 1.8 / 10 + 0.1
    if name == "Cutout":
        return int(level * (20 / 32 * min(h, w)) / 10)
    if name == "SamplePairing":
        return level * 0.4 / 10
    return None


def pil_affine_data(name, param, h, w):
    """PIL AFFINE data (a, b, c, d, e, f): output (x, y) samples input (ax+by+c, dx+ey+f)."""
    if name == "ShearX":
        return (1, param, 0, 0, 1, 0)
    if name == "ShearY":
        return (1, 0, 0, param, 1, 0)
    if name == "TranslateX":
        return (1, 0, param, 0, 1, 0)
    if name == "TranslateY":
        return (1, 0, 0, 0, 1, param)
    # Image.rotate(angle): about the centre (w/2, h/2), counter-clockwise (PIL's Image.py).
    angle = -np.deg2rad(param)
    cos, sin = np.cos(angle), np.sin(angle)
    cx, cy = w / 2, h / 2
    return (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)


def pil_reference(name, x, param, center, partner):
    """uint8-valued int64[H, W, C]: PIL applied to x (uint8[H, W, C])."""
    h, w, c = x.shape
    im = to_pil(x)
    fill = FILL if c == 1 else (FILL,) * 3
    if name == "Rotate":
        out = im.rotate(param, resample=Image.NEAREST, fillcolor=fill)
    elif name in GEOMETRIC:
        out = im.transform((w, h), Image.AFFINE, pil_affine_data(name, param, h, w),
                           resample=Image.NEAREST, fillcolor=fill)
    elif name == "AutoContrast":
        out = ImageOps.autocontrast(im)
    elif name == "Invert":
        out = ImageOps.invert(im)
    elif name == "Equalize":
        out = ImageOps.equalize(im)
    elif name == "Solarize":
        out = ImageOps.solarize(im, param)
    elif name == "Posterize":
        out = ImageOps.posterize(im, param)
    elif name in ("Contrast", "Color", "Brightness", "Sharpness"):
        out = getattr(ImageEnhance, name)(im).enhance(param)
    elif name == "Cutout":
        out = im.copy()
        (cy, cx), half = center, param // 2
        y0, y1, x0, x1 = max(0, cy - half), min(h, cy + half), max(0, cx - half), min(w, cx + half)
        if y1 > y0 and x1 > x0:
            ImageDraw.Draw(out).rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif name == "SamplePairing":
        out = Image.blend(im, to_pil(partner), param)
    else:
        raise ValueError(name)
    return from_pil(out, x.shape)


def boundary_ties(data, h, w):
    """bool[H, W]: pixels whose float64 source coordinate is within TIE_BAND of a boundary."""
    a, b, c, d, e, f = data
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    sx, sy = a * xs + b * ys + c, d * xs + e * ys + f
    return (np.abs(sx - np.round(sx)) < TIE_BAND) | (np.abs(sy - np.round(sy)) < TIE_BAND)


def assert_geometric_close(ours, ref, data):
    h, w, _ = ours.shape
    ties = boundary_ties(data, h, w)
    assert ties.mean() < 0.1, "too few pixels away from ties for a meaningful comparison"
    np.testing.assert_array_equal(ours[~ties], ref[~ties])


def assert_autocontrast_close(ours, ref, x, max_fraction=0.02):
    # PIL's double-precision table can truncate an exact integer one level lower.
    lo = x.reshape(-1, x.shape[-1]).min(0).astype(np.int64)
    hi = x.reshape(-1, x.shape[-1]).max(0).astype(np.int64)
    span = np.maximum(hi - lo, 1)
    whole = ((x.astype(np.int64) - lo) * 255) % span == 0
    diff = ours - ref
    assert set(np.unique(diff)) <= {0, 1}
    assert np.all(whole[diff != 0])
    assert (diff != 0).mean() <= max_fraction


# ---------------------------------------------------------------------------------------------
# Every operation against PIL.
# ---------------------------------------------------------------------------------------------
@functools.cache
def jitted_apply_op():
    # op and level are traced: one compilation per image shape serves every case below.
    return jax.jit(augment.apply_op)


def draws_for(x, sign, partner):
    h, w, _ = x.shape
    return augment.OpDraws(sign=jnp.float32(sign),
                           center=jnp.array([h // 3, w - 3], jnp.int32),  # cut by the border
                           partner=jnp.asarray(partner, jnp.float32))


def partner_of(x):
    return np.ascontiguousarray(x[::-1, ::-1])  # a different image of the same shape


@pytest.mark.parametrize("level,sign", [(1, 1.0), (4, 1.0), (4, -1.0), (9, 1.0), (9, -1.0)])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("photo", list(photos()))
def test_op_matches_pil(photo, op, level, sign):
    x = photos()[photo]
    h, w, _ = x.shape
    partner = partner_of(x)
    draws = draws_for(x, sign, partner)
    ours = np.asarray(jitted_apply_op()(jnp.asarray(x, jnp.float32), jnp.int32(OPS.index(op)),
                                        jnp.int32(level), draws)).astype(np.int64)
    param = reference_params(op, level, sign, h, w)
    ref = pil_reference(op, x, param, (h // 3, w - 3), partner)
    if op in GEOMETRIC:
        assert_geometric_close(ours, ref, pil_affine_data(op, param, h, w))
    elif op == "AutoContrast":
        assert_autocontrast_close(ours, ref, x)
    else:
        np.testing.assert_array_equal(ours, ref)


def test_equalize_and_autocontrast_degenerate_images():
    # One grey value: PIL leaves it unchanged; two values: extreme stretching; few pixels: the
    # Equalize table runs past 255 and is clipped.
    cases = [np.full((5, 4, 3), 77, np.uint8),
             np.array([[10, 10, 200], [10, 200, 200]], np.uint8)[..., None],
             photos()["china_tiny_6x7"][:3, :3]]
    both = jax.jit(lambda x: (augment.equalize(x), augment.autocontrast(x)))
    for x in cases:
        equalized, stretched = both(jnp.asarray(x, jnp.float32))
        np.testing.assert_array_equal(np.asarray(equalized),
                                      from_pil(ImageOps.equalize(to_pil(x)), x.shape))
        # The 3x3 crop is one where PIL maps a channel's maximum to 254 (see the module doc).
        assert_autocontrast_close(np.asarray(stretched).astype(np.int64),
                                  from_pil(ImageOps.autocontrast(to_pil(x)), x.shape), x,
                                  max_fraction=0.1)


def test_named_ops_equal_fused_path():
    """The public per-op functions and the traced-index path compute the same thing."""
    x = photos()["flower_24x40"]
    h, w, _ = x.shape
    xf = jnp.asarray(x, jnp.float32)
    partner = partner_of(x)
    draws = draws_for(x, -1.0, partner)
    level = 7

    @jax.jit
    def all_named(xf, draws):
        return named_ops(xf, augment.magnitudes(level, -1.0, h, w), draws)

    named = all_named(xf, draws)
    assert set(named) == set(OPS)
    for i, name in enumerate(OPS):
        fused = jitted_apply_op()(xf, jnp.int32(i), jnp.int32(level), draws)
        np.testing.assert_array_equal(np.asarray(named[name]), np.asarray(fused), err_msg=name)


def named_ops(xf, m, draws):
    return {
        "ShearX": augment.shear_x(xf, m.shear),
        "ShearY": augment.shear_y(xf, m.shear),
        "TranslateX": augment.translate_x(xf, m.translate_x),
        "TranslateY": augment.translate_y(xf, m.translate_y),
        "Rotate": augment.rotate(xf, m.rotate),
        "AutoContrast": augment.autocontrast(xf),
        "Invert": augment.invert(xf),
        "Equalize": augment.equalize(xf),
        "Solarize": augment.solarize(xf, m.solarize_threshold),
        "Posterize": augment.posterize(xf, m.posterize_bits),
        "Contrast": augment.contrast(xf, m.enhance_factor),
        "Color": augment.color(xf, m.enhance_factor),
        "Brightness": augment.brightness(xf, m.enhance_factor),
        "Sharpness": augment.sharpness(xf, m.enhance_factor),
        "Cutout": augment.cutout(xf, draws.center, m.cutout_size),
        "SamplePairing": augment.sample_pairing(xf, draws.partner, m.pairing_weight),
    }


def test_magnitude_levels_follow_the_reference():
    for h, w in [(32, 32), (24, 40)]:
        for level in range(augment.NUM_MAGNITUDE_LEVELS):
            m = augment.magnitudes(level, -1.0, h, w)
            ref = {n: reference_params(n, level, -1.0, h, w) for n in OPS}
            np.testing.assert_allclose(float(m.shear), ref["ShearX"], rtol=1e-6, atol=1e-7)
            assert float(m.translate_x) == ref["TranslateX"]
            assert float(m.translate_y) == ref["TranslateY"]
            assert float(m.rotate) == ref["Rotate"]
            assert int(m.solarize_threshold) == ref["Solarize"]
            assert int(m.posterize_bits) == ref["Posterize"]
            # float32 of the reference's double, exactly: PIL receives that value.
            assert np.float32(m.enhance_factor) == np.float32(ref["Contrast"])
            assert int(m.cutout_size) == ref["Cutout"]
            assert np.float32(m.pairing_weight) == np.float32(ref["SamplePairing"])
    # At CIFAR size: level 9 translates 13 px (150/331 of 32, x 0.9), cuts out 18 px.
    m = augment.magnitudes(9, 1.0, 32, 32)
    assert (float(m.translate_x), int(m.cutout_size)) == (13.0, 18)


# ---------------------------------------------------------------------------------------------
# Two operations: fused warp, order of colour and geometric stages.
# ---------------------------------------------------------------------------------------------
def subpolicy(x, ops, levels, signs):
    h, w, _ = x.shape
    draws = augment.OpDraws(sign=jnp.asarray(signs, jnp.float32),
                            center=jnp.zeros((2, 2), jnp.int32),
                            partner=jnp.zeros((2,) + x.shape, jnp.float32))
    out = jax.jit(augment.apply_subpolicy)(
        jnp.asarray(x, jnp.float32), jnp.asarray([OPS.index(o) for o in ops], jnp.int32),
        jnp.asarray(levels, jnp.int32), draws)
    return np.asarray(out).astype(np.int64)


@pytest.mark.parametrize("first,second", [("Rotate", "ShearX"), ("TranslateY", "Rotate"),
                                          ("ShearY", "TranslateX")])
def test_two_geometric_ops_are_one_warp(first, second):
    x = photos()["flower_24x40"]
    h, w, _ = x.shape
    ours = subpolicy(x, (first, second), (6, 8), (1.0, -1.0))
    m1 = np.vstack([np.reshape(pil_affine_data(first, reference_params(first, 6, 1.0, h, w),
                                               h, w), (2, 3)), [0, 0, 1]])
    m2 = np.vstack([np.reshape(pil_affine_data(second, reference_params(second, 8, -1.0, h, w),
                                               h, w), (2, 3)), [0, 0, 1]])
    data = tuple((m1 @ m2)[:2].reshape(-1))  # output -> input of op 2, then of op 1
    ref = from_pil(to_pil(x).transform((w, h), Image.AFFINE, data, resample=Image.NEAREST,
                                       fillcolor=(FILL,) * 3), x.shape)
    assert_geometric_close(ours, ref, data)


def test_colour_and_geometric_stages_keep_their_order():
    x = photos()["flower_24x40"]  # the shape of the test above: apply_subpolicy compiles once
    h, w, _ = x.shape
    shift = reference_params("TranslateX", 9, 1.0, h, w)
    data = pil_affine_data("TranslateX", shift, h, w)

    def translate(im):
        return im.transform((w, h), Image.AFFINE, data, fillcolor=(FILL,) * 3)

    # Invert then translate: the grey fill stays 128; translate then invert: it becomes 127.
    np.testing.assert_array_equal(subpolicy(x, ("Invert", "TranslateX"), (0, 9), (1.0, 1.0)),
                                  from_pil(translate(ImageOps.invert(to_pil(x))), x.shape))
    np.testing.assert_array_equal(subpolicy(x, ("TranslateX", "Invert"), (9, 0), (1.0, 1.0)),
                                  from_pil(ImageOps.invert(translate(to_pil(x))), x.shape))


# ---------------------------------------------------------------------------------------------
# apply_policy.
# ---------------------------------------------------------------------------------------------
NUM_SUBPOLICIES = 4  # every test policy has this many rows, so the jitted function is reused
BATCH = (64, 24, 40, 3)


@functools.cache
def jitted_apply_policy():
    return jax.jit(augment.apply_policy)


def make_policy(rows):
    """rows: [(op1, prob1, level1, op2, prob2, level2)], cycled to NUM_SUBPOLICIES rows."""
    rows = [rows[i % len(rows)] for i in range(NUM_SUBPOLICIES)]
    return augment.Policy(
        op=jnp.array([[OPS.index(r[0]), OPS.index(r[3])] for r in rows], jnp.int32),
        prob=jnp.array([[r[1], r[4]] for r in rows], jnp.float32),
        level=jnp.array([[r[2], r[5]] for r in rows], jnp.int32))


def random_policy(key):
    k_op, k_prob, k_level = jax.random.split(key, 3)
    shape = (NUM_SUBPOLICIES, 2)
    return augment.Policy(
        op=jax.random.randint(k_op, shape, 0, len(OPS)),
        prob=jax.random.randint(k_prob, shape, 0, 11).astype(jnp.float32) / 10,
        level=jax.random.randint(k_level, shape, 0, 10))


def augment_batch(images, rows, key):
    out = jitted_apply_policy()(jnp.asarray(images), make_policy(rows), key)
    return np.asarray(out)


@pytest.mark.parametrize("shape", [BATCH, (8, 20, 28, 1)])
def test_probability_zero_is_identity_and_output_is_uint8(shape):
    b, h, w, c = shape
    images = batch_of_crops(b, h, w, "RGB" if c == 3 else "L")
    policy = make_policy([("Rotate", 0.0, 9, "Equalize", 0.0, 9),
                          ("Invert", 0.0, 5, "Cutout", 0.0, 9)])
    out = jitted_apply_policy()(jnp.asarray(images), policy, jax.random.key(0))
    assert out.shape == shape and out.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(out), images)


def test_probability_one_applies_both_ops_in_order():
    images = batch_of_crops(*BATCH[:3], seed=1)
    out = augment_batch(images, [("Equalize", 1.0, 3, "Solarize", 1.0, 6)], jax.random.key(1))
    threshold = reference_params("Solarize", 6, 1.0, *BATCH[1:3])
    for x, y in zip(images[:8], out[:8], strict=True):
        ref = ImageOps.solarize(ImageOps.equalize(to_pil(x)), threshold)
        np.testing.assert_array_equal(y, from_pil(ref, x.shape))


def test_each_image_gets_one_whole_subpolicy():
    images = batch_of_crops(*BATCH[:3], seed=3)
    # Distinguishable sub-policies; each second op has probability 0.
    rows = [("Invert", 1.0, 0, "Rotate", 0.0, 9),
            ("Contrast", 1.0, 0, "Rotate", 0.0, 9),
            ("Posterize", 1.0, 9, "Rotate", 0.0, 9),
            ("Brightness", 1.0, 0, "Rotate", 0.0, 9)]
    out = augment_batch(images, rows, jax.random.key(2))
    used = []
    for x, y in zip(images, out, strict=True):
        im = to_pil(x)
        candidates = [ImageOps.invert(im), ImageEnhance.Contrast(im).enhance(0.1),
                      ImageOps.posterize(im, 1), ImageEnhance.Brightness(im).enhance(0.1)]
        matches = [i for i, r in enumerate(candidates) if np.array_equal(from_pil(r, x.shape), y)]
        assert len(matches) == 1
        used.append(matches[0])
    assert set(used) == {0, 1, 2, 3}  # P(a sub-policy unused in 64 draws) ~ 4 (3/4)^64 < 1e-7


def test_probability_half_applies_about_half_the_time():
    images = batch_of_crops(*BATCH[:3], seed=4)
    inverted = []
    for i in range(8):
        out = augment_batch(images, [("Invert", 0.5, 0, "Invert", 0.0, 0)], jax.random.key(i))
        flipped = np.all(out == 255 - images, axis=(1, 2, 3))
        assert np.all(flipped | np.all(out == images, axis=(1, 2, 3)))
        inverted.append(flipped)
    assert 0.4 < np.mean(inverted) < 0.6  # binomial(512, 0.5): 4.5 standard deviations


def test_sample_pairing_blends_with_another_image_of_the_batch():
    images = batch_of_crops(*BATCH[:3], seed=5)
    out = augment_batch(images, [("SamplePairing", 1.0, 9, "Invert", 0.0, 0)], jax.random.key(4))
    weight = np.float32(reference_params("SamplePairing", 9, 1.0, *BATCH[1:3]))
    x = images.astype(np.float32)
    for i in range(8):
        # PIL's blend in float32 (bit-exact with Image.blend, checked op by op above).
        blends = np.floor(x[i] + weight * (x - x[i]))
        same = np.all(blends == out[i], axis=(1, 2, 3))
        assert same.any() and not same[i]


def test_a_new_policy_does_not_recompile():
    jitted = jitted_apply_policy()
    images = jnp.asarray(batch_of_crops(*BATCH[:3], seed=7))
    policies = [random_policy(jax.random.key(i)) for i in range(2)]
    key = jax.random.key(0)
    first = np.asarray(jitted(images, policies[0], key))  # compiles unless an earlier test did
    with compilations() as programs:
        second = np.asarray(jitted(images, policies[1], key))
    assert programs == []
    assert not np.array_equal(first, second)


def test_vmap_over_pipelines_equals_per_pipeline_calls():
    p = 2
    images = jnp.asarray(np.stack([batch_of_crops(*BATCH[:3], seed=6 + i) for i in range(p)]))
    policies = [random_policy(jax.random.key(10 + i)) for i in range(p)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *policies)
    keys = jax.random.split(jax.random.key(7), p)
    together = jax.jit(jax.vmap(augment.apply_policy))(images, stacked, keys)
    for i in range(p):
        single = jitted_apply_policy()(images[i], policies[i], keys[i])
        np.testing.assert_array_equal(np.asarray(together[i]), np.asarray(single))
