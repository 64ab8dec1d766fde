"""ZeRO wrapper: canonical round trips, the layout, and the checks on the inner optimizer."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close
from jax.sharding import PartitionSpec as P
from parallel_workers import problem

import scirs2_optim_jax as so
from scirs2_optim_jax import parallel


@functools.cache
def _trained_zero_state(n: int, steps: int = 3):
    step, params, state = problem.initial_step(n, 2)
    for batch in problem.make_batches(steps):
        params, state, _ = step(params, state, batch)
    return step, params, state


def test_canonical_round_trip_between_8_4_and_1_devices() -> None:
    _, params, state8 = _trained_zero_state(8)
    canonical = parallel.zero_state_to_canonical(state8, params)
    # Canonical = the layout of tx.init(params): same structure, NamedTuples, logical shapes.
    reference = problem.make_tx("clip_adamw", None, 10).init(params)
    assert jax.tree.structure(canonical) == jax.tree.structure(reference)
    adam = canonical[1][0]
    assert type(adam).__name__ == "ScaleByAdamState"
    for got, want in zip(jax.tree.leaves(canonical), jax.tree.leaves(reference), strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
    assert int(adam.count) == 3 and float(jnp.max(adam.nu["head"]["kernel"][...])) > 0

    for n in (4, 1, 8):
        mesh = parallel.make_data_mesh(n)
        sharded = parallel.zero_state_from_canonical(canonical, params, mesh)
        mu = sharded[1][0].mu["hidden"][0]["kernel"][...]
        chunk = parallel.zero_chunk_size(13 * 29, n)
        assert mu.shape == (n * chunk,)
        assert {s.data.shape for s in mu.addressable_shards} == {(chunk,)}
        # Padding is zeros, the data is the canonical moment.
        np.testing.assert_array_equal(np.asarray(mu)[13 * 29 :], 0.0)
        back = parallel.zero_state_to_canonical(sharded, params)
        assert_trees_close(back, canonical, rtol=0, atol=0)


def test_state_restored_on_4_devices_continues_like_the_8_device_run() -> None:
    step8, params8, state8 = _trained_zero_state(8)
    canonical = parallel.zero_state_to_canonical(state8, params8)
    step4 = problem.initial_step(4, 2)[0]
    params4 = parallel.put_on_mesh(jax.tree.map(np.asarray, params8), step4.mesh, P())
    state4 = parallel.zero_state_from_canonical(canonical, params4, step4.mesh)
    batch = problem.make_batches(4)[3]
    params4, _, _ = step4(params4, state4, batch)
    params8, _, _ = step8(params8, state8, batch)
    assert_trees_close(params4, params8, rtol=1e-5, atol=1e-6)


def test_canonical_errors_name_the_path() -> None:
    params = {"w": jnp.ones((3, 3))}
    state = so.adam(0.1).init(params)
    mesh = parallel.make_data_mesh(2)
    bad = (state[0]._replace(mu={"w": jnp.ones(9)}), *state[1:])
    with pytest.raises(ValueError, match=r"\[0\]\.mu\['w'\].*\(9,\).*\(3, 3\)"):
        parallel.zero_state_from_canonical(bad, params, mesh)
    short = (state[0]._replace(mu={"w": jnp.ones(4)}), *state[1:])
    with pytest.raises(ValueError, match=r"\.mu\['w'\] has shape \(4,\)"):
        parallel.zero_state_to_canonical(short, params)
    with pytest.raises(ValueError, match="axis_name 'model' is not an axis"):
        parallel.zero_state_from_canonical(state, params, mesh, axis_name="model")
    with pytest.raises(ValueError, match="lone scalar"):
        parallel.zero_state_from_canonical(so.adam(0.1).init(jnp.ones([])), jnp.ones([]), mesh)


def test_single_array_params_round_trip() -> None:
    params = jnp.arange(10.0)
    tx = so.adam(0.1)
    state = tx.update(params, tx.init(params), params)[1]
    sharded = parallel.zero_state_from_canonical(state, params, parallel.make_data_mesh(8))
    assert sharded[0].mu.shape == (16,) and sharded[0].count.shape == ()
    assert_trees_close(parallel.zero_state_to_canonical(sharded, params), state, rtol=0)


def _zero_step(tx: optax.GradientTransformation, stage: int, check: bool = True):
    mesh = parallel.make_data_mesh(8)
    params = {"a": jnp.linspace(-1.0, 1.0, 13), "b": jnp.ones((3, 5))}
    grads = jax.tree.map(lambda p: jnp.stack([p * (i + 1) for i in range(8)]), params)
    ztx = parallel.zero(tx, "data", stage, check=check)

    def local(params, grads):
        grads = jax.tree.map(lambda g: g[0], grads)
        updates, _ = ztx.update(grads, ztx.init(params), params)
        return updates

    fn = jax.jit(
        jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data")), out_specs=P(), check_vma=False)
    )
    with jax.set_mesh(mesh):
        updates = fn(
            parallel.put_on_mesh(params, mesh, P()), parallel.put_on_mesh(grads, mesh, P("data"))
        )
    mean = jax.tree.map(lambda g: g.mean(0), grads)
    return updates, params, mean


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_update_equals_the_plain_update_of_the_mean_gradient(stage: int) -> None:
    tx = optax.chain(so.clip_by_global_norm(1.0, axis_name="data"), so.lamb(0.1, axis_name="data"))
    updates, params, mean = _zero_step(tx, stage)
    plain = optax.chain(so.clip_by_global_norm(1.0), so.lamb(0.1))
    expected, _ = plain.update(mean, plain.init(params), params)
    assert_trees_close(updates, expected, rtol=1e-6)


ALIASES = {
    "adam": lambda axis: so.adam(0.1),
    "adamw": lambda axis: so.adamw(0.1, weight_decay=0.1),
    "lamb": lambda axis: so.lamb(0.1, weight_decay=0.1, axis_name=axis),
    "lars": lambda axis: so.lars(0.1, weight_decay=0.1, axis_name=axis),
    "sgd": lambda axis: so.sgd(0.1, momentum=0.9, nesterov=True),
    "lion": lambda axis: so.lion(0.01),
    "rmsprop": lambda axis: so.rmsprop(0.1, centered=True, momentum=0.5),
    "radam": lambda axis: so.radam(0.1),
    "adagrad": lambda axis: so.adagrad(0.1),
}


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_zero_accepts_every_optimizer_of_the_package(name: str) -> None:
    updates, params, mean = _zero_step(ALIASES[name]("data"), 2)
    plain = ALIASES[name](None)
    expected, _ = plain.update(mean, plain.init(params), params)
    assert_trees_close(updates, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("tx", "match"),
    [
        (so.clip_by_global_norm(1.0), "never summed over 'data'"),
        (so.lamb(0.1), "never summed over 'data'"),
        (so.lars(0.1), "never summed over 'data'"),
        (so.clip_by_block_rms(0.1, axis_name="data"), "does not depend on the sharded"),
        (so.lamb(0.1, axis_name="model"), "mesh axis that is not bound.*axis_name='data'"),
    ],
    ids=["clip_no_axis", "lamb_no_axis", "lars_no_axis", "block_rms", "other_axis"],
)
def test_zero_rejects_optimizers_that_reduce_per_shard(tx, match: str) -> None:
    with pytest.raises(parallel.ShardReductionError, match=match):
        _zero_step(tx, 2)


def test_optax_clip_is_rejected_and_wrong_without_the_check() -> None:
    with jax.numpy_dtype_promotion("standard"):
        with pytest.raises(parallel.ShardReductionError, match="axis_name='data'"):
            _zero_step(optax.clip_by_global_norm(0.5), 1)
        unchecked, _, mean = _zero_step(optax.clip_by_global_norm(0.5), 1, check=False)
    expected, _ = so.clip_by_global_norm(0.5).update(mean, optax.EmptyState())
    # Per-shard clipping gives a different answer: the check guards against real errors.
    assert not np.allclose(unchecked["b"], expected["b"], rtol=1e-3)


def test_zero_argument_validation() -> None:
    with pytest.raises(ValueError, match="stage must be 1 or 2, got 3"):
        parallel.zero(so.adam(0.1), stage=3)
    with pytest.raises(TypeError, match=r"tx must be an optax\.GradientTransformation"):
        parallel.zero(lambda g: g)
    with pytest.raises(TypeError, match="axis_name must be a non-empty string"):
        parallel.zero(so.adam(0.1), axis_name="")
    with pytest.raises(ValueError, match="num_shards must be an integer >= 1, got 0"):
        parallel.zero_chunk_size(5, 0)


def test_zero_state_specs_follow_the_state_structure() -> None:
    tx = problem.make_tx("clip_adamw", "data", 10)
    _, params = problem.make_model()
    specs = parallel.zero_state_specs(tx, params, 8)
    assert jax.tree.structure(specs, is_leaf=lambda x: isinstance(x, P)) == jax.tree.structure(
        tx.init(params)
    )
    adam = specs[1][0]
    assert adam.count == P() and all(s == P("data") for s in jax.tree.leaves(adam.mu))
