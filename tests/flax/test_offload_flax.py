"""The Flax drop-ins with an offloaded optimizer equal Flax's classes without offload."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import scirs2_optim_jax as so
from scirs2_optim_jax import engine
from scirs2_optim_jax.flax import Optimizer, TrainState

STEPS = 4


class _Mlp(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.a = nnx.Linear(6, 16, rngs=rngs)
        self.b = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.b(jnp.tanh(self.a(x)))


def _loss(model: _Mlp, x: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - 1.0) ** 2)


X = jnp.asarray(np.random.default_rng(0).standard_normal((8, 6)), jnp.float32)


def _close(got: object, want: object) -> None:
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def _tx() -> object:
    return so.chain(so.clip_by_global_norm(1.0), so.adamw(1e-2, weight_decay=0.1))


def _flax_reference() -> object:
    model = _Mlp(nnx.Rngs(0))
    opt = nnx.Optimizer(model, _tx(), wrt=nnx.Param)

    @nnx.jit
    def step(model: _Mlp, opt: nnx.Optimizer) -> None:
        opt.update(model, nnx.grad(_loss)(model, X))

    for _ in range(STEPS):
        step(model, opt)
    return nnx.state(model, nnx.Param)


def test_nnx_optimizer_with_device_offload_inside_nnx_jit() -> None:
    model = _Mlp(nnx.Rngs(0))
    opt = Optimizer(model, so.offload(_tx()), wrt=nnx.Param)

    @nnx.jit
    def step(model: _Mlp, opt: Optimizer) -> None:
        opt.update(model, nnx.grad(_loss)(model, X))

    for _ in range(STEPS):
        step(model, opt)
    _close(nnx.state(model, nnx.Param), _flax_reference())
    kinds = {x.sharding.memory_kind for x in jax.tree.leaves(nnx.as_pure(opt.opt_state))}
    assert kinds == {"pinned_host"}


def test_nnx_optimizer_with_host_compute_updates_eagerly() -> None:
    model = _Mlp(nnx.Rngs(0))
    opt = Optimizer(model, so.offload(_tx(), compute="host"), wrt=nnx.Param)
    grads_fn = nnx.jit(nnx.grad(_loss))  # the device program: gradients only
    for _ in range(STEPS):
        opt.update(model, grads_fn(model, X))
    _close(nnx.state(model, nnx.Param), _flax_reference())
    assert int(opt.step[...]) == STEPS
    devices = {d for x in jax.tree.leaves(nnx.as_pure(opt.opt_state)) for d in x.devices()}
    assert devices == {engine.host_device()}

    @nnx.jit
    def traced(model: _Mlp, opt: Optimizer) -> None:
        opt.update(model, nnx.grad(_loss)(model, X))

    with pytest.raises(TypeError, match="inside jit"):
        traced(model, opt)


@pytest.mark.parametrize("compute", ["device", "host"])
def test_train_state_with_offload(compute: str) -> None:
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.zeros(4)}

    def loss(p: dict) -> jax.Array:
        return jnp.sum(jnp.tanh(jnp.ones((2, 3)) @ p["w"] + p["b"]) ** 2)

    grad = jax.jit(jax.grad(loss))
    want = TrainState.create(apply_fn=None, params=params, tx=_tx())
    got = TrainState.create(apply_fn=None, params=params, tx=so.offload(_tx(), compute=compute))
    apply = jax.jit(lambda s, g: s.apply_gradients(grads=g))
    for _ in range(STEPS):
        want = apply(want, grad(want.params))
        if compute == "device":
            got = apply(got, grad(got.params))
        else:
            got = got.apply_gradients(grads=grad(got.params))
    _close(got.params, want.params)
    assert int(got.step) == STEPS
