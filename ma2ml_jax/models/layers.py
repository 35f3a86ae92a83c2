"""Layers the proxy networks share: BatchNorm settings, the activation, stochastic depth,
classifier dropout with a traced rate, and depthwise convolution in two implementations.

XLA's CPU backend runs grouped (depthwise) convolutions, and their gradients, on a slow path;
`depthwise_taps` computes the same convolution as k*k shifted multiply-adds, which is fast there
(docs/BENCHMARKS.md, "Depthwise convolution on CPU"). Networks take `depthwise_impl`: "conv"
(XLA's grouped convolution, the choice on accelerators) or "taps".
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

DEPTHWISE_IMPLS = ("conv", "taps")


BN_MOMENTUM = 0.9


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm as every proxy network uses it: batch statistics (and their running averages
    updated, momentum 0.9) when training, the running averages otherwise.
    """
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, name=name)


def hard_swish(x: jax.Array) -> jax.Array:
    """The activation of the FBNetV3-style macro networks."""
    return jax.nn.hard_swish(x)


def drop_path(x: jax.Array, rate: jax.Array, key: jax.Array) -> jax.Array:
    """Stochastic depth on a residual branch: zero whole examples with probability `rate`."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.maximum(keep, 1e-6), 0.0)


def classifier_dropout(x: jax.Array, rate: jax.Array, key: jax.Array) -> jax.Array:
    """Inverted dropout with a traced rate (a recipe value: a new rate never recompiles)."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, x.shape)
    return jnp.where(mask, x / jnp.maximum(keep, 1e-6), 0.0)


def default_depthwise_impl() -> str:
    """The faster implementation on the default backend: "taps" on CPU, "conv" elsewhere."""
    return "taps" if jax.default_backend() == "cpu" else "conv"


def depthwise_taps(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """Depthwise SAME convolution as k*k shifted multiply-adds.

    Same result as `lax.conv_general_dilated(..., feature_group_count=C)`.

    Args:
      x: float32[B, H, W, C].
      w: float32[k, k, 1, C].
      stride: 1 or 2.
    """
    k, (_, h, wd, _) = w.shape[0], x.shape
    ho, wo = -(-h // stride), -(-wd // stride)
    pad_h, pad_w = max((ho - 1) * stride + k - h, 0), max((wo - 1) * stride + k - wd, 0)
    xp = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                     (0, 0)))
    out = jnp.zeros((x.shape[0], ho, wo, x.shape[-1]), x.dtype)
    for i in range(k):
        for j in range(k):
            out = out + xp[:, i:i + (ho - 1) * stride + 1:stride,
                           j:j + (wo - 1) * stride + 1:stride, :] * w[i, j, 0]
    return out


def depthwise(x: jax.Array, w: jax.Array, stride: int, impl: str) -> jax.Array:
    """Depthwise SAME convolution of x [B, H, W, C] with w [k, k, 1, C] by `impl`."""
    if impl == "taps":
        return depthwise_taps(x, w, stride)
    if impl != "conv":
        raise ValueError(f"depthwise_impl={impl!r} is not one of {DEPTHWISE_IMPLS}")
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                        feature_group_count=x.shape[-1],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Depthwise(nn.Module):
    """A k x k depthwise convolution without bias; its parameter is `nn.Conv(C, (k, k),
    feature_group_count=C)`'s `kernel` [k, k, 1, C], so the two are interchangeable.
    """

    kernel: int
    stride: int = 1
    impl: str = "conv"

    @nn.compact
    def __call__(self, x):
        w = self.param("kernel", nn.initializers.lecun_normal(),
                       (self.kernel, self.kernel, 1, x.shape[-1]))
        return depthwise(x, w.astype(x.dtype), self.stride, self.impl)
