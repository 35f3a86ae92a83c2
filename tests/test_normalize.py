"""Running reward statistics and reward clean-up shared by MA2ML and MA2ML-Lite."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from ma2ml_jax.agents.normalize import (
    RunningStats,
    finite_rewards,
    normal_scores,
    pad_batch,
    standardize,
    update_stats,
)


def test_batched_updates_equal_the_statistics_of_everything_seen():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, n).astype(np.float32) for n in (1, 7, 30, 2)]
    stats = RunningStats.zeros()
    for b in batches:
        stats = update_stats(stats, jnp.asarray(b))
    everything = np.concatenate(batches)
    assert float(stats.count) == len(everything)
    assert float(stats.mean) == pytest.approx(everything.mean(), rel=1e-5)
    assert float(stats.std) == pytest.approx(everything.std(), rel=1e-4)
    z = standardize(stats, jnp.asarray(everything))
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-4)


def test_only_valid_entries_are_counted():
    values = jnp.asarray([1.0, 2.0, 3.0, 100.0, -50.0])
    valid = jnp.asarray([True, True, True, False, False])
    masked = update_stats(update_stats(RunningStats.zeros(), jnp.asarray([5.0])), values, valid)
    plain = update_stats(update_stats(RunningStats.zeros(), jnp.asarray([5.0])), values[:3])
    np.testing.assert_allclose(np.asarray(masked), np.asarray(plain), rtol=1e-6)
    empty = update_stats(plain, values, jnp.zeros(5, bool))  # nothing valid: unchanged
    np.testing.assert_allclose(np.asarray(empty), np.asarray(plain), rtol=1e-6)


def test_non_finite_rewards_become_the_worst_valid_one():
    r = jnp.asarray([0.5, jnp.nan, 0.2, jnp.inf, -9.0])
    np.testing.assert_allclose(finite_rewards(r), [0.5, -9.0, 0.2, -9.0, -9.0])
    valid = jnp.asarray([True, True, True, True, False])  # -9 is padding: not a reward
    np.testing.assert_allclose(finite_rewards(r, valid)[:4], [0.5, 0.2, 0.2, 0.2])
    np.testing.assert_allclose(finite_rewards(jnp.asarray([jnp.nan, jnp.nan])), [0.0, 0.0])


def test_pad_batch_pads_to_a_multiple_of_p():
    actions = {"aug": jnp.ones((5, 2), jnp.int32)}
    padded, rewards, valid = pad_batch(actions, jnp.arange(5.0), 4)
    assert padded["aug"].shape == (8, 2) and rewards.shape == (8,)
    assert valid.tolist() == [True] * 5 + [False] * 3
    assert pad_batch(actions, jnp.arange(5.0), 8)[0]["aug"].shape == (8, 2)


def test_normal_scores_are_the_normal_quantiles_of_mid_ranks():
    rng = np.random.default_rng(0)
    values = np.round(rng.normal(size=50), 1)  # ties
    values[:5] = -1000.0  # failures far below: no effect beyond their ranks
    valid = np.ones(64, bool)
    valid[50:] = False
    padded = np.concatenate([values, np.full(14, 5.0)])  # unused slots: ignored
    got = np.asarray(normal_scores(jnp.asarray(padded), jnp.asarray(valid)))
    want = scipy.stats.norm.ppf((scipy.stats.rankdata(values) - 0.5) / 50)
    np.testing.assert_allclose(got[:50], want, atol=1e-5)
    assert (got[50:] == 0).all()
    # One valid value: the median score.
    one = normal_scores(jnp.asarray([3.0, 1.0]), jnp.asarray([True, False]))
    assert np.asarray(one).tolist() == [0.0, 0.0]
