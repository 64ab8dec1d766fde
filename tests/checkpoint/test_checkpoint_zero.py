"""ZeRO checkpoints: an optimizer state partitioned over 8 devices (padded and flattened in
memory) is saved canonically and restored onto 4 devices with ZeRO, onto 1 device unsharded,
and back onto 8, with equal values; training continues identically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from helpers import assert_trees_close
from jax.sharding import PartitionSpec as P

import scirs2_optim_jax as so
from scirs2_optim_jax.checkpoint import CheckpointManager, CheckpointState, opt_state_layout
from scirs2_optim_jax.parallel import (
    make_data_mesh,
    zero,
    zero_state_from_canonical,
    zero_state_specs,
    zero_state_to_canonical,
)

AXIS = "data"


def _params() -> dict:
    keys = jax.random.split(jax.random.key(0), 3)
    # Sizes 30, 7 and 1: none divides 8 or 4, so every moment is padded in memory.
    return {
        "w": jax.random.normal(keys[0], (5, 6)),
        "b": jax.random.normal(keys[1], (7,)),
        "s": jax.random.normal(keys[2], ()),
    }


def _grads(i: int) -> dict:
    return jax.tree.map(lambda p: jnp.cos(p + i), _params())


def _inner() -> optax.GradientTransformation:
    return so.adamw(1e-2)


def _zero_steps(state: Any, params: dict, n: int, start: int, mesh: Any) -> tuple[dict, Any]:
    """Runs ``n`` ZeRO stage-1 steps on ``mesh``; returns params and the sharded state."""
    tx = zero(_inner(), AXIS, stage=1)
    specs = zero_state_specs(_inner(), params, mesh.shape[AXIS], AXIS)

    def step(p: dict, s: Any, g: dict) -> tuple[dict, Any]:
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    step = jax.jit(
        jax.shard_map(
            step,
            mesh=mesh,
            in_specs=(P(), specs, P()),
            out_specs=(P(), specs),
            check_vma=False,
        )
    )
    for i in range(start, start + n):
        params, state = step(params, state, _grads(i))
    return params, state


def _layout(params: dict, mesh: Any) -> Any:
    return opt_state_layout(
        lambda s: zero_state_to_canonical(s, params),
        lambda s: zero_state_from_canonical(s, params, mesh, AXIS),
    )


def test_zero_state_restores_on_8_4_1_8_devices(tmp_path: Path) -> None:
    params = _params()
    mesh8, mesh4 = make_data_mesh(8), make_data_mesh(4)
    # Reference: the same steps, unsharded.
    tx = _inner()
    ref_params, ref_state = params, tx.init(params)
    for i in range(6):
        updates, ref_state = tx.update(_grads(i), ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, updates)

    state8 = zero_state_from_canonical(tx.init(params), params, mesh8, AXIS)
    p8, state8 = _zero_steps(state8, params, 3, 0, mesh8)
    assert state8[0].mu["w"].shape == (32,)  # padded, flattened, sharded in memory
    canonical_target = jax.eval_shape(lambda: CheckpointState(p8, tx.init(p8)))
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(3, CheckpointState(p8, state8), layout=_layout(params, mesh8))

        # 8 -> 4 devices, with ZeRO, and two more steps there.
        on4 = mgr.restore(3, canonical_target, layout=_layout(params, mesh4)).state
        mu4 = on4.opt_state[0].mu["w"]
        assert mu4.shape == (32,) and len(mu4.devices()) == 4 and mu4.sharding.spec == P(AXIS)
        p4, state4 = _zero_steps(on4.opt_state, on4.params, 2, 3, mesh4)
        mgr.save(5, CheckpointState(p4, state4), layout=_layout(params, mesh4))

        # 4 -> 1 device, unsharded: the plain optimizer state, NamedTuples and all.
        on1 = mgr.restore(5).state
        assert on1.opt_state[0].mu["w"].shape == (5, 6)
        assert type(on1.opt_state) is type(ref_state)
        assert jax.tree.structure(on1.opt_state) == jax.tree.structure(ref_state)
        updates, state1 = tx.update(_grads(5), on1.opt_state, on1.params)
        p1 = optax.apply_updates(on1.params, updates)
        assert_trees_close(p1, ref_params, rtol=1e-6, atol=1e-6)
        assert_trees_close(state1, ref_state, rtol=1e-6, atol=1e-6)
        mgr.save(6, CheckpointState(p1, state1))

        # 1 -> 8 devices, with ZeRO again: equal values after the round trip.
        back = mgr.restore(6, canonical_target, layout=_layout(params, mesh8)).state
        assert back.opt_state[0].mu["w"].sharding.spec == P(AXIS)
        assert len(back.opt_state[0].mu["w"].devices()) == 8
        assert_trees_close(zero_state_to_canonical(back.opt_state, params), state1, 0, 0)
        np.testing.assert_array_equal(np.asarray(back.params["w"]), np.asarray(p1["w"]))
