"""Mixed precision: dynamic loss scaling, fp32 master weights, and bf16 training that converges."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from scirs2_optim_jax import optimizers
from scirs2_optim_jax.precision import (
    DynamicLossScale,
    LossScaleState,
    MasterWeightsState,
    all_finite,
    cast_floating,
    precision_policy,
    scaled_value_and_grad,
    select_tree,
    with_master_weights,
)
from scirs2_optim_jax.training.data import iterate_batches, load_digits_split
from scirs2_optim_jax.training.models import MLP


def test_loss_scale_grows_after_the_interval_and_backs_off_on_overflow() -> None:
    ls = DynamicLossScale(initial_scale=64.0, growth_interval=3, min_scale=16.0, max_scale=256.0)
    adjust = jax.jit(ls.adjust)
    state = ls.init()
    history = []
    for finite in [True, True, True, True, False, False, False, True, True, True] + [True] * 9:
        state = adjust(jnp.array(finite), state)
        history.append((float(state.scale), int(state.good_steps)))
    assert history[:4] == [(64.0, 1), (64.0, 2), (128.0, 0), (128.0, 1)]
    # Each overflow halves, floored at min_scale, and resets the counter.
    assert history[4:7] == [(64.0, 0), (32.0, 0), (16.0, 0)]
    assert history[7:10] == [(16.0, 1), (16.0, 2), (32.0, 0)]
    assert history[-1][0] == 256.0  # capped at max_scale
    assert state.scale.dtype == jnp.float32 and state.good_steps.dtype == jnp.int32


def test_loss_scaling_keeps_fp16_gradients_from_underflowing() -> None:
    params = jnp.array([0.25, 0.5, -0.75], jnp.float32)

    def loss_fn(p: jax.Array) -> jax.Array:
        # d/dp of sum((1e-4 p)^2) = 2e-8 p: rounds to 0 below fp16's smallest subnormal (6e-8).
        small = p.astype(jnp.float16) * jnp.float16(1e-4)
        return jnp.sum(small * small)

    plain = jax.grad(loss_fn)(params)
    assert np.all(np.asarray(plain) == 0)  # lost to underflow
    ls = DynamicLossScale(initial_scale=2.0**15)
    _, grads, finite, _ = jax.jit(scaled_value_and_grad(loss_fn, ls))(ls.init(), params)
    assert bool(finite) and grads.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(grads), 2e-8 * np.asarray(params), rtol=0.02)


def test_non_finite_step_is_reported_skipped_and_shrinks_the_scale() -> None:
    ls = DynamicLossScale(initial_scale=2.0**15)

    def loss_fn(p: jax.Array, x: jax.Array) -> jax.Array:
        return jnp.sum((p * x).astype(jnp.float16) ** 2)  # overflows fp16 for large x

    grad_fn = jax.jit(scaled_value_and_grad(loss_fn, ls))
    params = jnp.ones(2)
    state = ls.init()
    _, grads, finite, new_state = grad_fn(state, params, jnp.full(2, 1e3))
    assert not bool(finite) and not bool(all_finite(grads))
    assert float(new_state.scale) == 2.0**14 and int(new_state.good_steps) == 0
    kept = select_tree(finite, jax.tree.map(lambda g: params - g, grads), params)
    np.testing.assert_array_equal(np.asarray(kept), np.asarray(params))
    _, grads, finite, _ = grad_fn(new_state, params, jnp.full(2, 1e-1))
    assert bool(finite)


def test_loss_scale_state_is_a_checkpointable_namedtuple() -> None:
    state = DynamicLossScale().init()
    assert isinstance(state, LossScaleState) and state._fields == ("scale", "good_steps")
    leaves, treedef = jax.tree.flatten(state)
    assert jax.tree.unflatten(treedef, leaves) == state


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial_scale": 0.5}, r"initial_scale must be in \[min_scale, max_scale\]"),
        ({"growth_interval": 0}, "growth_interval must be an integer >= 1, got 0"),
        ({"growth_factor": 1.0}, "growth_factor must be > 1, got 1.0"),
        ({"backoff_factor": 1.0}, r"backoff_factor must be a number in \(0.0, 1.0\), got 1.0"),
        ({"max_scale": float("inf")}, "max_scale must be a finite number > 0"),
    ],
)
def test_loss_scale_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DynamicLossScale(**kwargs)


def test_master_weights_accumulate_updates_bf16_would_round_away() -> None:
    tx = with_master_weights(optimizers.sgd(1e-3))
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(20):
        updates, state = step({"w": jnp.ones(4, jnp.bfloat16)}, state, params)
        params = optax.apply_updates(params, updates)
    assert params["w"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(state.master["w"]), 0.98, rtol=1e-6)
    # The bf16 parameters are the master rounded to bf16.
    np.testing.assert_array_equal(
        np.asarray(params["w"]), np.asarray(state.master["w"].astype(jnp.bfloat16))
    )
    # Without the master copy each 1e-3 step is below bf16's resolution at 1.0.
    plain = optimizers.sgd(1e-3)
    p = {"w": jnp.ones(4, jnp.bfloat16)}
    s = plain.init(p)
    for _ in range(20):
        u, s = plain.update({"w": jnp.ones(4, jnp.bfloat16)}, s, p)
        p = optax.apply_updates(p, u)
    assert float(p["w"][0]) == 1.0


def test_master_weights_keep_moments_in_fp32_and_match_fp32_adamw(key: jax.Array) -> None:
    params32 = {"a": jax.random.normal(key, (8, 4)), "b": jnp.zeros(4)}
    params = cast_floating(params32, jnp.bfloat16)
    tx = with_master_weights(optimizers.adamw(1e-2))
    state = tx.init(params)
    assert isinstance(state, MasterWeightsState)
    dtypes = {x.dtype for x in jax.tree.leaves(state.inner_state) if x.ndim}
    assert dtypes == {jnp.dtype(jnp.float32)}
    ref_tx = optimizers.adamw(1e-2)
    ref_params = cast_floating(params, jnp.float32)  # the same starting point
    ref_state = ref_tx.init(ref_params)
    for i in range(5):
        grads32 = jax.tree.map(lambda x, i=i: jnp.cos(x + i), ref_params)
        updates, state = tx.update(cast_floating(grads32, jnp.bfloat16), state, params)
        params = optax.apply_updates(params, updates)
        ref_updates, ref_state = ref_tx.update(
            cast_floating(cast_floating(grads32, jnp.bfloat16), jnp.float32), ref_state, ref_params
        )
        ref_params = optax.apply_updates(ref_params, ref_updates)
    for got, want in zip(jax.tree.leaves(state.master), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)


def test_master_weights_compose_with_nnx_optimizer() -> None:
    model = MLP(64, (16,), 10, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, cast_floating(state, jnp.bfloat16))
    opt = nnx.Optimizer(model, with_master_weights(optimizers.adamw(1e-3)), wrt=nnx.Param)
    x = jnp.ones((4, 64), jnp.bfloat16)

    @nnx.jit
    def step(model: MLP, opt: nnx.Optimizer) -> jax.Array:
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x).astype(jnp.float32) ** 2))(model)
        opt.update(model, grads)
        return loss

    first = step(model, opt)
    for _ in range(5):
        last = step(model, opt)
    assert float(last) < float(first)
    assert model.head.kernel[...].dtype == jnp.bfloat16


def test_with_master_weights_needs_params_and_a_transformation() -> None:
    tx = with_master_weights(optimizers.sgd(0.1))
    state = tx.init({"w": jnp.ones(2, jnp.bfloat16)})
    with pytest.raises(ValueError, match="update needs params"):
        tx.update({"w": jnp.ones(2, jnp.bfloat16)}, state)
    with pytest.raises(TypeError, match=r"inner must be an optax\.GradientTransformation"):
        with_master_weights("adamw")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name must be one of fp32, bf16, fp16, got 'tf32'"):
        precision_policy("tf32")


def _train_digits(mode: str, steps: int = 200) -> float:
    """Trains the digits MLP in ``mode``; returns the final loss on the whole training set."""
    data = load_digits_split(seed=0)
    policy = precision_policy(mode)
    graphdef, params = nnx.split(MLP(rngs=nnx.Rngs(0)))
    params = policy.cast_to_param(params)
    tx: optax.GradientTransformation = optimizers.adamw(3e-3)
    if policy.is_mixed:
        tx = with_master_weights(tx)
    ls = DynamicLossScale(initial_scale=2.0**12, growth_interval=100)

    def loss_fn(p: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        logits = nnx.merge(graphdef, p)(policy.cast_to_compute(x))
        return optax.softmax_cross_entropy_with_integer_labels(
            policy.cast_to_output(logits), y
        ).mean()

    grad_fn = scaled_value_and_grad(loss_fn, ls)

    @jax.jit
    def step(p: Any, s: Any, scale: LossScaleState, x: jax.Array, y: jax.Array) -> Any:
        if policy.is_mixed:
            _, grads, finite, scale = grad_fn(scale, p, x, y)
        else:
            grads, finite = jax.grad(loss_fn)(p, x, y), jnp.array(True)
        updates, new_s = tx.update(grads, s, p)
        new_p = jax.tree.map(lambda a, u: (a + u).astype(a.dtype), p, updates)
        p, s = select_tree(finite, (new_p, new_s), (p, s))
        return p, s, scale

    state, scale = tx.init(params), ls.init()
    batches = iterate_batches(data.x_train, data.y_train, 128, seed=0)
    for _ in range(steps):
        x, y = next(batches)
        params, state, scale = step(params, state, scale, x, y)
    final = jax.jit(loss_fn)(params, data.x_train, data.y_train)
    return float(final)


def test_bf16_and_fp16_training_converges_like_fp32() -> None:
    fp32 = _train_digits("fp32")
    bf16 = _train_digits("bf16")
    fp16 = _train_digits("fp16")
    print(f"final training loss: fp32 {fp32:.4f}, bf16 {bf16:.4f}, fp16 {fp16:.4f}")
    initial = float(np.log(10.0))  # an untrained classifier's loss
    assert fp32 < initial / 10
    for loss in (bf16, fp16):
        assert np.isfinite(loss)
        assert abs(loss - fp32) <= 0.005 + 0.2 * fp32


def test_master_copy_owns_its_buffers_so_params_and_state_can_be_donated() -> None:
    """Leaves already in float32 are copied into the master, not shared with the params."""
    params = {"scale": jnp.ones((3,), jnp.float32), "w": jnp.ones((2, 3), jnp.bfloat16)}
    tx = with_master_weights(optimizers.adamw(1e-2, fused=False))
    state = tx.init(params)
    assert state.master["scale"] is not params["scale"]
    assert state.master["scale"].unsafe_buffer_pointer() != params["scale"].unsafe_buffer_pointer()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p: dict, s: object, g: dict) -> tuple:
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    grads = jax.tree.map(jnp.ones_like, params)
    params, state = step(params, state, grads)  # donating both must not donate one buffer twice
    params, state = step(params, state, grads)
    assert params["scale"].dtype == jnp.float32
