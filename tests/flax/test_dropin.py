"""Our transforms drop into the tools users already have: optax.chain, inject_hyperparams,
Flax's TrainState and flax.nnx.Optimizer; jitted steps compile once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx
from flax.training import train_state
from helpers import assert_trees_close, count_compilations, random_tree, run_steps

import scirs2_optim_jax as so


def _regression_data(seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """y = sin(x @ w) for a fixed w: smooth, learnable by a small MLP."""
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (256, 4))
    w = jax.random.normal(kw, (4, 1))
    return x, jnp.sin(x @ w)


def test_mixes_with_optax_transforms_in_chain() -> None:
    ours = optax.chain(
        optax.clip_by_global_norm(1.0),
        so.scale_by_adam(b1=0.9, b2=0.99),
        optax.add_decayed_weights(1e-3),
        so.scale_by_learning_rate(1e-2),
    )
    reference = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.scale_by_adam(b1=0.9, b2=0.99),
        optax.add_decayed_weights(1e-3),
        optax.scale_by_learning_rate(1e-2),
    )
    params = random_tree(jax.random.key(0))

    def grads(i: int) -> dict:
        return random_tree(jax.random.fold_in(jax.random.key(1), i), scale=2.0)

    actual, _ = run_steps(ours, params, grads, 20, standard_promotion=True)
    expected, _ = run_steps(reference, params, grads, 20, standard_promotion=True)
    assert_trees_close(actual, expected)


def test_inject_hyperparams_learning_rate_readable_and_changeable_without_recompiling() -> None:
    tx = optax.inject_hyperparams(so.adamw)(learning_rate=1e-3, weight_decay=0.0)
    params = random_tree(jax.random.key(0))
    grads = random_tree(jax.random.key(1))
    with jax.numpy_dtype_promotion("standard"):
        state = tx.init(params)
        step = jax.jit(tx.update)
        updates_small, _ = step(grads, state, params)
        assert float(state.hyperparams["learning_rate"]) == pytest.approx(1e-3)
        state.hyperparams["learning_rate"] = jnp.asarray(4e-3, jnp.float32)
        with count_compilations() as compiles:
            updates_large, new_state = step(grads, state, params)
    assert compiles == []
    assert float(new_state.hyperparams["learning_rate"]) == pytest.approx(4e-3)
    for small, large in zip(
        jax.tree.leaves(updates_small), jax.tree.leaves(updates_large), strict=True
    ):
        np.testing.assert_allclose(large, 4.0 * small, rtol=1e-5, atol=1e-9)


def test_inject_hyperparams_with_schedule() -> None:
    schedule = so.schedules.warmup_cosine(1e-2, total_steps=10)
    tx = optax.inject_hyperparams(so.adam)(learning_rate=schedule)
    params = {"w": jnp.ones(3)}
    with jax.numpy_dtype_promotion("standard"):
        state = tx.init(params)
        step = jax.jit(tx.update)
        seen = []
        for _ in range(4):
            _, state = step({"w": jnp.ones(3)}, state, params)
            # The state records the rate the step just used: schedule(step index).
            seen.append(float(state.hyperparams["learning_rate"]))
    np.testing.assert_allclose(seen, [float(schedule(i)) for i in range(4)], rtol=1e-6)


class _LinenMLP(linen.Module):
    @linen.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = linen.tanh(linen.Dense(32)(x))
        return linen.Dense(1)(x)


def test_trains_flax_train_state_to_low_loss() -> None:
    x, y = _regression_data()
    model = _LinenMLP()
    params = model.init(jax.random.key(1), x[:1])["params"]
    state = train_state.TrainState.create(
        apply_fn=model.apply, params=params, tx=so.adamw(1e-2, weight_decay=1e-4)
    )

    @jax.jit
    def step(state: train_state.TrainState) -> tuple[train_state.TrainState, jax.Array]:
        def loss_fn(p: dict) -> jax.Array:
            return jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    state, first_loss = step(state)
    with count_compilations() as compiles:
        for _ in range(400):
            state, loss = step(state)
    assert compiles == []
    assert float(first_loss) > 0.2
    assert float(loss) < 0.02, float(loss)


class _NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(4, 32, rngs=rngs)
        self.out = nnx.Linear(32, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(self.hidden(x)))


@pytest.mark.parametrize("name", ["adamw", "lamb", "lion"])
def test_trains_flax_nnx_optimizer_to_low_loss(name: str) -> None:
    x, y = _regression_data()
    model = _NnxMLP(nnx.Rngs(0))
    # Lion's fixed-size sign steps oscillate on a full batch: it gets a looser bound.
    lr, bound = {"adamw": (1e-2, 0.03), "lamb": (1e-2, 0.03), "lion": (3e-3, 0.06)}[name]
    optimizer = nnx.Optimizer(model, getattr(so, name)(lr), wrt=nnx.Param)

    @nnx.jit
    def step(model: _NnxMLP, optimizer: nnx.Optimizer) -> jax.Array:
        def loss_fn(model: _NnxMLP) -> jax.Array:
            return jnp.mean((model(x) - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    first_loss = step(model, optimizer)
    with count_compilations() as compiles:
        for _ in range(600):
            loss = step(model, optimizer)
    assert compiles == []
    assert float(first_loss) > 0.2
    assert float(loss) < bound, float(loss)
