"""One table of every optimizer, run through shared property tests (as optax's tests do).

Add an optimizer to ``OPTIMIZERS`` and it gets every test here.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import count_compilations, random_tree

import scirs2_optim_jax as so

# name -> factory taking the learning rate (so inject_hyperparams can drive it) and the
# learning rates that solve the parabola and Rosenbrock problems below.
OPTIMIZERS: dict[str, tuple[Callable[..., optax.GradientTransformation], dict]] = {
    "adamw": (lambda learning_rate: so.adamw(learning_rate, weight_decay=0.0), {"lr": 0.05}),
    "adam": (lambda learning_rate: so.adam(learning_rate), {"lr": 0.05}),
    "adam_nesterov": (lambda learning_rate: so.adam(learning_rate, nesterov=True), {"lr": 0.05}),
    "lamb": (lambda learning_rate: so.lamb(learning_rate), {"lr": 0.02, "rosenbrock_lr": 3e-3}),
    "lars": (lambda learning_rate: so.lars(learning_rate, trust_coefficient=1.0), {"lr": 1e-3}),
    "sgd": (lambda learning_rate: so.sgd(learning_rate, momentum=0.9), {"lr": 1e-3}),
    "lion": (lambda learning_rate: so.lion(learning_rate, weight_decay=0.0), {"lr": 0.01}),
    "rmsprop": (lambda learning_rate: so.rmsprop(learning_rate, momentum=0.5), {"lr": 3e-3}),
    "radam": (lambda learning_rate: so.radam(learning_rate), {"lr": 0.05, "rosenbrock_lr": 1e-3}),
    "adagrad": (lambda learning_rate: so.adagrad(learning_rate), {"lr": 0.5}),
}
NAMES = sorted(OPTIMIZERS)


def _make(name: str, learning_rate: float | None = None) -> optax.GradientTransformation:
    factory, settings = OPTIMIZERS[name]
    return factory(settings["lr"] if learning_rate is None else learning_rate)


def _minimise(tx: optax.GradientTransformation, loss, params, steps: int):
    @jax.jit
    def run(params):
        def body(carry, _):
            p, s = carry
            grads = jax.grad(loss)(p)
            updates, s = tx.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), None

        (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), length=steps)
        return params

    return run(params)


@pytest.mark.parametrize("name", NAMES)
def test_minimises_parabola(name: str) -> None:
    target = jnp.array([1.0, -2.0, 0.5])
    params = {"x": jnp.zeros(3), "y": jnp.ones((2, 2))}

    def loss(p):
        return jnp.sum((p["x"] - target) ** 2) + jnp.sum((p["y"] - 0.5) ** 2)

    start = float(loss(params))
    final = _minimise(_make(name), loss, params, 2000)
    assert float(loss(final)) < 1e-3 * start, float(loss(final))
    np.testing.assert_allclose(final["x"], target, atol=0.05)


@pytest.mark.parametrize("name", NAMES)
def test_minimises_rosenbrock(name: str) -> None:
    def loss(p):
        x, y = p[0], p[1]
        return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2

    params = jnp.array([-1.0, 1.5])
    final = _minimise(_make(name, OPTIMIZERS[name][1].get("rosenbrock_lr")), loss, params, 10_000)
    assert float(loss(final)) < 1e-2 * float(loss(params)), (float(loss(final)), final)
    np.testing.assert_allclose(final, jnp.ones(2), atol=0.15)


@pytest.mark.parametrize("name", NAMES)
def test_accepts_unexpected_extra_args(name: str) -> None:
    tx = _make(name)
    params = random_tree(jax.random.key(0))
    updates, _ = tx.update(params, tx.init(params), params, some_extra_arg=jnp.ones(3))
    assert jax.tree.structure(updates) == jax.tree.structure(params)


@pytest.mark.parametrize("name", NAMES)
def test_no_recompilation_after_first_step(name: str) -> None:
    tx = _make(name)
    params = random_tree(jax.random.key(0))

    @jax.jit
    def step(p, s, g):
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    state = tx.init(params)
    params, state = step(params, state, random_tree(jax.random.key(1)))
    with count_compilations() as compiles:
        for i in range(3):
            params, state = step(params, state, random_tree(jax.random.key(2 + i)))
    assert compiles == []


def test_compilation_counter_counts() -> None:
    """The counter used above really sees compilations (so the test above can fail)."""
    with count_compilations() as compiles:
        jax.jit(lambda x: x * 3.0 + 1.0)(jnp.ones(7))
    assert len(compiles) >= 1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_update_dtype_equals_gradient_dtype(name: str, dtype) -> None:
    tx = _make(name)
    params = random_tree(jax.random.key(0), dtype=dtype)
    state = tx.init(params)
    for i in range(3):
        grads = random_tree(jax.random.key(10 + i), dtype=dtype)
        updates, state = jax.jit(tx.update)(grads, state, params)
        for leaf in jax.tree.leaves(updates):
            assert leaf.dtype == dtype
        params = optax.apply_updates(params, updates)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("name", NAMES)
def test_state_shapes_and_dtypes_stable(name: str) -> None:
    tx = _make(name)
    params = random_tree(jax.random.key(0))
    state = tx.init(params)
    initial = jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), state)
    step = jax.jit(tx.update)
    for i in range(3):
        _, state = step(random_tree(jax.random.key(i)), state, params)
    assert jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), state) == initial
    assert jax.tree.structure(state) == jax.tree.structure(tx.init(params))


@pytest.mark.parametrize("name", NAMES)
def test_works_under_inject_hyperparams(name: str) -> None:
    lr = OPTIMIZERS[name][1]["lr"]
    injected = optax.inject_hyperparams(OPTIMIZERS[name][0])(learning_rate=lr)
    plain = _make(name)
    params = random_tree(jax.random.key(0))
    grads = random_tree(jax.random.key(1))
    with jax.numpy_dtype_promotion("standard"):  # optax's wrapper code needs it
        state = injected.init(params)
        updates, state = jax.jit(injected.update)(grads, state, params)
    expected, _ = plain.update(grads, plain.init(params), params)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(lr)


@pytest.mark.parametrize("name", NAMES)
def test_works_under_multi_steps(name: str) -> None:
    """MultiSteps(k=3) applies one update with the mean of three gradients."""
    k = 3
    tx = optax.MultiSteps(_make(name), every_k_schedule=k)
    plain = _make(name)
    params = random_tree(jax.random.key(0))
    grads = [random_tree(jax.random.key(1 + i)) for i in range(k)]
    with jax.numpy_dtype_promotion("standard"):  # optax's wrapper code needs it
        state = tx.init(params)
        step = jax.jit(tx.update)
        for g in grads[:-1]:
            updates, state = step(g, state, params)
            assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))
        updates, state = step(grads[-1], state, params)
    mean = jax.tree.map(lambda *g: sum(g) / k, *grads)
    expected, _ = plain.update(mean, plain.init(params), params)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
