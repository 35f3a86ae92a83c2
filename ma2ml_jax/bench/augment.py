"""Cost of on-device augmentation against one training step of a small CNN.

    python -m ma2ml_jax.bench.augment [--network cell|smallcnn] [--batch_size 256]
        [--num_subpolicies 25] [--repeats 20] [--quick]

Times `augment.apply_policy` on a batch of CIFAR-size uint8 images with a random policy, one SGD
training step (forward, backward, update) of a proxy CNN on the same batch, and the step with the
augmentation inside it, as the proxy trainer runs it: each jitted, after warm-up, the three timed
in turn for `repeats` rounds; median and minimum reported. `run` takes the network as an argument:
`--network cell` (default) is the paper's CIFAR proxy, a NASNet-cell network (a fixed random
architecture) at the size of `configs/cifar10.py:local`; `smallcnn` is a plain 3-stage CNN.
The goal is augmentation under 10% of a step. Real CIFAR-10 images are used when
../shared/data/cifar10_jpeg.npz exists (only the first batch is decoded), random ones otherwise:
the cost hardly depends on the content. `--quick` times a batch of 16, 5 sub-policies, once: the
same code path at its smallest, what the tests run.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from ma2ml_jax import augment

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DATA = os.path.join(_REPO_ROOT, "..", "shared", "data", "cifar10_jpeg.npz")
NUM_CLASSES = 10
QUICK = {"batch_size": 16, "num_subpolicies": 5, "repeats": 1}  # --quick


class SmallCNN(nn.Module):
    """Stand-in proxy network: per stage conv3x3-BN-ReLU, 2x2 average pooling between stages.

    Attributes:
      widths: output channels of each stage.
      num_classes: logits.
    """

    widths: Sequence[int] = (32, 64, 128)
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i, width in enumerate(self.widths):
            if i:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            x = nn.Conv(width, (3, 3), use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = nn.relu(x)
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


class TrainState(NamedTuple):
    params: Any
    batch_stats: Any
    opt_state: optax.OptState


def make_train_step(model: nn.Module, learning_rate: float = 0.1
                    ) -> tuple[Callable[..., TrainState], Callable[..., TrainState]]:
    """Returns `init(key, images) -> state` and `step(state, images, labels) -> state`.

    `step` normalizes uint8[B, H, W, C] images, takes one SGD (momentum 0.9) step on the softmax
    cross-entropy and updates the BatchNorm statistics.
    """
    tx = optax.sgd(learning_rate, momentum=0.9)

    def init(key: jax.Array, images: jax.Array) -> TrainState:
        variables = model.init(key, images.astype(jnp.float32), train=False)
        params = variables["params"]
        return TrainState(params, variables["batch_stats"], tx.init(params))

    def step(state: TrainState, images: jax.Array, labels: jax.Array) -> TrainState:
        x = images.astype(jnp.float32) / 127.5 - 1.0

        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                          x, train=True, mutable=["batch_stats"],
                                          rngs={"dropout": jax.random.key(0)})
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updates["batch_stats"]

        grads, batch_stats = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), batch_stats, opt_state)

    return init, step


def random_policy(key: jax.Array, num_subpolicies: int,
                  num_ops: int = augment.NUM_PAPER_OPS) -> augment.Policy:
    """A uniformly random `augment.Policy` of `num_subpolicies` x 2 operations."""
    k_op, k_prob, k_level = jax.random.split(key, 3)
    shape = (num_subpolicies, 2)
    prob = jax.random.randint(k_prob, shape, 0, augment.NUM_PROB_LEVELS)
    return augment.Policy(
        op=jax.random.randint(k_op, shape, 0, num_ops),
        prob=prob.astype(jnp.float32) / (augment.NUM_PROB_LEVELS - 1),
        level=jax.random.randint(k_level, shape, 0, augment.NUM_MAGNITUDE_LEVELS))


def load_batch(batch_size: int, path: str = DEFAULT_DATA, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray, str]:
    """The first `batch_size` CIFAR-10 training images, or random uint8 ones if unavailable.

    Returns:
      (uint8[B, 32, 32, 3] images, int32[B] labels, a description of the source).
    """
    try:
        from PIL import Image

        with np.load(path) as pack:
            offsets = pack["train_offsets"][:batch_size + 1]
            blob = pack["train_jpeg"][:offsets[-1]].tobytes()
            labels = pack["train_labels"][:batch_size].astype(np.int32)
        images = np.stack([np.asarray(Image.open(io.BytesIO(blob[a:b])).convert("RGB"))
                           for a, b in zip(offsets[:-1], offsets[1:], strict=True)])
        if images.shape == (batch_size, 32, 32, 3):
            return images, labels, f"CIFAR-10 ({os.path.normpath(path)})"
    except (OSError, KeyError, ValueError):
        pass
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, NUM_CLASSES, batch_size, dtype=np.int32), "random uint8")


def median_seconds(fns: dict[str, Callable[[], Any]], repeats: int,
                   warmup: int = 2) -> dict[str, tuple[float, float]]:
    """Median and minimum wall time of each `fn()` (which must return arrays), after `warmup` calls.

    The functions are timed in turn, round after round, so that a change in the machine's load
    during the measurement (other processes on a shared CPU) affects all of them alike.
    """
    for name, fn in fns.items():
        print(f"compiling and warming up: {name}", flush=True)
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for _ in tqdm(range(repeats), desc="timed rounds", unit="round"):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def run(model: nn.Module, *, batch_size: int = 256, num_subpolicies: int = 25,
        repeats: int = 20, data: str = DEFAULT_DATA, seed: int = 0) -> dict[str, Any]:
    """Measures augmentation, a training step, and a training step with augmentation.

    Args:
      model: the flax network to train (any module called as `model(x, train=...)` with
        BatchNorm statistics in "batch_stats").
      batch_size: images per batch.
      num_subpolicies: N of the random policy.
      repeats: timed runs per measurement (median reported).
      data: path of cifar10_jpeg.npz; random images if it cannot be read.
      seed: seed of the policy, the network and the augmentation keys.

    Returns:
      A dict of median seconds (`augment_s`, `step_s`, `augmented_step_s`), the minima
      (`*_min_s`), the ratio of the medians augment / step, and the data source.
    """
    images_np, labels_np, source = load_batch(batch_size, data, seed)
    images, labels = jnp.asarray(images_np), jnp.asarray(labels_np)
    key = jax.random.key(seed)
    k_policy, k_init, k_aug = jax.random.split(key, 3)
    policy = random_policy(k_policy, num_subpolicies)

    aug = jax.jit(augment.apply_policy)
    init, step = make_train_step(model)
    state = init(k_init, images)
    train = jax.jit(step)

    def augmented(state, images, labels, policy, key):
        return step(state, augment.apply_policy(images, policy, key), labels)

    train_aug = jax.jit(augmented)

    # Each timed call gets its own key so no work can be cached; state is not threaded through
    # (the same step is re-run), which times exactly one step.
    counter = iter(range(10**9))

    def fresh_key():
        return jax.random.fold_in(k_aug, next(counter))

    seconds = median_seconds({
        "augment_s": lambda: aug(images, policy, fresh_key()),
        "step_s": lambda: train(state, images, labels),
        "augmented_step_s": lambda: train_aug(state, images, labels, policy, fresh_key()),
    }, repeats)
    return {**{k: v[0] for k, v in seconds.items()},
            **{k[:-2] + "_min_s": v[1] for k, v in seconds.items()},
            "ratio": seconds["augment_s"][0] / seconds["step_s"][0], "source": source}


def proxy_network(kind: str) -> tuple[nn.Module, str]:
    """The network to time a training step of, and its description."""
    if kind == "smallcnn":
        return SmallCNN(), "SmallCNN 32/64/128"
    from configs.cifar10 import get_config
    from ma2ml_jax.models.cell_net import CellArch, CellNet
    from ma2ml_jax.spaces import cell_space

    model = get_config("local").model
    space = cell_space()
    arch = space.decode(space.sample(jax.random.key(0), 1)[0])
    net = CellNet(CellArch.from_config(arch), NUM_CLASSES, cells=model.cells,
                  reduction_cells=tuple(model.reduction_cells), channels=model.cell_channels,
                  depthwise_impl="taps" if jax.default_backend() == "cpu" else "conv")
    return net, (f"NASNet cells x{model.cells}, C={model.cell_channels}, cifar10.py:local")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", choices=("cell", "smallcnn"), default="cell")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--num_subpolicies", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--data", default=DEFAULT_DATA, help="path of cifar10_jpeg.npz")
    parser.add_argument("--quick", action="store_true",
                        help="the smallest run: " + ", ".join(f"--{k} {v}" for k, v in
                                                              QUICK.items()))
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    print(f"devices: {jax.devices()}")
    model, network_name = proxy_network(args.network)
    result = run(model, batch_size=args.batch_size, num_subpolicies=args.num_subpolicies,
                 repeats=args.repeats, data=args.data)
    ms = {k: 1e3 * v for k, v in result.items() if k.endswith("_s")}
    print(f"data: {result['source']}; batch {args.batch_size} x 32x32x3 uint8, "
          f"{args.num_subpolicies} sub-policies; median (min) of {args.repeats} runs")
    for label, name in [("augment (apply_policy, jitted): ", "augment"),
                        (f"train step ({network_name}):".ljust(32), "step"),
                        ("train step with augmentation:   ", "augmented_step")]:
        print(f"{label} {ms[name + '_s']:8.2f} ms ({ms[name + '_min_s']:.2f})")
    print(f"augment / step: {100 * result['ratio']:.1f}% (goal: under 10%)")


if __name__ == "__main__":
    main()
