"""Restore anywhere: state sharded over 8 devices is saved in its canonical layout and
restored onto 4 devices, onto 1 device, and back onto 8, with equal values."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from helpers import assert_trees_close
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import scirs2_optim_jax as so
from scirs2_optim_jax.checkpoint import CheckpointManager, CheckpointState

AXIS = "data"


def _mesh(n: int) -> jax.sharding.Mesh:
    assert jax.device_count() == 8, "tests need XLA_FLAGS=--xla_force_host_platform_device_count=8"
    return jax.make_mesh((n,), (AXIS,), devices=jax.devices()[:n])


def _spec(x: jax.ShapeDtypeStruct | jax.Array) -> P:
    # Split the leading axis when it divides evenly over 8, 4 and 1 devices; else replicate.
    return P(AXIS) if np.ndim(x) and np.shape(x)[0] % 8 == 0 else P()


def _on(mesh: jax.sharding.Mesh, tree: object) -> object:
    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, _spec(x))), tree)


def _abstract_on(mesh: jax.sharding.Mesh, tree: object) -> object:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, _spec(x))),
        tree,
    )


def _assert_equal(actual: object, expected: object) -> None:
    def data(x: object) -> object:
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(x)
        return x

    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    assert_trees_close(jax.tree.map(data, actual), jax.tree.map(data, expected), rtol=0, atol=0)


def _state() -> CheckpointState:
    keys = jax.random.split(jax.random.key(0), 3)
    params = {
        "w": jax.random.normal(keys[0], (16, 6)),
        "b": jax.random.normal(keys[1], (8,)),
        "odd": jax.random.normal(keys[2], (5, 3)),
    }
    tx = optax.chain(so.clip_by_global_norm(1.0), so.adamw(1e-2))
    opt_state = tx.init(params)
    _, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
    return CheckpointState(params, opt_state, jax.random.key(7), {"epoch": 1, "batch": 2})


def test_sharded_state_restores_on_4_then_1_then_8_devices(tmp_path: Path) -> None:
    reference = _state()
    on8 = _on(_mesh(8), reference)
    assert on8.params["w"].sharding.spec == P(AXIS) and len(on8.params["w"].devices()) == 8
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(1, on8)
        abstract = jax.eval_shape(lambda: reference)

        on4 = mgr.restore(1, _abstract_on(_mesh(4), abstract)).state
        w4 = on4.params["w"]
        assert len(w4.devices()) == 4 and w4.sharding.spec == P(AXIS)
        assert w4.addressable_shards[0].data.shape == (4, 6)
        _assert_equal(on4, reference)

        mgr.save(2, on4)
        on1 = mgr.restore(2).state  # no target: one device, unsharded
        assert all(len(x.devices()) == 1 for x in jax.tree.leaves(on1) if isinstance(x, jax.Array))
        _assert_equal(on1, reference)

        mgr.save(3, on1)
        back = mgr.restore(3, _abstract_on(_mesh(8), abstract)).state
        assert len(back.params["w"].devices()) == 8 and back.params["w"].sharding.spec == P(AXIS)
        _assert_equal(back, reference)

        # The files hold the logical shapes, whatever the sharding was.
        saved = [mgr.restore(step, params_only=True).state["w"].shape for step in (1, 2, 3)]
        assert saved == [(16, 6)] * 3


def test_placement_onto_a_replicated_sharding(tmp_path: Path) -> None:
    reference = _state()
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(0, _on(_mesh(8), reference))
        replicated = NamedSharding(_mesh(4), P())
        restored = mgr.restore(0, placement=replicated).state
    w = restored.params["w"]
    assert w.sharding == replicated and w.addressable_shards[0].data.shape == (16, 6)
    _assert_equal(restored, reference)
