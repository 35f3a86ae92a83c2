"""Layers the proxy networks share: depthwise convolution in two implementations.

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
