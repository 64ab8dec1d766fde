"""Whole-tree and whole-leaf reductions stay correct when leaves are split across devices.

Each leaf is split along its leading axis over the 8 fake CPU devices of a mesh axis
named ``data``; the transform runs inside ``jax.shard_map`` with ``axis_name="data"``
and must give the same result as the unsharded computation. optax's clipping, which has
no axis name, clips each shard by its own local norm there: shown for contrast.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close
from jax.sharding import PartitionSpec as P

import scirs2_optim_jax as so

AXIS = "data"


def _mesh(axis_type: jax.sharding.AxisType = jax.sharding.AxisType.Explicit) -> jax.sharding.Mesh:
    assert jax.device_count() == 8, "tests need XLA_FLAGS=--xla_force_host_platform_device_count=8"
    return jax.make_mesh((8,), (AXIS,), axis_types=(axis_type,))


def _put(tree: dict, mesh: jax.sharding.Mesh, spec: dict) -> dict:
    return jax.tree.map(
        lambda x, s: jax.device_put(x, jax.sharding.NamedSharding(mesh, s)), tree, spec
    )


def _tree(seed: int, scale: float = 1.0) -> dict:
    keys = jax.random.split(jax.random.key(seed), 4)
    return {
        "vector": scale * jax.random.normal(keys[0], (16,)),
        "matrix": scale * jax.random.normal(keys[1], (8, 5)),
        "conv": scale * jax.random.normal(keys[2], (8, 3, 2, 4)),
        "tall": scale * jax.random.normal(keys[3], (24, 3)),
    }


def _sharded_update(tx: optax.GradientTransformation, updates: dict, params: dict) -> dict:
    mesh = _mesh()
    spec = jax.tree.map(lambda _: P(AXIS), updates)

    def local(u: dict, p: dict) -> dict:
        out, _ = tx.update(u, tx.init(p), p)
        return out

    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec, spec), out_specs=spec))
    return fn(_put(updates, mesh, spec), _put(params, mesh, spec))


def _unsharded_update(tx: optax.GradientTransformation, updates: dict, params: dict) -> dict:
    out, _ = jax.jit(lambda u, p: tx.update(u, tx.init(p), p))(updates, params)
    return out


CLIPS = {
    "clip_by_global_norm": lambda axis: so.clip_by_global_norm(1.0, axis_name=axis),
    "clip_by_leaf_norm": lambda axis: so.clip_by_leaf_norm(0.5, axis_name=axis),
    "clip_by_block_rms": lambda axis: so.clip_by_block_rms(0.1, axis_name=axis),
    "adaptive_grad_clip": lambda axis: so.adaptive_grad_clip(0.05, axis_name=axis),
    "scale_by_trust_ratio": lambda axis: so.scale_by_trust_ratio(axis_name=axis),
    "scale_by_lars_trust_ratio": lambda axis: so.scale_by_lars_trust_ratio(axis_name=axis),
}


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_sharded_transform_equals_unsharded(name: str) -> None:
    updates, params = _tree(1, scale=2.0), _tree(2)
    expected = _unsharded_update(CLIPS[name](None), updates, params)
    actual = _sharded_update(CLIPS[name](AXIS), updates, params)
    assert_trees_close(actual, expected, rtol=1e-6)
    # The transform really changed something, so equality is not vacuous.
    assert not np.allclose(expected["matrix"], updates["matrix"])


def test_optax_clip_by_global_norm_is_wrong_when_sharded() -> None:
    updates = _tree(1, scale=2.0)
    expected = _unsharded_update(optax.clip_by_global_norm(1.0), updates, updates)
    with jax.numpy_dtype_promotion("standard"):
        per_shard = _sharded_update(optax.clip_by_global_norm(1.0), updates, updates)
    assert not np.allclose(per_shard["matrix"], expected["matrix"], rtol=1e-3)
    ours = _sharded_update(so.clip_by_global_norm(1.0, axis_name=AXIS), updates, updates)
    assert_trees_close(ours, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda axis: so.lamb(1e-2, weight_decay=0.01, axis_name=axis),
        lambda axis: so.lars(0.1, weight_decay=1e-3, axis_name=axis),
        lambda axis: optax.chain(so.clip_by_global_norm(0.5, axis_name=axis), so.adamw(1e-2)),
    ],
    ids=["lamb", "lars", "clip+adamw"],
)
@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_sharded_optimizer_steps_equal_unsharded(make, axis_type: str) -> None:
    """Ten steps of a whole optimizer with sharded state equal the unsharded run."""
    mesh = _mesh(getattr(jax.sharding.AxisType, axis_type))
    params = _tree(3)
    grads = [_tree(10 + i, scale=3.0) for i in range(10)]
    spec = jax.tree.map(lambda _: P(AXIS), params)

    def run(tx: optax.GradientTransformation, step_fn, place=lambda t, s: t) -> dict:
        state = jax.jit(tx.init)(params)
        p, state = (
            place(params, spec),
            place(state, jax.tree.map(lambda x: P(AXIS) if jnp.ndim(x) else P(), state)),
        )
        for g in grads:
            p, state = step_fn(p, state, place(g, spec))
        return p

    def step(tx: optax.GradientTransformation):
        def inner(p: dict, s, g: dict):
            updates, s = tx.update(g, s, p)
            return optax.apply_updates(p, updates), s

        return inner

    expected = run(make(None), jax.jit(step(make(None))))
    tx = make(AXIS)
    state_spec = jax.tree.map(lambda x: P(AXIS) if jnp.ndim(x) else P(), tx.init(params))
    sharded = jax.jit(
        jax.shard_map(
            step(tx),
            mesh=mesh,
            in_specs=(spec, state_spec, spec),
            out_specs=(spec, state_spec),
        )
    )
    actual = run(tx, sharded, lambda t, s: _put(t, mesh, s))
    assert_trees_close(actual, expected, rtol=1e-5, atol=1e-6)
