"""Proxy-network training: the pure jitted functions that turn one pipeline into a reward.

A trainer is made per network: its functions take the recipe as a `Hyperparams` pytree of arrays
(the optimizer type included) and the augmentation policy as arrays, so a new recipe or policy
reuses the compiled program. Augmentation runs inside the jitted step, on the device.
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
# Training is cut into this many equal phases with their own learning-rate and weight-decay
# multipliers: the paper's CIFAR recipe space searches one value per phase (spaces/recipe.py).
NUM_PHASES = 10


class Hyperparams(NamedTuple):
    """A training recipe as arrays (scalars, or [P] when stacked over pipelines)."""

    optimizer: jax.Array  # int32 index into OPTIMIZERS
    learning_rate: jax.Array
    weight_decay: jax.Array
    mixup: jax.Array  # Beta(alpha, alpha) mixup; 0 = off
    dropout: jax.Array
    stochastic_depth: jax.Array
    ema: jax.Array  # 1.0: evaluate the exponential moving average of the weights
    warmup_steps: jax.Array
    label_smoothing: jax.Array
    lr_phases: jax.Array  # float32[NUM_PHASES] multipliers of learning_rate
    wd_phases: jax.Array  # float32[NUM_PHASES] multipliers of weight_decay
    cosine: jax.Array  # 1.0: cosine decay after warm-up; 0.0: the phases alone

    @classmethod
    def from_recipe(cls, hp: Mapping[str, Any], steps_per_epoch: int) -> Hyperparams:
        """From `spaces.recipe.to_hparams` values (missing keys take the neutral default).

        A recipe with `learning_rate_schedule` / `weight_decay_schedule` (NUM_PHASES values each)
        follows those values phase by phase, without cosine decay.
        """
        get = lambda k, d=0.0: np.float32(hp.get(k, d))  # noqa: E731
        lr, wd = get("learning_rate", 0.1), get("weight_decay")
        lr_phases, wd_phases = np.ones(NUM_PHASES, np.float32), np.ones(NUM_PHASES, np.float32)
        cosine = np.float32(1.0)
        if "learning_rate_schedule" in hp:
            lr = np.float32(max(hp["learning_rate_schedule"]))
            lr_phases = _phases(hp["learning_rate_schedule"], lr)
            cosine = np.float32(0.0)
        if "weight_decay_schedule" in hp:
            wd = np.float32(max(hp["weight_decay_schedule"]))
            wd_phases = _phases(hp["weight_decay_schedule"], wd)
        return cls(np.int32(hp.get("optimizer", 0)), lr, wd, get("mixup"), get("dropout"),
                   get("stochastic_depth"), get("ema"),
                   np.float32(float(hp.get("warmup_epochs", 0.0)) * steps_per_epoch),
                   get("label_smoothing"), lr_phases, wd_phases, cosine)


def _phases(schedule, peak) -> np.ndarray:
    schedule = np.asarray(schedule, np.float32)
    if schedule.shape != (NUM_PHASES,):
        raise ValueError(f"a recipe schedule needs {NUM_PHASES} values, got {schedule.shape}")
    return schedule / peak if peak > 0 else np.zeros_like(schedule)


def phase(step: jax.Array, total_steps: int) -> jax.Array:
    """Index of the training phase of `step`, in [0, NUM_PHASES)."""
    return jnp.clip(step * NUM_PHASES // max(total_steps, 1), 0, NUM_PHASES - 1)


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any


class Trainer(NamedTuple):
    """Pure functions of one network and optimizer type (jit them, or trace them into more)."""

    # Each takes an optional last argument `arch`: the architecture arrays of a masked network.
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
    """Linear warm-up, then cosine decay to zero at `total_steps` (if `hp.cosine`), times the
    multiplier of the step's phase.
    """
    mult = hp.lr_phases[phase(step, total_steps)]
    step = step.astype(jnp.float32)
    warm = jnp.where(hp.warmup_steps > 0, jnp.minimum(1.0, (step + 1) / jnp.maximum(
        hp.warmup_steps, 1.0)), 1.0)
    progress = jnp.clip((step - hp.warmup_steps) / jnp.maximum(total_steps - hp.warmup_steps, 1),
                        0.0, 1.0)
    decay = jnp.where(hp.cosine > 0, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)), 1.0)
    return hp.learning_rate * mult * warm * decay


def weight_decay(hp: Hyperparams, step: jax.Array, total_steps: int) -> jax.Array:
    return hp.weight_decay * hp.wd_phases[phase(step, total_steps)]


def make_trainer(network: nn.Module, *, image_shape: tuple[int, int, int],
                 num_classes: int, mean: np.ndarray, std: np.ndarray, total_steps: int,
                 augment_images: bool) -> Trainer:
    """Builds the pure training and evaluation functions of one network.

    Args:
      network: a flax module called as `network.apply(vars, x, train, dropout, drop_path_rate)`,
        plus `arch=` for a masked network (then every function takes the architecture arrays).
      image_shape: (H, W, C) of the dataset images.
      num_classes: number of classes.
      mean, std: float32[C] normalization statistics (0..255 scale).
      total_steps: length of the learning-rate schedule.
      augment_images: apply the policy inside the step (False: no augmentation agent).
    """
    # Every optimizer type keeps its state and the step applies the one the recipe picks: one
    # compiled program for every recipe (their updates are element-wise, cheap next to the convs).
    txs = [make_optimizer(kind) for kind in OPTIMIZERS]
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

    def normalize(images_u8):
        return (images_u8.astype(jnp.float32) - mean) / std

    def arch_kwargs(arch):
        # Masked one-program networks take the architecture as an input; exact ones do not.
        return {} if arch is None else {"arch": arch}

    def init(key, arch=None):
        x = jnp.zeros((1, *image_shape), jnp.float32)
        variables = network.init({"params": key, "dropout": key}, x, False, 0.0, 0.0,
                                 **arch_kwargs(arch))
        params = variables["params"]
        return TrainState(jnp.zeros((), jnp.int32), params, variables.get("batch_stats", {}),
                          tuple(tx.init(params) for tx in txs), params)

    def train_step(state: TrainState, images_u8, labels, hp: Hyperparams, policy, key,
                   arch=None):
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
                hp.stochastic_depth, rngs={"dropout": k_drop}, mutable=["batch_stats"],
                **arch_kwargs(arch))
            return optax.softmax_cross_entropy(logits, y).mean(), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        injected = {"learning_rate": learning_rate(hp, state.step, total_steps),
                    "weight_decay": weight_decay(hp, state.step, total_steps)}
        all_deltas, opt_state = [], []
        for tx, s in zip(txs, state.opt_state):
            d, s = tx.update(grads, s._replace(hyperparams={**s.hyperparams, **injected}),
                             state.params)
            all_deltas.append(d)
            opt_state.append(s)
        deltas = jax.tree.map(lambda *d: jnp.stack(d)[hp.optimizer], *all_deltas)
        params = optax.apply_updates(state.params, deltas)
        # EMA with the usual warm-up of its decay, so short proxy runs still average sensibly.
        decay = jnp.minimum(0.999, (1.0 + state.step) / (10.0 + state.step))
        ema = optax.incremental_update(params, state.ema_params, 1.0 - decay)
        new = TrainState(state.step + 1, params, updates.get("batch_stats", {}), tuple(opt_state),
                         ema)
        return new, loss

    def eval_batch(state: TrainState, images_u8, labels, valid, use_ema, arch=None):
        params = jax.tree.map(lambda e, p: jnp.where(use_ema > 0, e, p), state.ema_params,
                              state.params)
        logits = network.apply({"params": params, "batch_stats": state.batch_stats},
                               normalize(images_u8), False, 0.0, 0.0, **arch_kwargs(arch))
        correct = (jnp.argmax(logits, -1) == labels) & valid
        return correct.sum()

    return Trainer(init, train_step, eval_batch)


def num_params(params) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
