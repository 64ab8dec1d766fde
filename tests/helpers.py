"""Shared test helpers: random trees, an optax oracle runner, a compilation counter, a small
MLP problem for the data-parallel steps."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

MIXED_SHAPES = {
    "scalar": (),
    "vector": (7,),
    "matrix": (5, 3),
    "conv": (2, 3, 2, 4),
}


def random_tree(key: jax.Array, dtype: Any = jnp.float32, scale: float = 1.0) -> dict:
    """A dict of leaves of mixed rank (scalar, vector, matrix, 4-D), nested one level."""
    keys = jax.random.split(key, len(MIXED_SHAPES) + 1)
    leaves = {
        name: (scale * jax.random.normal(k, shape)).astype(dtype)
        for k, (name, shape) in zip(keys, MIXED_SHAPES.items(), strict=False)
    }
    return {
        "dense": {"kernel": leaves["matrix"], "bias": leaves["vector"]},
        "conv": {"kernel": leaves["conv"]},
        "scale": leaves["scalar"],
        "head": (jax.random.normal(keys[-1], (3, 2)) * scale).astype(dtype),
    }


def decay_mask(params: dict) -> dict:
    """Decay kernels only, the usual mask: no decay on biases and scalars."""

    def is_matrix_like(path: tuple, _: Any) -> bool:
        name = jax.tree_util.keystr(path)
        return "kernel" in name or "head" in name

    return jax.tree_util.tree_map_with_path(is_matrix_like, params)


def run_steps(
    tx: optax.GradientTransformation,
    params: Any,
    grads_fn: Callable[[int], Any],
    steps: int,
    *,
    standard_promotion: bool = False,
) -> tuple[Any, Any]:
    """Runs ``steps`` jitted update + apply steps with gradients ``grads_fn(i)``."""

    def step(p: Any, s: Any, g: Any) -> tuple[Any, Any]:
        if standard_promotion:
            # optax's own code relies on implicit int/float promotion that strict mode forbids.
            with jax.numpy_dtype_promotion("standard"):
                updates, s = tx.update(g, s, p)
                return optax.apply_updates(p, updates), s
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    jitted = jax.jit(step)
    if standard_promotion:
        with jax.numpy_dtype_promotion("standard"):
            state = tx.init(params)
    else:
        state = tx.init(params)
    for i in range(steps):
        params, state = jitted(params, state, grads_fn(i))
    return params, state


def assert_trees_close(actual: Any, expected: Any, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree.leaves(expected), strict=True
    ):
        np.testing.assert_allclose(
            np.asarray(a, np.float64),
            np.asarray(b, np.float64),
            rtol=rtol,
            atol=atol,
            err_msg=jax.tree_util.keystr(path),
        )


@contextlib.contextmanager
def count_compilations() -> Iterator[list[str]]:
    """Counts XLA backend compilations while the block runs (one entry per compile)."""
    events: list[str] = []

    def listener(event: str, duration: float, **kwargs: Any) -> None:
        del duration, kwargs
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def run_on_one_device(code: str) -> list[str]:
    """Runs ``code`` in a fresh Python without the suite's 8 fake devices; its stdout words."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return out.stdout.split()


def mlp_loss(params: dict, batch: dict) -> jax.Array:
    """The loss of :func:`mlp_problem`'s one-hidden-layer MLP."""
    h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] - batch["y"]) ** 2)


def mlp_problem(dtype: Any = jnp.float32) -> tuple[dict, dict]:
    """``(params, batch)``: a 7-13-3 MLP and a batch of 16 (divisible by 8 devices)."""
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.standard_normal((7, 13)), dtype),
        "b1": jnp.zeros(13, dtype),
        "w2": jnp.asarray(rng.standard_normal((13, 3)), dtype),
    }
    batch = {
        "x": jnp.asarray(rng.standard_normal((16, 7)), dtype),
        "y": jnp.asarray(rng.standard_normal((16, 3)), dtype),
    }
    return params, batch
