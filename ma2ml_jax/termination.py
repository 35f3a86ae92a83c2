"""Early termination of an episode and the automatic epochs per episode (Iranfar et al.).

Pure host-side logic, with the clock injected so that tests drive it with a fake one.

Early termination (Sec. V-E, Fig. 7), two counters of consecutive violations:
  * batch time: a training batch that takes longer than t_th (`batch_time`) violates;
    N_th,t (`batch_patience`) violations in a row terminate the episode with an IMMEDIATE
    penalty (R = -1 in eq. 2);
  * epoch loss: an epoch whose training loss is above l_th (`loss_threshold`) violates;
    N_th,l (`loss_patience`) in a row terminate the attempt, but the penalty is postponed: the
    network restarts once from a new initialization with the same hyper-parameters (a poor start
    may be the initialization's fault) and only a second termination is penalized
    (`loss_retries` = 1 restart).
A batch whose loss is NaN or above `divergence` terminates at once (nothing to wait for).

Epochs per episode (Sec. VI-A): the first episodes train for at most `max_epochs` (10, as
MetaQNN); after each episode, the first epoch whose training loss met l_th becomes the new
number if it is smaller, never below `min_epochs` (3). `EpochBudget` carries that number
from one episode to the next. The reward's accuracy term is A_val / N_epoch, with N_epoch that
episode's number of epochs needed to meet l_th (`Episode.n_epoch`, see `run_episode`).

    budget = EpochBudget.start(config)
    episode = run_episode(train_attempt, config, budget)   # train_attempt(attempt, monitor)
    budget = episode.budget
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

Clock = Callable[[], float]


class TerminationConfig(NamedTuple):
    """Thresholds of Sec. V-E and VI-A (0 or inf turns a check off)."""

    batch_time: float = 0.0  # t_th, seconds per training batch; 0: off
    batch_patience: int = 5  # N_th,t
    loss_threshold: float = math.inf  # l_th on the epoch's mean training loss; inf: off
    loss_patience: int = 2  # N_th,l
    loss_retries: int = 1  # restarts after an epoch-loss termination before the penalty
    max_epochs: int = 10  # epochs of the first episodes
    min_epochs: int = 3  # the automatic number of epochs never goes below this
    divergence: float = math.inf  # a batch loss above this (or NaN) terminates at once
    untimed_batches: int = 1  # first batches of an attempt not timed (they include compilation)

    def check(self) -> TerminationConfig:
        """Raises ValueError naming a bad value; returns self."""
        if self.batch_time < 0:
            raise ValueError(f"batch_time={self.batch_time} must be >= 0 (0: off)")
        for name in ("batch_patience", "loss_patience", "min_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.loss_retries < 0 or self.untimed_batches < 0:
            raise ValueError("loss_retries and untimed_batches must be >= 0")
        if self.max_epochs < self.min_epochs:
            raise ValueError(f"max_epochs={self.max_epochs} must be >= min_epochs="
                             f"{self.min_epochs}")
        if not self.loss_threshold > 0:
            raise ValueError(f"loss_threshold={self.loss_threshold} must be > 0 (inf: off)")
        return self


class Verdict(NamedTuple):
    """Why an attempt was stopped."""

    cause: str  # "batch_time" | "epoch_loss" | "diverged"
    message: str


class Monitor:
    """Watches one training attempt (Fig. 7); the trainer calls it around every batch and epoch.

        monitor.batch_started(); ...train one batch...; if monitor.batch_finished(loss): stop
        if monitor.epoch_finished(epoch_loss): stop

    Attributes:
      max_epochs: epochs this attempt may train (the episode's budget).
      verdict: None, or why the attempt must stop.
      epochs_done: completed epochs.
      first_satisfied: the first epoch (1-based) whose loss met l_th, or None.
    """

    def __init__(self, config: TerminationConfig, max_epochs: int,
                 clock: Clock = time.perf_counter):
        self.config, self.max_epochs, self.clock = config, max_epochs, clock
        self.verdict: Verdict | None = None
        self.epochs_done = 0
        self.first_satisfied: int | None = None
        self.batches = 0
        self.slow_batches = 0  # N_violation,t
        self.bad_epochs = 0  # N_violation,l
        self._start: float | None = None

    @property
    def stopped(self) -> bool:
        return self.verdict is not None

    def batch_started(self) -> None:
        self._start = self.clock()

    def batch_finished(self, loss: float | None = None) -> Verdict | None:
        """Counts a batch (timed from `batch_started`); returns the verdict if it stops."""
        seconds = self.clock() - self._start if self._start is not None else 0.0
        self._start = None
        self.batches += 1
        c = self.config
        if loss is not None and not (math.isfinite(loss) and loss <= c.divergence):
            self.verdict = Verdict("diverged", f"diverged: batch loss {loss:.3g} in batch "
                                   f"{self.batches} of epoch {self.epochs_done + 1}")
            return self.verdict
        if c.batch_time > 0 and self.batches > c.untimed_batches:
            self.slow_batches = self.slow_batches + 1 if seconds > c.batch_time else 0
            if self.slow_batches >= c.batch_patience:
                self.verdict = Verdict(
                    "batch_time", f"batch_time: {self.slow_batches} batches in a row over "
                    f"{c.batch_time:g}s (last {seconds:.3g}s), epoch {self.epochs_done + 1}")
        return self.verdict

    def epoch_finished(self, loss: float) -> Verdict | None:
        """Counts an epoch with its training loss; returns the verdict if it stops."""
        self.epochs_done += 1
        c = self.config
        if not math.isfinite(loss):
            self.verdict = Verdict("diverged", f"diverged: epoch {self.epochs_done} loss {loss}")
            return self.verdict
        if loss <= c.loss_threshold:
            self.bad_epochs = 0
            if self.first_satisfied is None:
                self.first_satisfied = self.epochs_done
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= c.loss_patience:
                self.verdict = Verdict(
                    "epoch_loss", f"epoch_loss: {self.bad_epochs} epochs in a row over "
                    f"{c.loss_threshold:g} (epoch {self.epochs_done}: {loss:.3g})")
        return self.verdict


class EpochBudget(NamedTuple):
    """The number of epochs of the next episode (Sec. VI-A)."""

    epochs: int
    min_epochs: int

    @classmethod
    def start(cls, config: TerminationConfig) -> EpochBudget:
        return cls(config.max_epochs, config.min_epochs)

    def after(self, first_satisfied: int | None) -> EpochBudget:
        """The budget once an episode met l_th first at epoch `first_satisfied` (None: never)."""
        if first_satisfied is None:
            return self
        return self._replace(epochs=max(self.min_epochs, min(self.epochs, first_satisfied)))


class Episode(NamedTuple):
    """The outcome of one episode (one hyper-parameter set trained, with its restart)."""

    terminated: bool  # eq. 2's Termination: the reward is the penalty
    failure: str | None  # the verdict's message when terminated
    attempts: int  # 1, or 2 when an epoch-loss termination was retried
    epochs: int  # epochs trained by the last attempt
    n_epoch: int  # N_epoch, the divisor of A_val (>= min_epochs; 0 when terminated)
    budget: EpochBudget  # the number of epochs for the next episode
    result: Any  # what the last attempt returned (the trained state)
    causes: tuple[str, ...]  # every attempt's verdict cause ("" for a completed one)


def run_episode(attempt: Callable[[int, Monitor], Any], config: TerminationConfig,
                budget: EpochBudget, clock: Clock = time.perf_counter) -> Episode:
    """Runs the attempts of one episode and applies the termination rules.

    Args:
      attempt: `attempt(index, monitor) -> result` trains from a fresh initialization (index 0,
        then 1 for the restart) for at most `monitor.max_epochs` epochs, reporting every batch and
        epoch to `monitor` and returning as soon as `monitor.stopped`.
      config: the thresholds.
      budget: the episode's number of epochs.
      clock: seconds (time.perf_counter; a fake one in tests).

    Returns:
      The `Episode`. A completed one has n_epoch = max(min_epochs, the first epoch whose loss met
      l_th), or the epochs trained if none did; the budget shrinks to that number.
    """
    causes = []
    for index in range(1 + config.loss_retries):
        monitor = Monitor(config, budget.epochs, clock)
        result = attempt(index, monitor)
        v = monitor.verdict
        causes.append(v.cause if v else "")
        if v is None:
            break
        if v.cause == "epoch_loss" and index < config.loss_retries:
            continue  # the postponed penalty: restart with the same hyper-parameters
        return Episode(True, v.message, index + 1, monitor.epochs_done, 0, budget, result,
                       tuple(causes))
    first = monitor.first_satisfied
    n_epoch = max(budget.min_epochs, first if first is not None else monitor.epochs_done)
    return Episode(False, None, index + 1, monitor.epochs_done, n_epoch, budget.after(first),
                   result, tuple(causes))


def from_config(section, *, max_epochs: int, divergence: float = math.inf) -> TerminationConfig:
    """A `TerminationConfig` from `config.termination` (and evaluate.epochs as `max_epochs`)."""
    return TerminationConfig(
        batch_time=float(section.batch_time), batch_patience=int(section.batch_patience),
        loss_threshold=float(section.loss_threshold), loss_patience=int(section.loss_patience),
        loss_retries=int(section.loss_retries), max_epochs=int(max_epochs),
        min_epochs=int(section.min_epochs), divergence=float(divergence),
        untimed_batches=int(section.untimed_batches)).check()
