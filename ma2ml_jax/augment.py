"""AutoAugment operations in pure JAX, applied on the device inside the jitted training step.

Interface shared with `ma2ml_jax.spaces.augment` (the policy space) and the evaluator:
  * `OP_NAMES`: the operations, in token order.
  * `Policy`: an augmentation policy as arrays, so a new policy never recompiles.
  * `apply_policy(images, policy, key)`: augments a batch, one sub-policy drawn per image.

The operations are those of AutoAugment (Cubuk et al., CVPR 2019) with the semantics of its
reference code, which applies them with PIL: every operation here reproduces PIL bit for bit on
uint8 images (see tests/test_augment.py), with two exceptions:
  * AutoContrast computes its table in exact integers; PIL's double-precision formula sometimes
    truncates a whole number one grey level lower (often mapping a channel's maximum to 254).
  * the geometric operations sample at pixel centres in float32 where PIL uses 16.16 fixed point;
    the two can round differently only where a source coordinate falls on a pixel boundary.

Each operation has a per-image form on float32[H, W, C] images (integer values in [0, 255],
C in {1, 3}) with traced parameters: `shear_x`, ..., `sample_pairing`. `apply_op` and
`apply_subpolicy` take the operation index and magnitude level as traced arrays. They do not
compute every operation and select: the five geometric operations are 3x3 matrices, composed
into one nearest-neighbour warp per image; every other operation is one per-channel lookup table
(AutoContrast, Invert, Equalize, Solarize, Posterize; histograms by scatter-add) followed by one
PIL-style blend with a "degenerate" image (ImageEnhance's Contrast, Color, Brightness, Sharpness;
Cutout; SamplePairing), so a traced op costs one table gather and a few elementwise passes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Token order of the operation decision. The first 15 are the paper's (AutoAugment's) operations;
# SamplePairing is the optional 16th.
OP_NAMES = (
    "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
    "AutoContrast", "Invert", "Equalize", "Solarize", "Posterize",
    "Contrast", "Color", "Brightness", "Sharpness", "Cutout",
    "SamplePairing",
)
NUM_PAPER_OPS = 15
NUM_PROB_LEVELS = 11  # probability 0.0, 0.1, ..., 1.0
NUM_MAGNITUDE_LEVELS = 10  # magnitude level 0..9


class Policy(NamedTuple):
    """An augmentation policy of N sub-policies of 2 operations each.

    Attributes:
      op: int32[N, 2], index into `OP_NAMES`.
      prob: float32[N, 2], probability of applying each operation, in [0, 1].
      level: int32[N, 2], magnitude level in [0, NUM_MAGNITUDE_LEVELS).
    """

    op: jax.Array
    prob: jax.Array
    level: jax.Array


# ----------------------------------------------------------------------------------------------
# Magnitude ranges.
#
# The level -> parameter mapping follows the AutoAugment reference code (Cubuk et al. 2019,
# tensorflow/models research/autoaugment/augmentation_transforms.py): a level l in 0..9 is scaled
# as `l * maxval / PARAMETER_MAX` (float parameters) or `int(l * maxval / PARAMETER_MAX)` (integer
# parameters), with PARAMETER_MAX = 10, so level 9 reaches 9/10 of `maxval`. Shear, translation and
# rotation get a random sign. Magnitudes grow with the level for every operation.
#
# The reference hard-codes 32x32 CIFAR images for its pixel-valued ranges; here they scale with the
# image size so that the same policy means the same thing at any resolution:
#   * translation: up to 150/331 of the width (x) or height (y), the paper's [-150, 150] pixels at
#     ImageNet's 331 (the CIFAR code used 10/32). At 32 px, level 9 moves int(13.05) = 13 pixels.
#   * cutout: a square of side up to 20/32 of min(H, W), the reference's 20 pixels at 32.
# Posterize keeps 4 - int(l * 4 / 10) bits (4 .. 1) as the reference code does; the paper's table
# lists a range of [4, 8] bits, which the code does not implement.
# SamplePairing (Inoue 2018) is not in the reference; its weight range 0 .. 0.4 is Fast
# AutoAugment's (Lim et al. 2019).
# ----------------------------------------------------------------------------------------------
PARAMETER_MAX = 10
MAX_SHEAR = 0.3  # shear factor, as in PIL's affine matrix (1, s, 0, 0, 1, 0)
MAX_ROTATE_DEGREES = 30
TRANSLATE_FRACTION = (150, 331)  # numerator, denominator: exact integer arithmetic
CUTOUT_FRACTION = (20, 32)
MAX_SOLARIZE = 256  # threshold = 256 - int(l * 256 / 10): 256 (identity) .. 26
MAX_POSTERIZE_SHIFT = 4  # bits kept = 4 - int(l * 4 / 10): 4 .. 1
ENHANCE_MIN, ENHANCE_RANGE = 0.1, 1.8  # Contrast/Color/Brightness/Sharpness factor 0.1 .. 1.72
MAX_SAMPLE_PAIRING = 0.4  # blend weight of the partner image (Fast AutoAugment's range)
FILL_VALUE = 128.0  # grey fill of the geometric ops and of Cutout (the TF reference's `replace`)

# Internal op index meaning "leave the image unchanged" (an operation that was not applied).
IDENTITY_OP = len(OP_NAMES)
_OP = {name: i for i, name in enumerate(OP_NAMES)}
_NUM_GEOMETRIC = 5  # ShearX .. Rotate are the first five tokens: they become one affine warp

# Pixel stage of an operation = a per-channel 256-entry lookup table, then a PIL-style blend.
# Which table (0 identity, 1 AutoContrast, 2 Invert, 3 Equalize, 4 Solarize, 5 Posterize) ...
# (NumPy constants: importing this module must not start a JAX backend.)
_LUT_KIND = np.zeros(IDENTITY_OP + 1, np.int32)
_LUT_KIND[[_OP[n] for n in ("AutoContrast", "Invert", "Equalize", "Solarize", "Posterize")]] = (
    np.arange(1, 6))
# ... and which blend (0 none, 1 Brightness, 2 Contrast, 3 Color, 4 Sharpness, 5 Cutout,
# 6 SamplePairing), by op index.
_BLEND_NAMES = ("Brightness", "Contrast", "Color", "Sharpness", "Cutout", "SamplePairing")
_BLEND_KIND = np.zeros(IDENTITY_OP + 1, np.int32)
_BLEND_KIND[[_OP[n] for n in _BLEND_NAMES]] = np.arange(1, 7)


class Magnitudes(NamedTuple):
    """The parameters of every operation at one magnitude level (scalars, may be traced).

    Attributes:
      shear: float32[], signed shear factor of ShearX / ShearY.
      translate_x: float32[], signed horizontal translation in pixels (whole pixels).
      translate_y: float32[], signed vertical translation in pixels (whole pixels).
      rotate: float32[], signed rotation in degrees, counter-clockwise (whole degrees).
      solarize_threshold: int32[], pixels >= threshold are inverted.
      posterize_bits: int32[], bits kept per channel.
      enhance_factor: float32[], PIL ImageEnhance factor of Contrast, Color, Brightness, Sharpness.
      cutout_size: int32[], side of the Cutout square in pixels.
      pairing_weight: float32[], SamplePairing's weight of the partner image.
    """

    shear: jax.Array
    translate_x: jax.Array
    translate_y: jax.Array
    rotate: jax.Array
    solarize_threshold: jax.Array
    posterize_bits: jax.Array
    enhance_factor: jax.Array
    cutout_size: jax.Array
    pairing_weight: jax.Array


class OpDraws(NamedTuple):
    """The random draws of one operation slot (what the reference draws with `random` per call).

    Attributes:
      sign: float32[], +1 or -1, the sign of shear, translation and rotation.
      center: int32[2], Cutout centre (row, column), uniform over the pixels.
      partner: float32[H, W, C], SamplePairing's other image.
    """

    sign: jax.Array
    center: jax.Array
    partner: jax.Array


def _float_parameter(level: jax.Array, maxval: float, offset: float = 0.0) -> jax.Array:
    """float32(level * maxval / PARAMETER_MAX + offset), the Python (double) value rounded once.

    A table rather than float32 arithmetic, so a factor is the float32 nearest the reference's
    double, exactly what PIL receives (float32 arithmetic can be one ulp off, and one ulp moves
    PIL's truncated results).
    """
    table = np.array([lv * maxval / PARAMETER_MAX + offset for lv in range(NUM_MAGNITUDE_LEVELS)],
                     np.float32)
    return jnp.asarray(table)[level]


def magnitudes(level: jax.Array, sign: jax.Array, height: int, width: int) -> Magnitudes:
    """Maps a magnitude level to every operation's parameter (see the module's range notes).

    Args:
      level: int[], magnitude level in [0, NUM_MAGNITUDE_LEVELS) (clipped); may be traced.
      sign: float32[], +1 or -1, applied to shear, translation and rotation.
      height: image height H in pixels.
      width: image width W in pixels.

    Returns:
      `Magnitudes` of scalars.
    """
    level = jnp.clip(jnp.asarray(level, jnp.int32), 0, NUM_MAGNITUDE_LEVELS - 1)
    sign = jnp.asarray(sign, jnp.float32)
    num, den = TRANSLATE_FRACTION
    # Integer parameters use integer arithmetic, so `int(l * maxval / 10)` is exact.
    tx = (level * num * width) // (den * PARAMETER_MAX)
    ty = (level * num * height) // (den * PARAMETER_MAX)
    cnum, cden = CUTOUT_FRACTION
    return Magnitudes(
        shear=sign * _float_parameter(level, MAX_SHEAR),
        translate_x=sign * tx.astype(jnp.float32),
        translate_y=sign * ty.astype(jnp.float32),
        rotate=sign * ((level * MAX_ROTATE_DEGREES) // PARAMETER_MAX).astype(jnp.float32),
        solarize_threshold=MAX_SOLARIZE - (level * MAX_SOLARIZE) // PARAMETER_MAX,
        posterize_bits=MAX_POSTERIZE_SHIFT - (level * MAX_POSTERIZE_SHIFT) // PARAMETER_MAX,
        enhance_factor=_float_parameter(level, ENHANCE_RANGE, ENHANCE_MIN),
        cutout_size=(level * cnum * min(height, width)) // (cden * PARAMETER_MAX),
        pairing_weight=_float_parameter(level, MAX_SAMPLE_PAIRING),
    )


# ----------------------------------------------------------------------------------------------
# Geometric operations: 3x3 matrices in PIL's `Image.transform(AFFINE)` convention, i.e. mapping an
# OUTPUT coordinate to the INPUT coordinate it samples, with pixel centres at (x + 0.5, y + 0.5).
# Sequential warps by M1 then M2 sample the input at M1 @ M2 @ p, so a sub-policy's geometric ops
# compose into one matrix and the image is resampled once.
# ----------------------------------------------------------------------------------------------
def _affine(a, b, c, d, e, f) -> jax.Array:
    z, o = jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32)
    rows = [[a, b, c], [d, e, f], [z, z, o]]
    return jnp.stack([jnp.stack([jnp.asarray(v, jnp.float32) for v in r]) for r in rows])


def shear_x_matrix(shear: jax.Array) -> jax.Array:
    """float32[3, 3] of ShearX: PIL data (1, s, 0, 0, 1, 0), about the top-left corner."""
    return _affine(1.0, shear, 0.0, 0.0, 1.0, 0.0)


def shear_y_matrix(shear: jax.Array) -> jax.Array:
    """float32[3, 3] of ShearY: PIL data (1, 0, 0, s, 1, 0), about the top-left corner."""
    return _affine(1.0, 0.0, 0.0, shear, 1.0, 0.0)


def translate_matrix(tx: jax.Array, ty: jax.Array) -> jax.Array:
    """float32[3, 3] of a translation: PIL data (1, 0, tx, 0, 1, ty) (content moves by -t)."""
    return _affine(1.0, 0.0, tx, 0.0, 1.0, ty)


def rotate_matrix(degrees: jax.Array, height: int, width: int) -> jax.Array:
    """float32[3, 3] of PIL's `Image.rotate(degrees)`: counter-clockwise about the image centre."""
    angle = -jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    cx, cy = width / 2.0, height / 2.0
    return _affine(cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)


def affine_warp(image: jax.Array, matrix: jax.Array, fill: float = FILL_VALUE) -> jax.Array:
    """Resamples an image like PIL's `Image.transform(size, AFFINE, data, NEAREST, fillcolor)`.

    Args:
      image: float32[H, W, C].
      matrix: float32[3, 3] (or [2, 3]) mapping output to input coordinates, pixel centres at +0.5.
      fill: value of output pixels that sample outside the input.

    Returns:
      float32[H, W, C].
    """
    h, w, c = image.shape
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + 0.5,
                          jnp.arange(w, dtype=jnp.float32) + 0.5, indexing="ij")
    sx = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    sy = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    # Clip before the int cast: a far-away coordinate must not overflow, it only has to stay out.
    ix = jnp.floor(jnp.clip(sx, -1.0, w)).astype(jnp.int32)
    iy = jnp.floor(jnp.clip(sy, -1.0, h)).astype(jnp.int32)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    flat = jnp.where(inside, iy * w + ix, 0).reshape(-1)
    sampled = jnp.take(image.reshape(h * w, c), flat, axis=0).reshape(h, w, c)
    return jnp.where(inside[..., None], sampled, jnp.asarray(fill, image.dtype))


def shear_x(image: jax.Array, shear: jax.Array) -> jax.Array:
    """ShearX: float32[H, W, C] -> float32[H, W, C]; `shear` is the signed factor."""
    return affine_warp(image, shear_x_matrix(shear))


def shear_y(image: jax.Array, shear: jax.Array) -> jax.Array:
    """ShearY: float32[H, W, C] -> float32[H, W, C]; `shear` is the signed factor."""
    return affine_warp(image, shear_y_matrix(shear))


def translate_x(image: jax.Array, pixels: jax.Array) -> jax.Array:
    """TranslateX: float32[H, W, C] -> float32[H, W, C]; content moves left by `pixels`."""
    return affine_warp(image, translate_matrix(pixels, 0.0))


def translate_y(image: jax.Array, pixels: jax.Array) -> jax.Array:
    """TranslateY: float32[H, W, C] -> float32[H, W, C]; content moves up by `pixels`."""
    return affine_warp(image, translate_matrix(0.0, pixels))


def rotate(image: jax.Array, degrees: jax.Array) -> jax.Array:
    """Rotate: float32[H, W, C] -> float32[H, W, C], counter-clockwise about the centre."""
    return affine_warp(image, rotate_matrix(degrees, image.shape[0], image.shape[1]))


def _geometric_matrix(op: jax.Array, mags: Magnitudes, height: int, width: int) -> jax.Array:
    """float32[3, 3] of `op` if it is geometric, else the identity."""
    mats = jnp.stack([
        shear_x_matrix(mags.shear),
        shear_y_matrix(mags.shear),
        translate_matrix(mags.translate_x, 0.0),
        translate_matrix(0.0, mags.translate_y),
        rotate_matrix(mags.rotate, height, width),
        jnp.eye(3, dtype=jnp.float32),
    ])
    return mats[jnp.minimum(op, _NUM_GEOMETRIC)]


# ----------------------------------------------------------------------------------------------
# Lookup-table operations (PIL.ImageOps): per-channel tables float32[C, 256], applied by a gather.
# ----------------------------------------------------------------------------------------------
def histogram(image: jax.Array) -> jax.Array:
    """Per-channel histogram by scatter-add: float32[H, W, C] (integer values) -> int32[C, 256]."""
    c = image.shape[-1]
    v = image.astype(jnp.int32).reshape(-1, c) + 256 * jnp.arange(c, dtype=jnp.int32)
    return jnp.zeros(c * 256, jnp.int32).at[v.reshape(-1)].add(1).reshape(c, 256)


def apply_lut(image: jax.Array, lut: jax.Array) -> jax.Array:
    """out[y, x, c] = lut[c, image[y, x, c]].

    Args:
      image: float32[H, W, C] with integer values in [0, 255].
      lut: float32[C, 256].

    Returns:
      float32[H, W, C].
    """
    c = image.shape[-1]
    index = image.astype(jnp.int32) + 256 * jnp.arange(c, dtype=jnp.int32)
    return jnp.take(lut.reshape(-1), index)


def _identity_lut(channels: int) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(256, dtype=jnp.float32), (channels, 256))


def channel_range(image: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel minimum and maximum (the first and last non-empty histogram bins).

    Args:
      image: float32[H, W, C] with integer values.

    Returns:
      (lo, hi), each int32[C, 1].
    """
    v = image.astype(jnp.int32).reshape(-1, image.shape[-1])
    return v.min(axis=0)[:, None], v.max(axis=0)[:, None]


def autocontrast_lut(lo: jax.Array, hi: jax.Array) -> jax.Array:
    """PIL `ImageOps.autocontrast(cutoff=0)`: stretch each channel's [min, max] to [0, 255].

    PIL computes `int(ix * 255.0 / (hi - lo) - lo * 255.0 / (hi - lo))` in double precision, where
    an exact integer result can come out a hair below and truncate one grey level lower (often at
    ix = hi, which PIL then maps to 254); the exact integer form here never does.

    Args:
      lo: int32[C, 1], per-channel minimum.
      hi: int32[C, 1], per-channel maximum.

    Returns:
      float32[C, 256].
    """
    ix = jnp.arange(256, dtype=jnp.int32)
    stretched = jnp.clip(((ix - lo) * 255) // jnp.maximum(hi - lo, 1), 0, 255)
    return jnp.where(hi > lo, stretched, ix).astype(jnp.float32)


def equalize_lut(hist: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """PIL `ImageOps.equalize`, in integer arithmetic as PIL does.

    lut[i] = (step // 2 + sum(hist[:i])) // step with step = (N - hist[max]) // 255; the identity
    if a channel has a single value or step == 0; clipped at 255 as PIL's `point` does.

    Args:
      hist: int32[C, 256] per-channel histogram.
      lo: int32[C, 1], per-channel minimum.
      hi: int32[C, 1], per-channel maximum (the last non-empty bin).

    Returns:
      float32[C, 256].
    """
    h_last = jnp.take_along_axis(hist, hi, axis=-1)
    step = (hist.sum(-1, keepdims=True) - h_last) // 255
    below = jnp.cumsum(hist, axis=-1) - hist  # pixels with a smaller value
    lut = jnp.minimum((step // 2 + below) // jnp.maximum(step, 1), 255)
    keep = (hi <= lo) | (step == 0)
    return jnp.where(keep, jnp.arange(256, dtype=jnp.int32), lut).astype(jnp.float32)


def invert_lut(channels: int) -> jax.Array:
    """PIL `ImageOps.invert`: 255 - v. Returns float32[C, 256]."""
    return 255.0 - _identity_lut(channels)


def solarize_lut(threshold: jax.Array, channels: int) -> jax.Array:
    """PIL `ImageOps.solarize`: v if v < threshold else 255 - v. Returns float32[C, 256]."""
    ix = _identity_lut(channels)
    return jnp.where(ix < threshold, ix, 255.0 - ix)


def posterize_lut(bits: jax.Array, channels: int) -> jax.Array:
    """PIL `ImageOps.posterize`: keep the top `bits` bits. Returns float32[C, 256]."""
    drop = 8 - jnp.asarray(bits, jnp.int32)
    ix = jnp.arange(256, dtype=jnp.int32)
    kept = jnp.left_shift(jnp.right_shift(ix, drop), drop).astype(jnp.float32)
    return jnp.broadcast_to(kept, (channels, 256))


def autocontrast(image: jax.Array) -> jax.Array:
    """AutoContrast: float32[H, W, C] -> float32[H, W, C]."""
    return apply_lut(image, autocontrast_lut(*channel_range(image)))


def equalize(image: jax.Array) -> jax.Array:
    """Equalize: float32[H, W, C] -> float32[H, W, C]."""
    return apply_lut(image, equalize_lut(histogram(image), *channel_range(image)))


def invert(image: jax.Array) -> jax.Array:
    """Invert: float32[H, W, C] -> float32[H, W, C]."""
    return 255.0 - image


def solarize(image: jax.Array, threshold: jax.Array) -> jax.Array:
    """Solarize: float32[H, W, C] -> float32[H, W, C]; pixels >= threshold are inverted."""
    return apply_lut(image, solarize_lut(threshold, image.shape[-1]))


def posterize(image: jax.Array, bits: jax.Array) -> jax.Array:
    """Posterize: float32[H, W, C] -> float32[H, W, C]; keeps `bits` bits per channel."""
    return apply_lut(image, posterize_lut(jnp.asarray(bits, jnp.int32), image.shape[-1]))


# ----------------------------------------------------------------------------------------------
# Blend operations (PIL.ImageEnhance, Cutout, SamplePairing): out = blend(a, b, alpha).
# ----------------------------------------------------------------------------------------------
def _product_f32(alpha: jax.Array, d: jax.Array) -> jax.Array:
    """fl32(alpha * d) for integer-valued |d| <= 2^11, immune to fused multiply-add.

    XLA contracts `a + alpha * d` into one FMA on CPU and GPU, which rounds once where PIL rounds
    the product first and then the sum, so the truncated results differ at up to 1% of pixels.
    Splitting alpha into two 12-bit halves makes both partial products exact, so their float32 sum
    is the correctly rounded product whether or not the compiler fuses it.
    """
    bits = jax.lax.bitcast_convert_type(alpha, jnp.uint32)
    high = jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFF000), jnp.float32)
    low = alpha - high  # exact: the low 12 bits of the mantissa
    return high * d + low * d


def blend(a: jax.Array, b: jax.Array, alpha: jax.Array) -> jax.Array:
    """PIL `Image.blend(a, b, alpha)` on 8-bit images: floor(a + alpha (b - a)) in [0, 255].

    Bit-exact with PIL, which computes this in float32 (product rounded, then sum rounded) and
    truncates; ImageEnhance's `enhance(factor)` is blend(degenerate, image, factor).

    Args:
      a: float32[H, W, C] (or broadcastable), integer values, the image at alpha = 0.
      b: float32[H, W, C], integer values, the image at alpha = 1.
      alpha: float32, scalar or broadcastable per pixel; extrapolates outside [0, 1].

    Returns:
      float32[H, W, C] with integer values in [0, 255].
    """
    alpha = jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), jnp.broadcast_shapes(
        jnp.shape(alpha), jnp.shape(a), jnp.shape(b)))
    return jnp.clip(jnp.floor(a + _product_f32(alpha, b - a)), 0.0, 255.0)


def grayscale(image: jax.Array) -> jax.Array:
    """PIL `convert("L")` (ITU-R 601-2 luma, PIL's rounded 16-bit fixed point).

    Args:
      image: float32[H, W, C], C in {1, 3}.

    Returns:
      float32[H, W, 1]; a 1-channel image is returned unchanged.
    """
    if image.shape[-1] == 1:
        return image
    v = image.astype(jnp.int32)
    luma = (v[..., 0] * 19595 + v[..., 1] * 38470 + v[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(jnp.float32)[..., None]


def gray_mean(image: jax.Array) -> jax.Array:
    """PIL Contrast's `int(mean(L) + 0.5)` in exact integer arithmetic. Returns float32[]."""
    luma = grayscale(image).astype(jnp.int32)
    n = luma.size
    return ((2 * luma.sum() + n) // (2 * n)).astype(jnp.float32)


def smooth(image: jax.Array) -> jax.Array:
    """PIL `filter(ImageFilter.SMOOTH)`: 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13, rounded.

    PIL leaves the one-pixel border unchanged. The rounding is exact in integers because
    (2 N + 13) / 26 is never a whole number.

    Args:
      image: float32[H, W, C].

    Returns:
      float32[H, W, C].
    """
    h, w, _ = image.shape
    padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)))
    rows = padded[:-2] + padded[1:-1] + padded[2:]  # separable 3x3 box sum
    total = 4.0 * image + rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    smoothed = jnp.floor((2.0 * total + 13.0) / 26.0)
    rows = jnp.arange(h)[:, None, None]
    cols = jnp.arange(w)[None, :, None]
    interior = (rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)
    return jnp.where(interior, smoothed, image)


def cutout_mask(center: jax.Array, size: jax.Array, height: int, width: int) -> jax.Array:
    """bool[H, W, 1], True inside the square of side `size` centred at `center` = (row, col).

    As in the reference, the square spans [centre - size // 2, centre + size // 2) on each axis,
    clipped to the image, so it may be cut by the border.
    """
    half = size // 2
    rows = jnp.arange(height)[:, None, None]
    cols = jnp.arange(width)[None, :, None]
    return ((rows >= center[0] - half) & (rows < center[0] + half)
            & (cols >= center[1] - half) & (cols < center[1] + half))


def contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Contrast (PIL ImageEnhance.Contrast): float32[H, W, C] -> float32[H, W, C]."""
    return blend(gray_mean(image), image, factor)


def color(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Color (PIL ImageEnhance.Color): float32[H, W, C] -> float32[H, W, C]."""
    return blend(grayscale(image), image, factor)


def brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Brightness (PIL ImageEnhance.Brightness): float32[H, W, C] -> float32[H, W, C]."""
    return blend(0.0, image, factor)


def sharpness(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Sharpness (PIL ImageEnhance.Sharpness): float32[H, W, C] -> float32[H, W, C]."""
    return blend(smooth(image), image, factor)


def cutout(image: jax.Array, center: jax.Array, size: jax.Array) -> jax.Array:
    """Cutout (DeVries & Taylor 2017): a grey square; float32[H, W, C] -> float32[H, W, C]."""
    mask = cutout_mask(center, size, image.shape[0], image.shape[1])
    return jnp.where(mask, jnp.float32(FILL_VALUE), image)


def sample_pairing(image: jax.Array, partner: jax.Array, weight: jax.Array) -> jax.Array:
    """SamplePairing (Inoue 2018) as PIL `Image.blend(image, partner, weight)`.

    Args:
      image: float32[H, W, C].
      partner: float32[H, W, C], another image of the batch.
      weight: float32[], the partner's weight.

    Returns:
      float32[H, W, C].
    """
    return blend(image, partner, weight)


# ----------------------------------------------------------------------------------------------
# One operation, one sub-policy, a batch.
# ----------------------------------------------------------------------------------------------
def _pixel_stage(image: jax.Array, op: jax.Array, mags: Magnitudes, draws: OpDraws) -> jax.Array:
    """Applies `op` if it is a non-geometric operation, else returns `image` unchanged.

    Every non-geometric op is one lookup table followed by one blend, so a traced op index costs
    one histogram, one table gather and a few elementwise passes, not all eleven operations.
    """
    h, w, c = image.shape
    lo, hi = channel_range(image)
    luts = jnp.stack([
        _identity_lut(c),
        autocontrast_lut(lo, hi),
        invert_lut(c),
        equalize_lut(histogram(image), lo, hi),
        solarize_lut(mags.solarize_threshold, c),
        posterize_lut(mags.posterize_bits, c),
    ])
    # Select the table with a one-hot dot product rather than indexing: XLA would fuse indexing
    # (and the tables' arithmetic) into the per-pixel gather and recompute it for every pixel,
    # while a dot's result is materialized once (apply_policy 1.3x faster on CPU).
    one_hot = jax.nn.one_hot(jnp.asarray(_LUT_KIND)[op], luts.shape[0], dtype=jnp.float32)
    lut = jnp.einsum("k,kcv->cv", one_hot, luts, precision=jax.lax.Precision.HIGHEST)
    x = apply_lut(image, lut)

    kind = jnp.asarray(_BLEND_KIND)[op]
    factor = mags.enhance_factor
    inside = cutout_mask(draws.center, mags.cutout_size, h, w)
    # blend(a, b, alpha): `a` is the degenerate image of ImageEnhance (alpha = 0 end point).
    a = jnp.select(
        [kind == 1, kind == 2, kind == 3, kind == 4, kind == 5],
        [jnp.zeros_like(x), jnp.broadcast_to(gray_mean(x), x.shape),
         jnp.broadcast_to(grayscale(x), x.shape), smooth(x),
         jnp.full_like(x, FILL_VALUE)],
        x)
    b = jnp.where(kind == 6, draws.partner, x)
    alpha = jnp.select(
        [(kind >= 1) & (kind <= 4), kind == 5, kind == 6],
        [jnp.broadcast_to(factor, inside.shape), jnp.where(inside, 0.0, 1.0),
         jnp.broadcast_to(mags.pairing_weight, inside.shape)],
        jnp.ones(inside.shape, jnp.float32))
    # kind 0 (LUT ops, geometric ops, identity): a = b = x and alpha = 1 give x exactly.
    return blend(a, b, alpha)


def apply_op(image: jax.Array, op: jax.Array, level: jax.Array, draws: OpDraws) -> jax.Array:
    """Applies one operation chosen by a (possibly traced) index at a magnitude level.

    Args:
      image: float32[H, W, C], integer values in [0, 255], C in {1, 3}.
      op: int32[], index into `OP_NAMES`, or `IDENTITY_OP`.
      level: int32[], magnitude level in [0, NUM_MAGNITUDE_LEVELS).
      draws: the slot's `OpDraws` (sign, cutout centre, partner).

    Returns:
      float32[H, W, C] with integer values in [0, 255].
    """
    h, w, _ = image.shape
    mags = magnitudes(level, draws.sign, h, w)
    x = affine_warp(image, _geometric_matrix(op, mags, h, w))
    return _pixel_stage(x, op, mags, draws)


def apply_subpolicy(image: jax.Array, op: jax.Array, level: jax.Array,
                    draws: OpDraws) -> jax.Array:
    """Applies two operations in order, their geometric parts fused into one warp.

    Sequential semantics are kept: op 0's pixel stage, then the warp by op 0's matrix composed with
    op 1's (at most one of each op's two stages is not the identity), then op 1's pixel stage. Only
    two consecutive geometric ops differ from resampling twice, and only by rounding: the
    composition resamples once.

    Args:
      image: float32[H, W, C], integer values in [0, 255].
      op: int32[2], indices into `OP_NAMES`; `IDENTITY_OP` for an operation not applied.
      level: int32[2], magnitude levels.
      draws: `OpDraws` with a leading axis of 2 (one per operation).

    Returns:
      float32[H, W, C] with integer values in [0, 255].
    """
    h, w, _ = image.shape
    first = jax.tree.map(lambda d: d[0], draws)
    second = jax.tree.map(lambda d: d[1], draws)
    mags0 = magnitudes(level[0], first.sign, h, w)
    mags1 = magnitudes(level[1], second.sign, h, w)
    matrix = _geometric_matrix(op[0], mags0, h, w) @ _geometric_matrix(op[1], mags1, h, w)
    x = _pixel_stage(image, op[0], mags0, first)
    x = affine_warp(x, matrix)
    return _pixel_stage(x, op[1], mags1, second)


def apply_policy(images: jax.Array, policy: Policy, key: jax.Array) -> jax.Array:
    """Augments a batch: per image, one sub-policy drawn uniformly, its two ops applied in order.

    Each operation is applied with its probability; the reference's other random choices (the
    sign of geometric magnitudes and the cutout centre) are drawn per image and operation, and
    SamplePairing's partner, another image of the (un-augmented) batch, per image. Policy values
    are traced, so a new policy does not recompile; `jax.vmap` over a leading pipeline axis of
    `images`, `policy` and `key` gives independent pipelines.

    Args:
      images: uint8[B, H, W, C], C in {1, 3}.
      policy: `Policy` with op int32[N, 2], prob float32[N, 2], level int32[N, 2].
      key: a PRNG key.

    Returns:
      uint8[B, H, W, C].
    """
    b, h, w, _ = images.shape
    n = policy.op.shape[0]
    # One uniform draw per decision, all from one generator call: each separate jax.random call
    # adds its own threefry to the program, and those dominated its compile time.
    u = jax.random.uniform(key, (b, 10))

    def uniform_int(v, high):  # int32 in [0, high), from v uniform in [0, 1)
        return jnp.minimum(jnp.floor(v * high).astype(jnp.int32), high - 1)

    chosen = uniform_int(u[:, 0], n)
    op = jnp.asarray(policy.op, jnp.int32)[chosen]
    prob = jnp.asarray(policy.prob, jnp.float32)[chosen]
    level = jnp.asarray(policy.level, jnp.int32)[chosen]
    op = jnp.where(u[:, 1:3] < prob, op, IDENTITY_OP)
    sign = jnp.where(u[:, 3:5] < 0.5, 1.0, -1.0)
    center = jnp.stack([uniform_int(u[:, 5:7], h), uniform_int(u[:, 7:9], w)], axis=-1)
    # A non-zero offset modulo B picks another image of the batch (itself only when B = 1). One
    # partner per image serves both operations: SamplePairing twice blends the same two images.
    offset = 1 + uniform_int(u[:, 9], b - 1) if b > 1 else 0
    partner = images[(jnp.arange(b) + offset) % b].astype(jnp.float32)  # [B, H, W, C]
    draws = OpDraws(sign=sign, center=center,
                    partner=jnp.broadcast_to(partner[:, None], (b, 2) + partner.shape[1:]))
    out = jax.vmap(apply_subpolicy)(images.astype(jnp.float32), op, level, draws)
    return out.astype(jnp.uint8)
