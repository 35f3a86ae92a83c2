"""Iranfar's early termination driven by a fake clock, the epochs per episode, reward eq. 2."""

import collections
import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from ma2ml_jax import config as config_lib
from ma2ml_jax import data, rewards, search
from ma2ml_jax import termination as T
from ma2ml_jax.errors import ConfigError
from ma2ml_jax.evaluate_layerwise import (
    make_layerwise_evaluator,
    make_layerwise_evaluator_with_state,
)
from ma2ml_jax.spaces import layerwise, make_pipeline_space


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def scripted(clock, batch_seconds, epoch_losses, batches_per_epoch=4, log=None):
    """An attempt function: attempt k takes `batch_seconds[k](batch)` per batch and ends its
    epochs with `epoch_losses[k]`, as a trainer reporting to the monitor would."""
    def attempt(k, monitor):
        b = 0
        for epoch in range(monitor.max_epochs):
            for _ in range(batches_per_epoch):
                monitor.batch_started()
                clock.now += batch_seconds[k](b)
                b += 1
                if monitor.batch_finished(0.5):
                    return ("stopped", k, epoch, b)
            if monitor.epoch_finished(epoch_losses[k][epoch]):
                return ("stopped", k, epoch, b)
        if log is not None:
            log.append(k)
        return ("done", k, monitor.max_epochs, b)
    return attempt


def fast(_):
    return 0.1


def test_batch_time_violations_in_a_row_terminate_at_once():
    clock = FakeClock()
    cfg = T.TerminationConfig(batch_time=1.0, batch_patience=3, untimed_batches=1,
                              loss_threshold=10.0)
    # Batch 0 is untimed (compilation): 9 s does not count. Then 2 slow, 1 fast (the counter
    # resets), 3 slow: terminated at batch 7, in epoch 2 (4 batches an epoch).
    seconds = [9.0, 2.0, 2.0, 0.5, 2.0, 2.0, 2.0, 0.1, 0.1]
    ep = T.run_episode(scripted(clock, [lambda b: seconds[b]] * 2, [[1.0] * 10] * 2),
                       cfg, T.EpochBudget(10, 3), clock)
    assert ep.terminated and ep.attempts == 1  # an immediate penalty: no restart
    assert ep.causes == ("batch_time",)
    assert ep.result == ("stopped", 0, 1, 7)
    assert ep.failure.startswith("batch_time: 3 batches in a row over 1s")
    assert ep.budget == T.EpochBudget(10, 3)  # a terminated episode does not set the epochs


def test_batch_time_check_is_off_at_zero():
    clock = FakeClock()
    cfg = T.TerminationConfig(batch_time=0.0, loss_threshold=10.0)
    ep = T.run_episode(scripted(clock, [lambda b: 100.0], [[1.0] * 10]), cfg,
                       T.EpochBudget(3, 3), clock)
    assert not ep.terminated and ep.epochs == 3


def test_epoch_loss_termination_is_retried_once_then_penalized():
    clock = FakeClock()
    cfg = T.TerminationConfig(loss_threshold=1.0, loss_patience=2)
    # First attempt: 2.0, 1.5 -> two epochs in a row over 1.0: restart (no penalty yet).
    # Second: 0.9 from the first epoch on -> completes; N_epoch = max(3, 1) = 3.
    done = []
    ep = T.run_episode(scripted(clock, [fast, fast], [[2.0, 1.5, 0.5], [0.9, 0.8, 0.7]],
                                log=done), cfg, T.EpochBudget(3, 3), clock)
    assert not ep.terminated and ep.attempts == 2 and ep.causes == ("epoch_loss", "")
    assert done == [1] and ep.result[0] == "done" and ep.n_epoch == 3
    # Both attempts over the threshold: terminated, with the penalty, after the restart.
    ep = T.run_episode(scripted(clock, [fast, fast], [[2.0, 1.5, 0.5], [0.9, 1.1, 1.2]]),
                       cfg, T.EpochBudget(5, 3), clock)
    assert ep.terminated and ep.attempts == 2 and ep.causes == ("epoch_loss", "epoch_loss")
    assert "epoch_loss: 2 epochs in a row over 1" in ep.failure


def test_a_loss_violation_streak_is_reset_by_a_good_epoch():
    clock = FakeClock()
    cfg = T.TerminationConfig(loss_threshold=1.0, loss_patience=2)
    ep = T.run_episode(scripted(clock, [fast], [[2.0, 0.9, 2.0, 0.9, 2.0]]), cfg,
                       T.EpochBudget(5, 3), clock)
    assert not ep.terminated and ep.attempts == 1 and ep.epochs == 5


def test_divergence_terminates_without_restart():
    m = T.Monitor(T.TerminationConfig(divergence=100.0), 3, FakeClock())
    m.batch_started()
    assert m.batch_finished(5.0) is None
    m.batch_started()
    assert m.batch_finished(float("nan")).cause == "diverged"
    clock = FakeClock()

    def nan_attempt(k, monitor):
        monitor.batch_started()
        monitor.batch_finished(float("inf"))
        return k

    ep = T.run_episode(nan_attempt, T.TerminationConfig(), T.EpochBudget(3, 3), clock)
    assert ep.terminated and ep.attempts == 1 and ep.failure.startswith("diverged")


def test_epochs_per_episode_shrink_to_the_first_satisfying_epoch_never_below_three():
    clock = FakeClock()
    cfg = T.TerminationConfig(loss_threshold=1.0, loss_patience=20)

    def losses(first_ok, n=10):  # over the threshold until epoch `first_ok` (1-based)
        return [[2.0 if e + 1 < first_ok else 0.5 for e in range(n)]]

    budget = T.EpochBudget.start(T.TerminationConfig(max_epochs=10, min_epochs=3))
    assert budget == T.EpochBudget(10, 3)
    expected = [(6, 6, 6), (8, 6, 6), (4, 4, 4), (1, 3, 3), (2, 3, 3)]
    for first_ok, epochs, n_epoch in expected:
        trained = budget.epochs
        ep = T.run_episode(scripted(clock, [fast], losses(first_ok)), cfg, budget, clock)
        assert ep.epochs == trained  # the episode trains for the current number of epochs
        assert (ep.budget.epochs, ep.n_epoch) == (epochs, n_epoch), first_ok
        budget = ep.budget
    # An episode that never meets the threshold (without being terminated) keeps the budget.
    ep = T.run_episode(scripted(clock, [fast], [[2.0] * 10]), cfg, T.EpochBudget(7, 3), clock)
    assert ep.budget.epochs == 7 and ep.n_epoch == 7


def test_config_checks():
    with pytest.raises(ValueError, match="max_epochs=2 must be >= min_epochs=3"):
        T.TerminationConfig(max_epochs=2).check()
    with pytest.raises(ValueError, match="batch_time=-1"):
        T.TerminationConfig(batch_time=-1).check()
    c = _config()
    c.evaluate.epochs = 2
    with pytest.raises(ConfigError, match="evaluate.epochs=2 .* >= termination.min_epochs=3"):
        config_lib.validate(c)
    c = _config()
    c.termination.loss_patience = 0
    with pytest.raises(ConfigError, match="termination.loss_patience=0 must be >= 1"):
        config_lib.validate(c)


# ------------------------------------------------------------------------------- reward eq. 2
def test_iranfar_reward_eq2():
    r = config_lib.base_config().reward
    r.update(kind="iranfar", acc_weight=0.7, size_weight=0.3, failure=0.0)
    fn = rewards.make_reward_fn(r)
    mb = 2**20 // 4  # params of 1 MB in float32
    # 0.7 * 60% / 3 epochs - 0.3 * 2 MB = 14 - 0.6
    assert fn({"accuracy": 0.6, "params": 2 * mb, "n_epoch": 3}) == pytest.approx(13.4)
    assert fn({"accuracy": 0.6, "params": 2 * mb, "n_epoch": 6}) == pytest.approx(6.4)
    assert fn({"accuracy": 0.6, "params": 2 * mb}) == pytest.approx(41.4)  # no n_epoch: 1
    assert fn({"accuracy": 0.6, "params": 0, "failure": "batch_time: ..."}) == -1.0
    c = _config()
    c.reward.size_weight = 0.7
    with pytest.raises(ConfigError, match="cA \\+ cS = 1"):
        config_lib.validate(c)


# ------------------------------------------------------------------------------- the evaluator
def _config(variant="vgg_small"):
    c = config_lib.base_config()
    c.spaces = layerwise.layerwise_spaces_config(variant)
    c.search.algorithm = "qlearning"
    c.evaluate.epochs = 3
    c.evaluate.batch_size = 32
    c.reward.kind = "iranfar"
    c.reward.acc_weight = 0.5
    c.reward.size_weight = 0.5
    c.data.max_train = 160  # 5 batches an epoch
    c.data.val_size = 100
    return c


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", val_size=100, seed=0, max_train=160)


def test_layerwise_evaluator_trains_and_terminates(digits):
    c = _config()
    c.termination.loss_threshold = 5.0  # met at once: N_epoch = 3
    c.termination.batch_time = 1.0
    c.termination.batch_patience = 2
    space = make_pipeline_space(c.spaces)
    tokens = space.sample(jax.random.key(0), 1)
    pipeline = space.decode(tokens, 0)
    clock = FakeClock()
    cache = collections.OrderedDict()  # one compilation for the three evaluators
    evaluate = make_layerwise_evaluator(c, digits, space, log=lambda s: None, clock=clock,
                                        compiled=cache)
    [m] = evaluate([pipeline], jax.random.key(1))
    assert m["failure"] is None and m["epochs"] == 3 and m["n_epoch"] == 3 and m["attempts"] == 1
    assert 0.0 <= m["accuracy"] <= 1.0 and m["params"] > 0 and m["flops"] > 0
    assert np.isfinite(m["loss"]) and evaluate.state().epochs == 3
    reward = rewards.make_reward_fn(c.reward)(m)
    assert reward == pytest.approx(50.0 * m["accuracy"] / 3 - 0.5 * m["params"] * 4 / 2**20)
    # A clock on which every batch takes 10 s: the second and third timed batches terminate.
    slow = FakeClock()
    ticking = lambda: slow.__setattr__("now", slow.now + 5.0) or slow.now  # noqa: E731
    evaluate = make_layerwise_evaluator(c, digits, space, log=lambda s: None, clock=ticking,
                                        compiled=cache)
    [m] = evaluate([pipeline], jax.random.key(1))
    assert m["failure"].startswith("batch_time: 2 batches in a row") and m["attempts"] == 1
    assert rewards.make_reward_fn(c.reward)(m) == -1.0
    # An unreachable loss threshold: terminated twice (one restart), then the penalty.
    c.termination.batch_time = 0.0
    c.termination.loss_threshold = 1e-6
    evaluate = make_layerwise_evaluator(c, digits, space, log=lambda s: None, compiled=cache)
    [m] = evaluate([pipeline], jax.random.key(1))
    assert m["failure"].startswith("epoch_loss") and m["attempts"] == 2 and m["epochs"] == 2
    # The trial log keeps the episode's numbers (search._trial: under "extra").
    logged = search._trial(0, 0, pipeline, {a: np.asarray(v)[0] for a, v in tokens.items()},
                           reward, m)
    assert logged["extra"] == {"n_epoch": m["n_epoch"], "epochs": 2, "attempts": 2,
                               "next_epochs": m["next_epochs"], "clamped": list(m["clamped"])}
    assert math.isfinite(m["wall_time"]) and len(cache) == 1


# ------------------------------------------------------------------- the epochs as evaluator state
def test_the_epoch_budget_is_the_evaluators_state_and_replays_from_metrics(digits):
    c = _config("branch_tiny")
    c.evaluate.epochs = 5
    evaluator = make_layerwise_evaluator_with_state(c, digits, make_pipeline_space(
        c.spaces), log=lambda s: None)
    start = evaluator.init(jax.random.key(0))
    assert start == T.EpochBudget(5, 3)
    # An iteration's episodes in order: the last one's next_epochs is the next iteration's
    # number; metrics without next_epochs change nothing.
    metrics = [{"next_epochs": 4}, {"failure": "build_error: ..."}, {"next_epochs": 3},
               {"failure": "build_error: ...", "next_epochs": 3}]
    assert evaluator.replay(start, metrics) == T.EpochBudget(3, 3)
    assert evaluator.replay(start, metrics[:2]) == T.EpochBudget(4, 3)
    assert evaluator.replay(start, []) == start


def _search_config(iterations, checkpoint=True):
    c = _config("branch_tiny")  # the smallest layerwise networks: 8x8 digits, quick compiles
    c.search.iterations = iterations
    c.search.pipelines = 1
    c.search.checkpoint = checkpoint
    c.evaluate.epochs = 4
    c.termination.loss_threshold = 5.0  # met in the first epoch: 4 epochs, then never below 3
    return c


def test_a_resumed_search_keeps_its_epochs_per_episode(tmp_path, capsys):
    """Kill and resume a Q-learning search that trains real networks: the resumed log equals the
    uninterrupted one, whose second episode trained 3 epochs (the first met l_th in its first
    epoch), not 4 again. Both ways a resume rebuilds the number are covered: restored from the
    checkpoint, and replayed from the trial log (a run without checkpoints)."""
    def log(workdir):
        with open(os.path.join(workdir, search.TRIALS)) as f:
            return [{k: v for k, v in json.loads(line).items() if k != "wall_time"}
                    for line in f]

    full, killed, replayed = tmp_path / "full", tmp_path / "killed", tmp_path / "replayed"
    search.run(_search_config(2), str(full), progress=False)
    assert [t["extra"]["epochs"] for t in log(full)] == [4, 3]
    assert [t["extra"]["next_epochs"] for t in log(full)] == [3, 3]

    search.run(_search_config(1), str(killed), progress=False)
    with open(killed / search.TRIALS, "a") as f:
        f.write('{"iteration": 1, "ind')  # killed while logging iteration 1
    shutil.copytree(killed, replayed)
    capsys.readouterr()
    search.run(_search_config(2), str(killed), progress=False)
    assert "restored from the checkpoint of iteration 1" in capsys.readouterr().out
    search.run(_search_config(2, checkpoint=False), str(replayed), progress=False)
    assert log(killed) == log(full)
    assert log(replayed) == log(full)
