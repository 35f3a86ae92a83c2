"""One-decision neighbourhoods: the default numbering and one-level steps on ordered decisions,
checked against brute-force enumeration."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ma2ml_jax.agents import screening
from ma2ml_jax.agents.neighbourhood import FlatSpace
from ma2ml_jax.spaces import Decision, PipelineSpace, Space

# Ordered decisions of 5, 3 and 2 levels, unordered ones of 4 and 3 values; 360 pipelines.
MIXED = PipelineSpace({
    "a": Space("a", [Decision("lr", (0.3, 0.1, 0.03, 0.01, 0.003), ordered=True),
                     Decision("act", ("relu", "gelu", "silu", "tanh"))]),
    "b": Space("b", [Decision("depth", (2, 4, 8), ordered=True),
                     Decision("ema", (False, True)),
                     Decision("flag", (0, 1), ordered=True)]),
})
SIZES = (5, 4, 3, 2, 2)
STEPS = (True, False, True, False, False)  # ordered with 3 or more levels
UNORDERED = PipelineSpace({a: Space(a, [Decision(d.name, d.choices) for d in MIXED[a].decisions])
                           for a in MIXED.agents})


def _one_level_neighbours(x):
    """Every y one decision from x: one level up or down on a step decision, any other value on
    the rest (a two-level ordered decision's other level is a one-level step)."""
    out = set()
    for d, (size, step) in enumerate(zip(SIZES, STEPS)):
        values = [x[d] - 1, x[d] + 1] if step else range(size)
        for v in values:
            if 0 <= v < size and v != x[d]:
                out.add(tuple(x[:d]) + (v,) + tuple(x[d + 1:]))
    return out


def test_flat_space_reports_the_ordered_decisions_and_the_steps():
    np.testing.assert_array_equal(FlatSpace(MIXED).ordered, [True, False, True, False, True])
    np.testing.assert_array_equal(FlatSpace(MIXED, ordered_steps=True).steps, STEPS)
    assert not FlatSpace(MIXED).steps.any()
    assert FlatSpace(MIXED, ordered_steps=True).num_neighbours == 2 + 3 + 2 + 1 + 1


def test_one_level_steps_enumerate_the_adjacent_levels_and_round_trip():
    flat = FlatSpace(MIXED, ordered_steps=True)
    k_all = flat.num_neighbours
    every = jax.jit(jax.vmap(lambda x: jax.vmap(lambda k: flat.neighbour(x, k))(
        jnp.arange(k_all))))
    index = jax.jit(jax.vmap(jax.vmap(flat.neighbour_index, (None, 0)), (0, 0)))
    xs = np.array(list(itertools.product(*[range(s) for s in SIZES])), np.int32)
    ys = np.asarray(every(xs))  # [360, K, D]
    moves = np.asarray(jax.vmap(flat.moves)(xs))
    got = np.asarray(index(xs, ys))
    for x, y, move, k in zip(xs, ys, moves, got):
        assert {tuple(r) for r in y[move]} == _one_level_neighbours(tuple(x)), x
        assert len({tuple(r) for r in y[move]}) == move.sum()  # no neighbour twice
        assert (y[~move] == x).all()  # a step past an end level leaves x
        assert (k[move] == np.flatnonzero(move)).all()
        assert (k[~move] == k_all).all()


def test_a_jump_of_two_levels_is_not_a_neighbour_with_steps():
    x = jnp.asarray([2, 0, 1, 0, 0])
    steps = FlatSpace(MIXED, ordered_steps=True)
    assert int(steps.neighbour_index(x, x.at[0].set(4))) == steps.num_neighbours
    assert int(steps.neighbour_index(x, x.at[0].set(3))) == 1  # one level up: slot 1
    assert int(steps.neighbour_index(x, x.at[1].set(3))) == 2 + 2  # unordered: offset 3
    default = FlatSpace(MIXED)
    assert int(default.neighbour_index(x, x.at[0].set(4))) == 1  # offset 2 of decision 0


def test_the_default_numbering_ignores_order():
    ordered, plain = FlatSpace(MIXED), FlatSpace(UNORDERED)
    assert ordered.num_neighbours == plain.num_neighbours == sum(s - 1 for s in SIZES)
    x = jnp.asarray([4, 1, 2, 1, 0])
    for k in range(plain.num_neighbours):
        np.testing.assert_array_equal(ordered.neighbour(x, k), plain.neighbour(x, k))
    assert bool(ordered.moves(x).all())


@pytest.mark.parametrize("ordered_steps", [False, True])
def test_screening_neighbours_follow_the_flat_numbering(ordered_steps):
    parent = {"a": jnp.asarray([[0, 2]]), "b": jnp.asarray([[1, 1, 0]])}
    nb = screening.neighbours(MIXED, parent, ordered_steps)
    rows = np.concatenate([np.asarray(nb[a]) for a in MIXED.agents], 1)
    flat = FlatSpace(MIXED, ordered_steps)
    x = flat.flatten(parent)[0]
    expect = np.stack([flat.neighbour(x, k) for k in range(flat.num_neighbours)])
    np.testing.assert_array_equal(rows, expect)
    if ordered_steps:
        assert {tuple(r) for r in rows if (r != x).any()} == _one_level_neighbours(
            tuple(np.asarray(x)))
