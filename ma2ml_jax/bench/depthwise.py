"""Depthwise convolution on the default device: XLA's grouped convolution vs shifted adds.

    python -m ma2ml_jax.bench.depthwise [--repeats 20] [--quick]

Times forward + backward (jitted, after warm-up, median) of a 5x5 depthwise SAME convolution,
batch 64, for a few map sizes, as `lax.conv_general_dilated(feature_group_count=C)` and as
`models.layers.depthwise_taps`; prints the ratio. The networks pick the faster one per
backend ("taps" on CPU). `--quick` times each once (what the tests run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from ma2ml_jax.models.layers import depthwise_taps

CASES = ((8, 32, 1), (8, 64, 2), (32, 96, 1))  # (size, channels, stride)


def grouped(x, w, stride):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                        feature_group_count=x.shape[-1],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def median_ms(fn, args, repeats):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="one timed run each")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    print(f"devices: {jax.devices()}")
    print("input           grouped conv      taps   grouped / taps")
    for size, channels, stride in CASES:
        x = jax.random.normal(jax.random.key(0), (64, size, size, channels))
        w = jax.random.normal(jax.random.key(1), (5, 5, 1, channels))
        ms = {}
        for name, f in (("grouped", grouped), ("taps", depthwise_taps)):
            def loss(x, w, f=f, s=stride):
                return (f(x, w, s) ** 2).sum()

            g = jax.jit(jax.grad(loss, argnums=(0, 1)))
            ms[name] = median_ms(g, (x, w), args.repeats)
        print(f"{size}x{size}x{channels} s{stride}".ljust(16) +
              f"{ms['grouped']:9.2f} ms {ms['taps']:9.2f} ms {ms['grouped'] / ms['taps']:9.1f}x")


if __name__ == "__main__":
    main()
