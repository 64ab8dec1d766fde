"""offload(tx, compute=...): the state in host memory, results equal to the step without
offload (rtol 1e-6), through the engine's step and through the optax protocol."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import random_tree

import scirs2_optim_jax as so
from scirs2_optim_jax import engine

STEPS = 6


def _grads(i: int, params: dict) -> dict:
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(100 + i), len(leaves))
    return treedef.unflatten(
        [
            0.5 * jax.random.normal(k, jnp.shape(p)).astype(p.dtype)
            for k, p in zip(keys, leaves, strict=True)
        ]
    )


def _close(got: object, want: object, rtol: float = 1e-6) -> None:
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = float(np.max(np.abs(b))) or 1.0
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


def _run_engine(tx: optax.GradientTransformation, params: dict) -> tuple[dict, object]:
    state = tx.init(params)
    for i in range(STEPS):
        params, state = so.apply_gradients(tx, _grads(i, params), state, params)
    return params, state


def _run_protocol(tx: optax.GradientTransformation, params: dict, jit: bool) -> dict:
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    for i in range(STEPS):
        updates, state = update(_grads(i, params), state, params)
        params = optax.apply_updates(params, updates)
    return params


OPTIMIZERS = {
    "adamw": lambda: so.adamw(1e-2, weight_decay=0.1),
    "adam": lambda: so.adam(3e-3),
    "lamb": lambda: so.lamb(1e-2, weight_decay=0.01),
    "clip+adamw": lambda: so.chain(so.clip_by_global_norm(0.3), so.adamw(1e-2)),
    "adamw+warmup_cosine": lambda: so.adamw(so.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10)),
}


@pytest.mark.parametrize("compute", ["device", "host"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_offloaded_step_equals_the_step_without_offload(name: str, compute: str) -> None:
    params = random_tree(jax.random.key(0))
    make = OPTIMIZERS[name]
    want, _ = _run_engine(make(), params)
    got, state = _run_engine(so.offload(make(), compute=compute), params)
    _close(got, want)
    kinds = {leaf.sharding.memory_kind for leaf in jax.tree.leaves(state)}
    assert kinds == ({"pinned_host"} if compute == "device" else {"device"})
    if compute == "host":
        assert {d for x in jax.tree.leaves(state) for d in x.devices()} == {engine.host_device()}


@pytest.mark.parametrize("compute", ["device", "host"])
def test_optax_protocol_equals_the_step_without_offload(compute: str) -> None:
    params = random_tree(jax.random.key(1))
    make = OPTIMIZERS["clip+adamw"]
    jit = compute == "device"  # the host update runs between device programs
    want = _run_protocol(make(), params, jit=jit)
    _close(_run_protocol(so.offload(make(), compute=compute), params, jit=jit), want)


@pytest.mark.parametrize("compute", ["device", "host"])
def test_master_weights_with_bf16_params(compute: str) -> None:
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), random_tree(jax.random.key(2)))

    def make() -> optax.GradientTransformation:
        return so.with_master_weights(so.adamw(1e-2, weight_decay=0.1))

    want, want_state = _run_engine(make(), params)
    got, got_state = _run_engine(so.offload(make(), compute=compute), params)
    assert {x.dtype for x in jax.tree.leaves(got)} == {jnp.dtype(jnp.bfloat16)}
    _close(got, want)
    _close(got_state.master, want_state.master)


@pytest.mark.parametrize(
    "make",
    [
        lambda: optax.sgd(0.1, momentum=0.9),
        lambda: so.lion(1e-3),
        lambda: optax.adafactor(1e-2),
        lambda: so.rmsprop(1e-3),
    ],
    ids=["optax.sgd", "lion", "optax.adafactor", "rmsprop"],
)
def test_device_compute_takes_any_transformation(make: object) -> None:
    params = {"w": jnp.arange(12.0).reshape(3, 4) / 10, "b": jnp.ones(4)}
    want = _run_protocol(make(), params, jit=True)
    _close(_run_protocol(so.offload(make()), params, jit=True), want)


def test_device_compute_keeps_the_state_out_of_device_memory_in_the_compiled_step() -> None:
    tx = so.offload(so.adamw(1e-3))
    params = {"w": jnp.ones((64, 32)), "b": jnp.ones(32)}
    state = tx.init(params)
    compiled = jax.jit(lambda g, s, p: so.apply_gradients(tx, g, s, p)).lower(params, state, params)
    layout = compiled.compile().as_text().split("\n", 1)[0]
    arguments = layout.split("entry_computation_layout={(", 1)[1].split(")->", 1)[0]
    # gradients and parameters (2 x 2 arrays) in device memory; count, mu, nu (5) on host
    assert arguments.count("S(5)") == len(jax.tree.leaves(state)) == 5


def test_place_state_moves_a_state_between_offloaded_and_not() -> None:
    plain = so.adamw(1e-2)
    params = {"w": jnp.ones(3)}
    state = plain.init(params)
    for compute, kind in (("device", "pinned_host"), ("host", "device")):
        placed = engine.place_state(so.offload(plain, compute=compute), state)
        assert {x.sharding.memory_kind for x in jax.tree.leaves(placed)} == {kind}
        back = engine.place_state(plain, placed)
        assert {x.sharding.memory_kind for x in jax.tree.leaves(back)} == {"device"}
        _close(back, state, rtol=0)


def test_flax_free_one_pass_step_is_the_streamed_kernel_step() -> None:
    step = engine.one_pass_step(so.offload(so.adamw(1e-3)))
    assert step is not None and step.name == "adamw"
    assert engine.one_pass_step(so.offload(so.adamw(1e-3), compute="host")) is None
    assert engine.host_step(so.offload(so.adamw(1e-3), compute="host")).name == "adamw"
    assert engine.host_step(so.offload(so.adamw(1e-3))) is None


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="compute"):
        so.offload(so.adamw(1e-3), compute="gpu")
    with pytest.raises(TypeError, match=r"tx must be an optax\.GradientTransformation"):
        so.offload("adamw")
    with pytest.raises(TypeError, match="already offloaded"):
        so.offload(so.offload(so.adamw(1e-3)))
    tx = so.offload(so.adamw(1e-3), compute="host")
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    with pytest.raises(TypeError, match="inside jit"):
        jax.jit(tx.update)(params, state, params)
    with pytest.raises(TypeError, match="inside jit"):
        jax.jit(tx.init)(params)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, state)


def test_host_protocol_update_leaves_its_arguments_intact() -> None:
    tx = so.offload(so.adamw(1e-2), compute="host")
    params = {"w": jnp.arange(4.0), "b": jnp.ones(2)}
    state = tx.init(params)
    updates, new_state = tx.update(params, state, params)
    # Neither the old state nor the parameters were consumed by the host step.
    _close(jax.tree.leaves(state)[1:], jax.tree.leaves(so.adamw(1e-2).init(params))[1:])
    _close(
        optax.apply_updates(params, updates),
        so.apply_gradients(so.adamw(1e-2), params, so.adamw(1e-2).init(params), params)[0],
    )
    assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_host_master_weights_keep_integer_leaves() -> None:
    params = {"w": jnp.ones((3, 2), jnp.bfloat16), "n": jnp.array([3, 4], jnp.int32)}

    def make() -> optax.GradientTransformation:
        return so.with_master_weights(so.adamw(1e-2))

    grads = {"w": jnp.full((3, 2), 0.5, jnp.bfloat16), "n": jnp.zeros(2, jnp.int32)}
    want, _ = so.apply_gradients(make(), grads, make().init(params), params)
    tx = so.offload(make(), compute="host")
    got, _ = so.apply_gradients(tx, grads, tx.init(params), params)
    assert got["n"].tolist() == [3, 4]
    _close(got, want)
