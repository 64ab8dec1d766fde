"""Gradient checkpointing: same gradients, lower peak memory in XLA's memory analysis."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scirs2_optim_jax.config import compiled_memory
from scirs2_optim_jax.training.remat import (
    REMAT_POLICIES,
    apply_stack,
    create_stack,
    remat,
    remat_policy,
)


class Block(nnx.Module):
    """Residual MLP block: the activations (4x wider) dominate the backward pass's memory."""

    def __init__(self, width: int, *, rngs: nnx.Rngs) -> None:
        self.up = nnx.Linear(width, 4 * width, rngs=rngs)
        self.down = nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.down(jnp.tanh(self.up(x)))


def _stack_grad(policy: str) -> tuple[Any, Any, Any]:
    stack = create_stack(lambda r: Block(32, rngs=r), 4, nnx.Rngs(0))
    graphdef, params = nnx.split(stack)

    def loss(p: Any, x: jax.Array) -> jax.Array:
        return jnp.mean(apply_stack(nnx.merge(graphdef, p), x, policy) ** 2)

    return jax.jit(jax.grad(loss)), params, jnp.linspace(-1.0, 1.0, 256 * 32).reshape(256, 32)


def test_policies_give_the_same_gradients() -> None:
    grad_fn, params, x = _stack_grad("none")
    expected = grad_fn(params, x)
    for policy in ("full", "dots"):
        grad_fn, params, x = _stack_grad(policy)
        got = grad_fn(params, x)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def _temp_bytes(policy: str) -> int:
    grad_fn, params, x = _stack_grad(policy)
    memory = compiled_memory(grad_fn.lower(params, x).compile())
    assert memory is not None, "XLA:CPU gives a memory analysis"
    return memory.temp_bytes


def test_checkpointing_lowers_peak_memory_in_the_compiled_analysis() -> None:
    none, dots, full = _temp_bytes("none"), _temp_bytes("dots"), _temp_bytes("full")
    # Without checkpointing every layer keeps its 4x-wide activations for the backward pass;
    # "full" keeps only each layer's input; "dots" keeps the matmul outputs.
    assert full < dots < none
    assert full < none / 2


def test_remat_wrapper_keeps_values_and_none_is_identity() -> None:
    layer = nnx.Linear(3, 3, rngs=nnx.Rngs(0))

    def fn(m: nnx.Linear, x: jax.Array) -> jax.Array:
        return jnp.tanh(m(x))

    assert remat(fn, "none") is fn
    x = jnp.ones((2, 3))
    np.testing.assert_allclose(remat(fn, "dots")(layer, x), fn(layer, x), rtol=1e-6)


def test_named_policy_saves_only_tagged_values() -> None:
    from jax.ad_checkpoint import checkpoint_name

    policy = remat_policy("names", save_names=("hidden",))

    def f(x: jax.Array) -> jax.Array:
        return jnp.sum(jnp.sin(checkpoint_name(jnp.cos(x), "hidden")))

    grad_named = jax.grad(jax.checkpoint(f, policy=policy))(jnp.ones(4))
    np.testing.assert_allclose(grad_named, jax.grad(f)(jnp.ones(4)), rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "message"),
    [
        ("half", {}, ValueError, "name must be one of none, full, dots, dots_no_batch, names"),
        ("names", {}, ValueError, "needs at least one save_names entry"),
        ("full", {"save_names": ("a",)}, ValueError, "save_names only applies"),
        ("names", {"save_names": (1,)}, TypeError, "save_names must be strings"),
    ],
)
def test_remat_policy_rejects_bad_arguments(
    name: str, kwargs: dict, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        remat_policy(name, **kwargs)


def test_create_stack_validates_and_stacks() -> None:
    with pytest.raises(ValueError, match="num_layers must be an integer >= 1, got 0"):
        create_stack(lambda r: nnx.Linear(2, 2, rngs=r), 0, nnx.Rngs(0))
    stack = create_stack(lambda r: nnx.Linear(2, 2, rngs=r), 3, nnx.Rngs(0))
    kernels = np.asarray(stack.kernel[...])
    assert kernels.shape == (3, 2, 2)
    assert not np.allclose(kernels[0], kernels[1])  # independently initialised
    assert set(REMAT_POLICIES) >= {"none", "full", "dots"}
