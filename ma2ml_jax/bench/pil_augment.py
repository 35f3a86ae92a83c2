"""AutoAugment on the host with PIL, image by image: what a straightforward port would write.

The throughput benchmark's naive baseline augments this way (the AutoAugment reference code is a
PIL loop over the images of a batch). The parameters follow the reference code's level -> value
formulas, as `ma2ml_jax.augment` does on the device (tests/test_augment.py compares the two op by
op); here every image draws its sub-policy, the application of each op and the sign of signed ops
from a numpy generator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

FILL = 128  # grey fill of the geometric ops and Cutout, as on the device


def _signed(level: int, maxval: float, rng: np.random.Generator) -> float:
    return (level * maxval / 10) * (1 if rng.random() < 0.5 else -1)


def _affine(im: Image.Image, data, fill) -> Image.Image:
    return im.transform(im.size, Image.AFFINE, data, resample=Image.NEAREST, fillcolor=fill)


def apply_op(im: Image.Image, name: str, level: int, rng: np.random.Generator,
             partner: Image.Image) -> Image.Image:
    """One AutoAugment operation at magnitude `level` (0..9) on a PIL image."""
    w, h = im.size
    fill = FILL if im.mode == "L" else (FILL,) * 3
    if name == "ShearX":
        return _affine(im, (1, _signed(level, 0.3, rng), 0, 0, 1, 0), fill)
    if name == "ShearY":
        return _affine(im, (1, 0, 0, _signed(level, 0.3, rng), 1, 0), fill)
    if name == "TranslateX":
        return _affine(im, (1, 0, int(_signed(level, 150 / 331 * w, rng)), 0, 1, 0), fill)
    if name == "TranslateY":
        return _affine(im, (1, 0, 0, 0, 1, int(_signed(level, 150 / 331 * h, rng))), fill)
    if name == "Rotate":
        return im.rotate(int(_signed(level, 30, rng)), resample=Image.NEAREST, fillcolor=fill)
    if name == "AutoContrast":
        return ImageOps.autocontrast(im)
    if name == "Invert":
        return ImageOps.invert(im)
    if name == "Equalize":
        return ImageOps.equalize(im)
    if name == "Solarize":
        return ImageOps.solarize(im, 256 - int(level * 256 / 10))
    if name == "Posterize":
        return ImageOps.posterize(im, 4 - int(level * 4 / 10))
    if name in ("Contrast", "Color", "Brightness", "Sharpness"):
        return getattr(ImageEnhance, name)(im).enhance(level * 1.8 / 10 + 0.1)
    if name == "Cutout":
        size = int(level * (20 / 32 * min(h, w)) / 10)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(0, cy - size // 2), min(h, cy + size // 2)
        x0, x1 = max(0, cx - size // 2), min(w, cx + size // 2)
        im = im.copy()
        if y1 > y0 and x1 > x0:
            ImageDraw.Draw(im).rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
        return im
    if name == "SamplePairing":
        return Image.blend(im, partner, level * 0.4 / 10)
    raise ValueError(f"unknown augmentation op {name!r}")


def apply_policy(images: np.ndarray, subpolicies: Sequence[Sequence[Mapping[str, Any]]],
                 rng: np.random.Generator) -> np.ndarray:
    """Augments uint8[B, H, W, C] images with a decoded AutoAugment policy, one image at a time.

    Args:
      images: the batch.
      subpolicies: `[[{"op", "prob", "magnitude"}, ...], ...]` (the augment space's decoding).
      rng: draws each image's sub-policy, whether each op applies, signs and Cutout centres.

    Returns:
      uint8[B, H, W, C].
    """
    gray = images.shape[-1] == 1
    pil = [Image.fromarray(x[..., 0] if gray else x) for x in images]
    out = np.empty_like(images)
    for i, im in enumerate(pil):
        for op in subpolicies[int(rng.integers(len(subpolicies)))]:
            if rng.random() < op["prob"]:
                im = apply_op(im, op["op"], int(op["magnitude"]), rng, pil[-1 - i])
        out[i] = np.asarray(im).reshape(images.shape[1:])
    return out
