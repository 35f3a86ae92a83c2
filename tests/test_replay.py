"""The functional replay buffer: a ring of fixed capacity over a pytree,
jitted and donated add, uniform sampling over all or the most recent items, orbax round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ma2ml_jax.agents.ma2ml import MA2MLConfig, make_ma2ml
from ma2ml_jax.agents.replay import make_replay
from ma2ml_jax.bench.objectives import make_objective


def _items(start, num):
    ids = jnp.arange(start, start + num, dtype=jnp.int32)
    return {"id": ids, "pair": jnp.stack([ids, -ids], 1), "reward": ids.astype(jnp.float32) / 10}


def test_add_wraps_around_and_keeps_the_newest():
    replay = make_replay(5)
    state = replay.init(jax.tree.map(lambda x: x[0], _items(0, 1)))
    state = replay.add(state, _items(0, 3))
    assert int(state.size) == 3 and int(state.position) == 3
    state = replay.add(state, _items(3, 4))  # 7 items into 5 slots: 0 and 1 are overwritten
    assert int(state.size) == 5 and int(state.position) == 2
    assert sorted(np.asarray(state.data["id"]).tolist()) == [2, 3, 4, 5, 6]
    np.testing.assert_array_equal(state.data["pair"][:, 1], -state.data["id"])


def test_add_donates_the_old_state():
    replay = make_replay(4)
    state = replay.init({"x": jnp.zeros((), jnp.float32)})
    old = state.data["x"]
    state = replay.add(state, {"x": jnp.ones((2,), jnp.float32)})
    if jax.devices()[0].platform != "cpu":  # CPU ignores donation; elsewhere the buffer is reused
        assert old.is_deleted()
    np.testing.assert_array_equal(state.data["x"], [1, 1, 0, 0])


def test_sample_is_uniform_over_all_or_the_recent_window():
    replay = make_replay(8)
    state = replay.init(jax.tree.map(lambda x: x[0], _items(0, 1)))
    state = replay.add(state, _items(0, 6))
    state = replay.add(state, _items(6, 5))  # holds ids 3..10, newest last
    draws = np.asarray(jax.jit(lambda s, k: replay.sample(s, k, 16000))(
        state, jax.random.key(0))["id"])
    counts = np.bincount(draws, minlength=11)
    assert counts[:3].sum() == 0  # overwritten items are never drawn
    np.testing.assert_allclose(counts[3:] / len(draws), 1 / 8, atol=0.01)
    recent = np.asarray(replay.sample(state, jax.random.key(1), 3000, recent=jnp.int32(3))["id"])
    assert set(recent.tolist()) == {8, 9, 10}
    # Items travel together: a sampled item's fields belong to the same stored item.
    both = replay.sample(state, jax.random.key(2), 50)
    np.testing.assert_array_equal(both["pair"][:, 0], both["id"])
    np.testing.assert_allclose(both["reward"], both["id"] / 10)


def test_partly_filled_buffer_samples_only_what_was_added():
    replay = make_replay(100)
    state = replay.add(replay.init({"id": jnp.int32(0)}), {"id": jnp.arange(1, 4)})
    draws = np.asarray(replay.sample(state, jax.random.key(0), 500)["id"])
    assert set(draws.tolist()) == {1, 2, 3}


def test_add_with_a_count_writes_only_the_first_rows():
    replay = make_replay(4)
    state = replay.init({"id": jnp.int32(0)})
    state = replay.add(state, {"id": jnp.arange(1, 4)})
    state = replay.add(state, {"id": jnp.arange(10, 14)}, jnp.int32(2))  # rows 12, 13: padding
    assert int(state.size) == 4 and int(state.position) == 1
    assert sorted(np.asarray(state.data["id"]).tolist()) == [2, 3, 10, 11]


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="capacity"):
        make_replay(0)
    replay = make_replay(3)
    state = replay.init({"id": jnp.int32(0)})
    with pytest.raises(ValueError, match="does not fit"):
        replay.add(state, {"id": jnp.arange(4)})


def test_searcher_state_with_its_buffer_survives_an_orbax_round_trip(tmp_path):
    objective = make_objective({"aug": (3, 4), "nas": (2, 3)}, seed=1)
    searcher = make_ma2ml(objective.space, 4, MA2MLConfig(critic_batch=8, actor_batch=4,
                                                          updates=1, replay_capacity=16))
    state = searcher.init(jax.random.key(0))
    actions, state = searcher.ask(state, jax.random.key(1))
    state, _ = searcher.tell(state, actions, objective.true_reward(actions))
    with ocp.StandardCheckpointer() as ckpt:
        path = tmp_path / "state"
        saved = jax.tree.map(lambda x: jax.random.key_data(x)
                             if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, state)
        ckpt.save(path, saved)
        ckpt.wait_until_finished()
        restored = ckpt.restore(path, saved)
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(restored.replay.size) == 4
