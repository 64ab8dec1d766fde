"""ADOPT and Schedule-Free AdamW through the Flax drop-ins: equal to Flax's own classes.

Neither has a one-pass step, so the drop-ins run ``tx.update`` (with the parameters, which
schedule-free needs); the evaluation parameters come from the drop-ins' states.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.training import train_state

import scirs2_optim_jax as so
from scirs2_optim_jax import flax as so_flax

TXS = {
    "adopt": lambda: so.adopt(1e-2, nesterov=True),
    "schedule_free_adamw": lambda: so.schedule_free_adamw(1e-2, warmup_steps=3),
}


def _loss(model: nnx.Linear, x: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - jnp.sin(x[:, :3])) ** 2)


def _train_nnx(optimizer_cls: type, name: str, steps: int = 10) -> tuple:
    model = nnx.Linear(6, 3, rngs=nnx.Rngs(0))
    optimizer = optimizer_cls(model, TXS[name](), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        x = jnp.asarray(rng.standard_normal((8, 6)), jnp.float32)
        optimizer.update(model, nnx.grad(_loss)(model, x))
    return nnx.as_pure(nnx.state(model, nnx.Param)), nnx.as_pure(optimizer.opt_state)


def _assert_close(a_tree, b_tree) -> None:
    assert jax.tree.structure(a_tree) == jax.tree.structure(b_tree)
    for a, b in zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(TXS))
def test_optimizer_equals_nnx_optimizer(name: str) -> None:
    ours_params, ours_state = _train_nnx(so_flax.Optimizer, name)
    theirs_params, theirs_state = _train_nnx(nnx.Optimizer, name)
    _assert_close((ours_params, ours_state), (theirs_params, theirs_state))
    if name == "schedule_free_adamw":
        _assert_close(
            so.schedule_free_eval_params(ours_state, ours_params),
            so.schedule_free_eval_params(theirs_state, theirs_params),
        )


@pytest.mark.parametrize("name", sorted(TXS))
def test_train_state_equals_flax_train_state(name: str) -> None:
    def run(cls: type):
        state = cls.create(apply_fn=None, params={"w": jnp.linspace(-1, 1, 5)}, tx=TXS[name]())
        step = jax.jit(lambda s, g: s.apply_gradients(grads=g))
        for i in range(10):
            state = step(state, jax.tree.map(lambda p, i=i: jnp.cos(p + i), state.params))
        return state

    ours, theirs = run(so_flax.TrainState), run(train_state.TrainState)
    assert int(ours.step) == int(theirs.step) == 10
    _assert_close((ours.params, ours.opt_state), (theirs.params, theirs.opt_state))
    if name == "schedule_free_adamw":
        x = so.schedule_free_eval_params(ours.opt_state, ours.params)
        assert x["w"].shape == (5,) and not np.allclose(x["w"], ours.params["w"])
