"""Guards: bad steps are skipped and counted inside jit, and the fallback breaker switches at
exactly the specified steps. NaN/Inf gradients are injected at chosen steps; parameters and
optimizer state must never become non-finite."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import assert_trees_close, count_compilations, random_tree
from jax.sharding import PartitionSpec as P

import scirs2_optim_jax as so
from scirs2_optim_jax.resilience import (
    FallbackState,
    SkipNonFiniteState,
    count_nonfinite,
    fallback_on_failure,
    guard_metrics,
    skip_non_finite,
)

PRIMARY_LR, FALLBACK_LR = 1.0, 0.1


def _grads(step: int, bad: dict[int, float], shape: tuple[int, ...] = (3,)) -> dict:
    """Ones, except at a bad step where one element is ``bad[step]`` (NaN, Inf or large)."""
    g = np.ones(shape, np.float32)
    if step in bad:
        g.reshape(-1)[1] = bad[step]
    return {"w": jnp.asarray(g)}


def _run(tx: optax.GradientTransformation, bad: dict[int, float], steps: int) -> tuple[list, Any]:
    """Runs ``steps`` jitted steps from zeros; returns the params after every step and the state."""
    params = {"w": jnp.zeros(3, jnp.float32)}
    state = tx.init(params)

    @jax.jit
    def step(params: dict, state: Any, grads: dict) -> tuple[dict, Any]:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    history = []
    for i in range(steps):
        params, state = step(params, state, _grads(i, bad))
        history.append(params)
    return history, state


def _moves(history: list) -> list[str]:
    """What each step did, read from the parameter change: P(rimary), F(allback), S(kipped)."""
    kinds = []
    previous = np.zeros(3, np.float32)
    for params in history:
        delta = np.asarray(params["w"]) - previous
        previous = np.asarray(params["w"])
        assert np.all(delta == delta[0]), "every element must move alike"
        kind = {-PRIMARY_LR: "P", -FALLBACK_LR: "F", 0.0: "S"}
        matches = [k for value, k in kind.items() if np.isclose(delta[0], value, atol=1e-6)]
        assert len(matches) == 1, f"unexpected step {delta}"
        kinds.append(matches[0])
    return kinds


def _assert_finite(tree: Any) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = np.asarray(leaf)
        if np.issubdtype(array.dtype, np.inexact):
            assert np.all(np.isfinite(array)), jax.tree_util.keystr(path)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_skip_non_finite_skips_exactly_the_bad_steps_and_counts_them(bad_value: float) -> None:
    bad = {2: bad_value, 3: bad_value, 7: bad_value}
    tx = skip_non_finite(so.sgd(PRIMARY_LR))
    history, state = _run(tx, bad, steps=10)
    assert _moves(history) == ["P", "P", "S", "S", "P", "P", "P", "S", "P", "P"]
    assert isinstance(state, SkipNonFiniteState)
    assert int(state.skipped_steps) == 3
    assert int(state.nonfinite_steps) == 3
    assert int(state.exploded_steps) == 0
    assert int(state.consecutive_bad) == 0
    for params in history:
        _assert_finite(params)


def test_skip_non_finite_keeps_adam_state_finite_and_unchanged_on_a_bad_step() -> None:
    tx = skip_non_finite(so.adamw(1e-2, weight_decay=1e-2))
    params = random_tree(jax.random.key(0))
    state = tx.init(params)
    good = jax.tree.map(jnp.ones_like, params)
    bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.inf), good)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    _, state = step(good, state, params)
    updates, after = step(bad, state, params)
    assert_trees_close(updates, jax.tree.map(jnp.zeros_like, params), atol=0.0)
    assert_trees_close(after.inner_state, state.inner_state, rtol=0.0, atol=0.0)
    _assert_finite(after)
    assert int(after.skipped_steps) == 1 and int(after.consecutive_bad) == 1


def test_skip_non_finite_catches_updates_that_overflow_from_finite_gradients() -> None:
    # Finite gradients, but the inner transform scales them past float32's range.
    tx = skip_non_finite(so.scale(1e30))
    params = {"w": jnp.zeros(2, jnp.float32)}
    updates, state = tx.update({"w": jnp.array([1e10, 1.0], jnp.float32)}, tx.init(params))
    np.testing.assert_array_equal(updates["w"], [0.0, 0.0])
    assert int(state.nonfinite_steps) == 1


def test_gradient_explosion_is_detected_and_skipped() -> None:
    bad = {1: 1e4, 4: np.nan}
    tx = skip_non_finite(so.sgd(PRIMARY_LR), max_grad_norm=100.0)
    history, state = _run(tx, bad, steps=6)
    assert _moves(history) == ["P", "S", "P", "P", "S", "P"]
    assert int(state.exploded_steps) == 1
    assert int(state.nonfinite_steps) == 1
    assert int(state.skipped_steps) == 2


def test_fallback_switches_exactly_at_the_specified_steps_and_back() -> None:
    # switch_after=3: the breaker opens after the 3rd consecutive bad step is skipped.
    # switch_back_after=4: it closes after 4 consecutive good steps on the fallback.
    nan, inf = np.nan, np.inf
    bad = {2: nan, 5: nan, 6: inf, 7: nan, 9: inf, 15: nan, 16: nan, 17: -inf}
    tx = fallback_on_failure(
        so.sgd(PRIMARY_LR), so.sgd(FALLBACK_LR), switch_after=3, switch_back_after=4
    )
    history, state = _run(tx, bad, steps=22)
    expected = (
        "PP"  # 0-1 primary
        "S"  # 2 bad, a single one: no switch
        "PP"  # 3-4 primary again
        "SSS"  # 5-7 three bad in a row: open after step 7
        "F"  # 8 fallback, 1 good
        "S"  # 9 bad on the fallback: the good count starts again
        "FFFF"  # 10-13 four good on the fallback: close after step 13
        "P"  # 14 primary
        "SSS"  # 15-17 open again after step 17
        "FFFF"  # 18-21 fallback
    )
    assert "".join(_moves(history)) == expected
    assert isinstance(state, FallbackState)
    assert int(state.switches) == 4  # open, close, open, and close after step 21
    assert not bool(state.using_fallback)
    assert int(state.skipped_steps) == len(bad)
    for params in history:
        _assert_finite(params)


def test_fallback_without_switch_back_stays_on_the_fallback() -> None:
    bad = {0: np.nan, 1: np.nan}
    tx = fallback_on_failure(so.sgd(PRIMARY_LR), so.sgd(FALLBACK_LR), switch_after=2)
    history, state = _run(tx, bad, steps=30)
    assert "".join(_moves(history)) == "SS" + "F" * 28
    assert bool(state.using_fallback) and int(state.switches) == 1


def test_fallback_resumes_primary_state_from_before_its_failures() -> None:
    # Momentum in the primary: its trace after the round trip is the one from before the
    # failures, advanced only by the primary's own good steps.
    bad = {2: np.nan}
    primary = so.sgd(PRIMARY_LR, momentum=0.9)
    tx = fallback_on_failure(primary, so.sgd(FALLBACK_LR), switch_after=1, switch_back_after=1)
    _, state = _run(tx, bad, steps=5)  # P P S F P
    reference = primary.init({"w": jnp.zeros(3)})
    for i in range(3):  # the primary's three good steps, all with ones
        _, reference = primary.update(_grads(i, {}), reference)
    assert_trees_close(state.primary_state, reference)
    assert int(state.switches) == 2


def test_breaker_compiles_once_across_good_bad_and_switched_steps() -> None:
    bad = {1: np.nan, 2: np.nan, 6: np.inf}
    tx = fallback_on_failure(
        so.adam(1e-3), so.sgd(1e-4), switch_after=2, switch_back_after=2, max_grad_norm=10.0
    )
    with count_compilations() as compiles:
        _run(tx, bad, steps=10)
    assert len(compiles) == 1


def test_guard_inside_flax_nnx_optimizer_keeps_params_finite() -> None:
    class Model(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.dense = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.dense(x)

    model = Model(nnx.Rngs(0))
    tx = fallback_on_failure(so.adamw(1e-2), so.sgd(1e-3), switch_after=2)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model: Model, optimizer: nnx.Optimizer, x: jax.Array) -> dict:
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)
        return guard_metrics(optimizer.opt_state)

    clean = jnp.ones((8, 4), jnp.float32)
    poisoned = clean.at[0, 0].set(jnp.nan)
    inputs = [clean, poisoned, poisoned, clean, clean]
    for x in inputs:
        metrics = train_step(model, optimizer, x)
        _assert_finite(nnx.state(model, nnx.Param))
    assert int(metrics["skipped_steps"]) == 2
    assert int(metrics["using_fallback"]) == 1
    assert int(metrics["switches"]) == 1


def test_guard_composes_inside_optax_chain_with_extra_args() -> None:
    tx = optax.chain(so.clip_by_global_norm(1.0), skip_non_finite(so.sgd(PRIMARY_LR)))
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(_grads(0, {0: np.nan}), state, params)
    np.testing.assert_array_equal(updates["w"], np.zeros(3))
    assert int(guard_metrics(state)["skipped_steps"]) == 1
    assert guard_metrics(tx.init(params))["skipped_steps"].dtype == jnp.int32
    assert guard_metrics(so.sgd(0.1).init(params)) == {}


def test_sharded_breaker_decides_alike_on_every_device_and_matches_unsharded() -> None:
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    spec = {"w": P("data")}

    def make(axis: str | None) -> optax.GradientTransformation:
        return fallback_on_failure(
            so.adam(0.1),
            so.sgd(0.01),
            switch_after=2,
            switch_back_after=2,
            max_grad_norm=50.0,
            axis_name=axis,
        )

    def grads_at(i: int) -> dict:
        g = jnp.linspace(-1.0, 1.0, 16, dtype=jnp.float32)
        if i in (1, 2):  # a NaN on one device only: every device must skip
            g = g.at[13].set(jnp.nan)
        if i == 5:  # norm sqrt(16) * 20 = 80 > 50 in total, but 20 * sqrt(2) on each device
            g = jnp.full((16,), 20.0, jnp.float32)
        return {"w": g}

    unsharded, sharded = make(None), make("data")
    params = {"w": jnp.zeros(16, jnp.float32)}
    state_spec = jax.tree.map(lambda x: P("data") if x.ndim else P(), unsharded.init(params))

    def local(p: dict, s: Any, g: dict) -> tuple[dict, Any]:
        updates, s = sharded.update(g, s, p)
        return optax.apply_updates(p, updates), s

    sharded_step = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(spec, state_spec, spec),
            out_specs=(spec, state_spec),
        )
    )
    plain_step = jax.jit(lambda p, s, g: _apply(unsharded, p, s, g))

    p_plain, s_plain = params, unsharded.init(params)
    put = jax.sharding.NamedSharding(mesh, P("data"))
    p_shard = {"w": jax.device_put(params["w"], put)}
    s_shard = jax.tree.map(
        lambda x, sp: jax.device_put(x, jax.sharding.NamedSharding(mesh, sp)),
        unsharded.init(params),
        state_spec,
    )
    for i in range(8):
        g = grads_at(i)
        p_plain, s_plain = plain_step(p_plain, s_plain, g)
        p_shard, s_shard = sharded_step(p_shard, s_shard, {"w": jax.device_put(g["w"], put)})
        assert_trees_close(p_shard, p_plain, rtol=1e-6)
        assert bool(s_shard.using_fallback) == bool(s_plain.using_fallback)
    assert int(s_shard.nonfinite_steps) == int(s_plain.nonfinite_steps) == 2
    assert int(s_shard.exploded_steps) == int(s_plain.exploded_steps) == 1
    assert int(s_shard.switches) == int(s_plain.switches) == 2
    _assert_finite(p_shard)


def _apply(tx: optax.GradientTransformation, p: dict, s: Any, g: dict) -> tuple[dict, Any]:
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s


def test_count_nonfinite_ignores_integer_leaves_and_psums_when_sharded() -> None:
    tree = {"f": jnp.array([jnp.nan, 1.0, jnp.inf]), "i": jnp.array([1, 2], jnp.int32)}
    assert int(count_nonfinite(tree)) == 2
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    x = jnp.ones(16).at[jnp.array([0, 5, 15])].set(jnp.nan)
    x = jax.device_put(x, jax.sharding.NamedSharding(mesh, P("data")))
    counted = jax.jit(
        jax.shard_map(
            lambda x: count_nonfinite(x, "data"), mesh=mesh, in_specs=P("data"), out_specs=P()
        )
    )(x)
    assert int(counted) == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"switch_after": 0}, ValueError, "switch_after must be an integer >= 1, got 0"),
        ({"switch_after": 2.5}, TypeError, "switch_after must be an integer, got 2.5"),
        ({"switch_after": True}, TypeError, "switch_after"),
        ({"switch_after": 1, "switch_back_after": 0}, ValueError, "switch_back_after"),
        ({"switch_after": 1, "max_grad_norm": -1.0}, ValueError, "max_grad_norm"),
        ({"switch_after": 1, "max_grad_norm": float("nan")}, ValueError, "max_grad_norm"),
    ],
)
def test_fallback_rejects_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=f"fallback_on_failure: {match}"):
        fallback_on_failure(so.sgd(0.1), so.sgd(0.01), **kwargs)


def test_guards_reject_non_transforms() -> None:
    with pytest.raises(TypeError, match="skip_non_finite: inner must be an optax"):
        skip_non_finite(lambda g: g)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fallback_on_failure: fallback must be an optax"):
        fallback_on_failure(so.sgd(0.1), "sgd", switch_after=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="skip_non_finite: max_grad_norm must be"):
        skip_non_finite(so.sgd(0.1), max_grad_norm=0.0)
