"""Proxy-network training: the pure jitted functions that turn one pipeline into a reward.

A trainer is made per (network, optimizer type): its functions take the recipe as a `Hyperparams`
pytree of float32 scalars and the augmentation policy as arrays, so a new recipe or policy reuses
the compiled program. Augmentation runs inside the jitted step, on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ma2ml_jax import augment

OPTIMIZERS = ("sgd", "rmsprop", "adamw")


class Hyperparams(NamedTuple):
    """A training recipe as arrays (float32 scalars, or [P] when stacked over pipelines)."""

    learning_rate: jax.Array
    weight_decay: jax.Array
    mixup: jax.Array  # Beta(alpha, alpha) mixup; 0 = off
    dropout: jax.Array
    stochastic_depth: jax.Array
    ema: jax.Array  # 1.0: evaluate the exponential moving average of the weights
    warmup_steps: jax.Array
    label_smoothing: jax.Array

    @classmethod
    def from_recipe(cls, hp: Mapping[str, Any], steps_per_epoch: int) -> Hyperparams:
        """From `spaces.recipe.to_hparams` values (missing keys take the neutral default)."""
        get = lambda k, d=0.0: np.float32(hp.get(k, d))  # noqa: E731
        return cls(get("learning_rate", 0.1), get("weight_decay"), get("mixup"), get("dropout"),
                   get("stochastic_depth"), get("ema"),
                   np.float32(float(hp.get("warmup_epochs", 0.0)) * steps_per_epoch),
                   get("label_smoothing"))


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any


class Trainer(NamedTuple):
    """Pure functions of one network and optimizer type (jit them, or trace them into more)."""

    init: Callable  # (key) -> TrainState
    # (state, images u8[B,H,W,C], labels i32[B], hp, policy, key) -> (state, loss)
    train_step: Callable
    # (state, images u8[B,H,W,C], labels i32[B], valid bool[B], use_ema) -> number correct
    eval_batch: Callable


def make_optimizer(kind: str) -> optax.GradientTransformation:
    """An optimizer whose learning rate and weight decay are injected arrays."""
    if kind == "sgd":
        def opt(learning_rate, weight_decay):
            return optax.chain(optax.add_decayed_weights(weight_decay),
                               optax.sgd(learning_rate, momentum=0.9, nesterov=True))
    elif kind == "rmsprop":
        def opt(learning_rate, weight_decay):
            return optax.chain(optax.add_decayed_weights(weight_decay),
                               optax.rmsprop(learning_rate, decay=0.9, eps=1e-3, momentum=0.9))
    elif kind == "adamw":
        def opt(learning_rate, weight_decay):
            return optax.adamw(learning_rate, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {kind!r}; valid: {OPTIMIZERS}")
    return optax.inject_hyperparams(opt)(learning_rate=0.0, weight_decay=0.0)


def learning_rate(hp: Hyperparams, step: jax.Array, total_steps: int) -> jax.Array:
    """Linear warm-up, then cosine decay to zero at `total_steps`."""
    step = step.astype(jnp.float32)
    warm = jnp.where(hp.warmup_steps > 0, jnp.minimum(1.0, (step + 1) / jnp.maximum(
        hp.warmup_steps, 1.0)), 1.0)
    progress = jnp.clip((step - hp.warmup_steps) / jnp.maximum(total_steps - hp.warmup_steps, 1),
                        0.0, 1.0)
    return hp.learning_rate * warm * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))


def make_trainer(network: nn.Module, optimizer: str, *, image_shape: tuple[int, int, int],
                 num_classes: int, mean: np.ndarray, std: np.ndarray, total_steps: int,
                 augment_images: bool) -> Trainer:
    """Builds the pure training and evaluation functions of one network.

    Args:
      network: a flax module called as `network.apply(vars, x, train, dropout, drop_path_rate)`.
      optimizer: one of `OPTIMIZERS`.
      image_shape: (H, W, C) of the dataset images.
      num_classes: number of classes.
      mean, std: float32[C] normalization statistics (0..255 scale).
      total_steps: length of the learning-rate schedule.
      augment_images: apply the policy inside the step (False: no augmentation agent).
    """
    tx = make_optimizer(optimizer)
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

    def normalize(images_u8):
        return (images_u8.astype(jnp.float32) - mean) / std

    def init(key):
        x = jnp.zeros((1, *image_shape), jnp.float32)
        variables = network.init({"params": key, "dropout": key}, x, train=False)
        params = variables["params"]
        return TrainState(jnp.zeros((), jnp.int32), params, variables.get("batch_stats", {}),
                          tx.init(params), params)

    def train_step(state: TrainState, images_u8, labels, hp: Hyperparams, policy, key):
        k_aug, k_mix, k_drop = jax.random.split(key, 3)
        if augment_images:
            images_u8 = augment.apply_policy(images_u8, policy, k_aug)
        x = normalize(images_u8)
        y = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), hp.label_smoothing)
        # Mixup with a traced alpha: alpha = 0 gives lam = 1 (no mixing).
        alpha = jnp.maximum(hp.mixup, 1e-3)
        lam = jnp.where(hp.mixup > 0, jax.random.beta(k_mix, alpha, alpha), 1.0)
        x = lam * x + (1 - lam) * x[::-1]
        y = lam * y + (1 - lam) * y[::-1]

        def loss_fn(params):
            logits, updates = network.apply(
                {"params": params, "batch_stats": state.batch_stats}, x, True, hp.dropout,
                hp.stochastic_depth, rngs={"dropout": k_drop}, mutable=["batch_stats"])
            return optax.softmax_cross_entropy(logits, y).mean(), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        opt_state = state.opt_state._replace(hyperparams={
            **state.opt_state.hyperparams,
            "learning_rate": learning_rate(hp, state.step, total_steps),
            "weight_decay": hp.weight_decay})
        deltas, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, deltas)
        # EMA with the usual warm-up of its decay, so short proxy runs still average sensibly.
        decay = jnp.minimum(0.999, (1.0 + state.step) / (10.0 + state.step))
        ema = optax.incremental_update(params, state.ema_params, 1.0 - decay)
        new = TrainState(state.step + 1, params, updates.get("batch_stats", {}), opt_state, ema)
        return new, loss

    def eval_batch(state: TrainState, images_u8, labels, valid, use_ema):
        params = jax.tree.map(lambda e, p: jnp.where(use_ema > 0, e, p), state.ema_params,
                              state.params)
        logits = network.apply({"params": params, "batch_stats": state.batch_stats},
                               normalize(images_u8), False)
        correct = (jnp.argmax(logits, -1) == labels) & valid
        return correct.sum()

    return Trainer(init, train_step, eval_batch)


def num_params(params) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
