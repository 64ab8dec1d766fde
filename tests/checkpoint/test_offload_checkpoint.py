"""Checkpoints of an offloaded optimizer state (``so.offload``): stored in the canonical
layout, the same files as the state in device memory; a run saved offloaded continues in
one that is not, and the reverse, with the state where each optimizer keeps it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
import pytest
from helpers import assert_trees_close, random_tree
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import scirs2_optim_jax as so
from scirs2_optim_jax import engine
from scirs2_optim_jax.checkpoint import CheckpointManager, CheckpointState
from scirs2_optim_jax.checkpoint.layout import in_host_memory

COMPUTES = ("device", "host")


def _plain() -> optax.GradientTransformation:
    # What compute="host" runs on the host: a clipped AdamW (the engine's one-pass form).
    return so.chain(so.clip_by_global_norm(1.0), so.adamw(1e-2, weight_decay=1e-3))


def _grads(params: Any, step: int) -> Any:
    return jax.tree.map(lambda p: jnp.sin(p * (step + 1)) + 0.1 * step, params)


def _train(tx: optax.GradientTransformation, params: Any, state: Any, steps: range) -> Any:
    for step in steps:
        params, state = so.apply_gradients(tx, _grads(params, step), state, params)
    return params, state


def _opt_leaves(state: Any) -> list[jax.Array]:
    return [x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)]


def _assert_kept_by(tx: optax.GradientTransformation, opt_state: Any) -> None:
    """The state is where ``tx`` keeps it (engine.place_state's promise)."""
    described = engine.offload_of(tx)
    for leaf in _opt_leaves(opt_state):
        if described is None:
            assert leaf.sharding.memory_kind == "device"
            assert not in_host_memory(leaf)
        elif described.compute == "device":
            assert leaf.sharding.memory_kind == "pinned_host"
        else:
            assert leaf.sharding.device_set == {engine.host_device()}


def _save(directory: Path, params: Any, opt_state: Any, step: int = 3) -> None:
    with CheckpointManager(directory, async_save=False) as mgr:
        mgr.save(step, CheckpointState(params, opt_state))


def _restore(directory: Path, **kwargs: Any) -> CheckpointState:
    with CheckpointManager(directory, read_only=True) as mgr:
        return mgr.restore(**kwargs).state


@pytest.mark.parametrize("compute", COMPUTES)
def test_offloaded_save_continues_without_offload(compute: str, tmp_path: Path) -> None:
    plain = _plain()
    offloaded = so.offload(plain, compute=compute)
    params = random_tree(jax.random.key(1))
    params, state = _train(offloaded, params, offloaded.init(params), range(3))
    _assert_kept_by(offloaded, state)
    _save(tmp_path, params, state)

    # Without an optimizer (or with the plain one) the state restores into device memory.
    restored = _restore(tmp_path)
    _assert_kept_by(plain, restored.opt_state)
    also = _restore(tmp_path, optimizer=plain)
    _assert_kept_by(plain, also.opt_state)
    assert_trees_close(also, restored, rtol=0, atol=0)

    resumed_params, resumed_state = _train(plain, restored.params, restored.opt_state, range(3, 6))
    _assert_kept_by(plain, resumed_state)
    # The offloaded run, continued.
    expected_params, expected_state = _train(offloaded, params, state, range(3, 6))
    _assert_kept_by(offloaded, expected_state)
    assert_trees_close(resumed_params, expected_params, rtol=1e-6, atol=1e-7)
    assert_trees_close(
        jax.device_get(resumed_state), jax.device_get(expected_state), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("compute", COMPUTES)
def test_plain_save_continues_offloaded(compute: str, tmp_path: Path) -> None:
    plain = _plain()
    offloaded = so.offload(plain, compute=compute)
    params = random_tree(jax.random.key(2))
    params, state = _train(plain, params, plain.init(params), range(3))
    _save(tmp_path, params, state)

    restored = _restore(tmp_path, optimizer=offloaded)
    _assert_kept_by(offloaded, restored.opt_state)
    # The parameters stay in device memory.
    assert all(not in_host_memory(p) for p in jax.tree.leaves(restored.params))
    # The optimizer wins over a target in device memory (the plain state's own).
    targeted = _restore(tmp_path, target=CheckpointState(params, state), optimizer=offloaded)
    _assert_kept_by(offloaded, targeted.opt_state)
    assert_trees_close(jax.device_get(targeted), jax.device_get(restored), rtol=0, atol=0)
    resumed_params, resumed_state = _train(
        offloaded, restored.params, restored.opt_state, range(3, 6)
    )
    _assert_kept_by(offloaded, resumed_state)

    # The plain run, continued.
    expected_params, expected_state = _train(plain, params, state, range(3, 6))
    assert_trees_close(resumed_params, expected_params, rtol=1e-6, atol=1e-7)
    assert_trees_close(
        jax.device_get(resumed_state), jax.device_get(expected_state), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("compute", COMPUTES)
def test_offloaded_checkpoint_has_the_canonical_layout(compute: str, tmp_path: Path) -> None:
    """Same tree description, same array paths, same bytes (checksums) as the state saved
    from device memory."""
    plain = _plain()
    offloaded = so.offload(plain, compute=compute)
    params = random_tree(jax.random.key(3))
    params, state = _train(plain, params, plain.init(params), range(2))
    on_host = engine.place_state(offloaded, state)
    _assert_kept_by(offloaded, on_host)
    _save(tmp_path / "plain", params, state)
    _save(tmp_path / "offloaded", params, on_host)

    def read(kind: str, item: str) -> dict[str, Any]:
        return json.loads((tmp_path / kind / "3" / item / f"{item}.json").read_text())

    plain_meta, offloaded_meta = read("plain", "meta"), read("offloaded", "meta")
    assert offloaded_meta["tree"] == plain_meta["tree"]
    assert offloaded_meta["arrays"] == plain_meta["arrays"]
    assert ["opt_state", "1", "0", "mu", "dense", "kernel"] in [
        [str(k) for k in path] for path in plain_meta["arrays"]
    ]
    assert read("offloaded", "manifest")["arrays"] == read("plain", "manifest")["arrays"]

    def items(kind: str) -> set[tuple[str, ...]]:
        # The step's items and their top-level entries (Orbax's OCDBT internals aside).
        root = tmp_path / kind
        return {f.relative_to(root).parts[:2] for f in root.rglob("*")}

    assert items("offloaded") == items("plain")


def test_target_memory_kind_is_kept(tmp_path: Path) -> None:
    """A target whose shardings name pinned_host (an offloaded state, or structs built with
    it, also on an abstract mesh) restores there, sharded as asked."""
    mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
    offloaded = so.offload(_plain())
    params = jax.device_put({"w": jnp.arange(8.0), "b": jnp.ones(3)}, NamedSharding(mesh, P()))
    state = offloaded.init(params)
    _save(tmp_path, params, state)

    restored = _restore(tmp_path, target=CheckpointState(params, state))
    _assert_kept_by(offloaded, restored.opt_state)
    assert restored.opt_state[1][0].mu["w"].sharding == state[1][0].mu["w"].sharding

    split = NamedSharding(mesh, P("data"), memory_kind="pinned_host")
    abstract_mesh = NamedSharding(mesh.abstract_mesh, P(), memory_kind="pinned_host")

    def struct(x: jax.Array) -> jax.ShapeDtypeStruct:
        sharding = split if x.shape == (8,) else abstract_mesh
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    target = CheckpointState(params, jax.tree.map(struct, state))
    restored = _restore(tmp_path, target=target, placement=NamedSharding(mesh, P()))
    _assert_kept_by(offloaded, restored.opt_state)
    assert restored.opt_state[1][0].mu["w"].sharding == split
    assert restored.opt_state[1][0].mu["b"].sharding.mesh == mesh
    assert_trees_close(jax.device_get(restored.opt_state), jax.device_get(state), rtol=0, atol=0)


@pytest.mark.parametrize("compute", COMPUTES)
def test_optimizer_places_after_a_layout_and_in_a_dict(compute: str, tmp_path: Path) -> None:
    offloaded = so.offload(_plain(), compute=compute)
    params = {"w": jnp.arange(4.0)}
    state = _plain().init(params)
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(1, {"params": params, "opt_state": state})
        identity = (lambda s: s, lambda s: s)
        restored = mgr.restore(layout=identity, optimizer=offloaded).state
        _assert_kept_by(offloaded, restored["opt_state"])
        assert not in_host_memory(restored["params"]["w"])
        restored = mgr.restore(optimizer=offloaded).state
        _assert_kept_by(offloaded, restored["opt_state"])


def test_optimizer_argument_errors(tmp_path: Path) -> None:
    offloaded = so.offload(_plain())
    params = {"w": jnp.ones(2)}
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(0, CheckpointState(params, offloaded.init(params)))
        mgr.save(1, {"w": jnp.ones(2)})
        with pytest.raises(TypeError, match=r"restore: optimizer must be an optax"):
            mgr.restore(0, optimizer="adamw")
        with pytest.raises(ValueError, match=r"restore: optimizer .* params_only"):
            mgr.restore(0, params_only=True, optimizer=offloaded)
        with pytest.raises(TypeError, match=r"step 1 holds a dict without one"):
            mgr.restore(1, optimizer=offloaded)
