"""Each elementary transform against optax's same-named transform, or a closed form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, decay_mask, random_tree, run_steps

import scirs2_optim_jax as so


def _linear_decay(count: jax.Array) -> jax.Array:
    return 0.1 * (1.0 - count.astype(jnp.float32) / 50.0)


# (ours, optax's), both built from the same arguments.
PAIRS = {
    "scale_by_adam": (so.scale_by_adam(), optax.scale_by_adam()),
    "scale_by_adam_eps_root_nesterov": (
        so.scale_by_adam(b1=0.8, eps_root=1e-6, nesterov=True),
        optax.scale_by_adam(b1=0.8, eps_root=1e-6, nesterov=True),
    ),
    "scale_by_rms": (so.scale_by_rms(decay=0.8), optax.scale_by_rms(decay=0.8)),
    "scale_by_rms_corrected": (
        so.scale_by_rms(eps_in_sqrt=False, bias_correction=True, initial_scale=0.5),
        optax.scale_by_rms(eps_in_sqrt=False, bias_correction=True, initial_scale=0.5),
    ),
    "scale_by_stddev": (so.scale_by_stddev(), optax.scale_by_stddev()),
    "scale_by_radam": (so.scale_by_radam(threshold=3.0), optax.scale_by_radam(threshold=3.0)),
    "scale_by_rss": (so.scale_by_rss(0.3, 1e-6), optax.scale_by_rss(0.3, 1e-6)),
    "trace": (so.trace(0.9), optax.trace(0.9)),
    "trace_nesterov": (so.trace(0.5, nesterov=True), optax.trace(0.5, nesterov=True)),
    "scale_by_lion": (so.scale_by_lion(0.8, 0.95), optax.scale_by_lion(0.8, 0.95)),
    "scale_by_trust_ratio": (
        so.scale_by_trust_ratio(min_norm=0.5, trust_coefficient=0.3, eps=1e-3),
        optax.scale_by_trust_ratio(min_norm=0.5, trust_coefficient=0.3, eps=1e-3),
    ),
    "add_decayed_weights": (so.add_decayed_weights(0.1), optax.add_decayed_weights(0.1)),
    "add_decayed_weights_mask": (
        so.add_decayed_weights(0.1, decay_mask),
        optax.add_decayed_weights(0.1, decay_mask),
    ),
    "add_decayed_weights_schedule": (
        so.add_decayed_weights(_linear_decay),
        optax.add_decayed_weights(_linear_decay),
    ),
    "scale_by_learning_rate": (
        so.scale_by_learning_rate(0.3),
        optax.scale_by_learning_rate(0.3),
    ),
    "scale_by_learning_rate_schedule": (
        so.scale_by_learning_rate(_linear_decay),
        optax.scale_by_learning_rate(_linear_decay),
    ),
    "clip": (so.clip(0.5), optax.clip(0.5)),
    "clip_by_global_norm": (so.clip_by_global_norm(2.0), optax.clip_by_global_norm(2.0)),
    "clip_by_block_rms": (so.clip_by_block_rms(0.7), optax.clip_by_block_rms(0.7)),
    "adaptive_grad_clip": (so.adaptive_grad_clip(0.1), optax.adaptive_grad_clip(0.1)),
    "adaptive_grad_clip_axis": (
        so.adaptive_grad_clip(0.1, eps=1e-2, axis=-1),
        optax.adaptive_grad_clip(0.1, eps=1e-2, axis=-1),
    ),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_transform_matches_optax(name: str) -> None:
    ours, theirs = PAIRS[name]
    # An explicit AGC axis does not exist on a scalar leaf: leave the scalar out there.
    drop = {"scale"} if name.endswith("_axis") else set()

    def tree(key: jax.Array, scale: float = 1.0) -> dict:
        return {k: v for k, v in random_tree(key, scale=scale).items() if k not in drop}

    params = tree(jax.random.key(0))

    def grads(i: int) -> dict:
        return tree(jax.random.fold_in(jax.random.key(1), i), scale=1.5)

    actual, ours_state = run_steps(ours, params, grads, 30)
    expected, their_state = run_steps(theirs, params, grads, 30, standard_promotion=True)
    assert_trees_close(actual, expected)
    ours_arrays = [x for x in jax.tree.leaves(ours_state) if jnp.ndim(x) > 0]
    their_arrays = [x for x in jax.tree.leaves(their_state) if jnp.ndim(x) > 0]
    assert_trees_close(ours_arrays, their_arrays)


def test_clip_by_leaf_norm_closed_form() -> None:
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4]), "c": jnp.zeros(2)}
    updates, _ = so.clip_by_leaf_norm(1.0).update(grads, optax.EmptyState())
    np.testing.assert_allclose(updates["a"], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(updates["b"], [0.3, 0.4], rtol=1e-6)
    np.testing.assert_array_equal(updates["c"], [0.0, 0.0])


def test_clip_by_global_norm_closed_form() -> None:
    grads = {"a": jnp.array([6.0]), "b": jnp.array([8.0])}  # global norm 10
    updates, _ = so.clip_by_global_norm(5.0).update(grads, optax.EmptyState())
    np.testing.assert_allclose([updates["a"][0], updates["b"][0]], [3.0, 4.0], rtol=1e-6)


@pytest.mark.parametrize(
    ("mu_dtype", "nu_dtype"),
    [(jnp.bfloat16, None), (None, jnp.bfloat16), (jnp.float32, jnp.float32)],
)
def test_adam_moment_dtypes(mu_dtype, nu_dtype) -> None:
    """Moments are stored in the requested dtypes; bf16 params can keep fp32 moments."""
    tx = so.scale_by_adam(mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    params = random_tree(jax.random.key(0), dtype=jnp.bfloat16)
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(random_tree(jax.random.key(1), jnp.bfloat16), state)
    for leaf in jax.tree.leaves(state.mu):
        assert leaf.dtype == (mu_dtype or jnp.bfloat16)
    for leaf in jax.tree.leaves(state.nu):
        assert leaf.dtype == (nu_dtype or jnp.bfloat16)
    for leaf in jax.tree.leaves(updates):
        assert leaf.dtype == jnp.bfloat16


def test_adam_fp32_moments_with_bf16_gradients_match_fp32_run() -> None:
    """With fp32 moments, bf16 gradients give the fp32 result up to the final rounding."""
    grads32 = [random_tree(jax.random.key(i)) for i in range(5)]
    grads16 = [jax.tree.map(lambda g: g.astype(jnp.bfloat16), g) for g in grads32]
    grads_up = [jax.tree.map(lambda g: g.astype(jnp.float32), g) for g in grads16]
    wide = so.scale_by_adam(mu_dtype=jnp.float32, nu_dtype=jnp.float32)
    state16 = wide.init(grads16[0])
    state32 = so.scale_by_adam().init(grads_up[0])
    for g16, g32 in zip(grads16, grads_up, strict=True):
        u16, state16 = wide.update(g16, state16)
        u32, state32 = so.scale_by_adam().update(g32, state32)
    assert_trees_close(state16.nu, state32.nu, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(u16), jax.tree.leaves(u32), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=1e-2, atol=1e-2)


def test_trace_accumulator_dtype() -> None:
    tx = so.trace(0.9, accumulator_dtype=jnp.bfloat16)
    params = random_tree(jax.random.key(0))
    updates, state = tx.update(params, tx.init(params))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state.trace))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(updates))


def test_lars_trust_ratio_closed_form() -> None:
    params = {"w": jnp.array([3.0, 4.0]), "b": jnp.array([1.0])}
    grads = {"w": jnp.array([0.0, 2.0]), "b": jnp.array([5.0])}
    tx = so.scale_by_lars_trust_ratio(0.01, mask={"w": True, "b": False})
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [0.0, 0.01 * 5.0 / 2.0 * 2.0], rtol=1e-6)
    np.testing.assert_array_equal(updates["b"], [5.0])


def test_global_norm_accumulates_bf16_in_fp32() -> None:
    leaf = jnp.full((4096,), 0.01, jnp.bfloat16)
    norm = so.global_norm({"x": leaf})
    assert norm.dtype == jnp.float32
    np.testing.assert_allclose(norm, np.sqrt(4096) * float(leaf[0]), rtol=1e-5)


def test_adaptive_grad_clip_bad_axis_names_the_leaf() -> None:
    params = {"w": jnp.ones((2, 3)), "s": jnp.ones(())}
    tx = so.adaptive_grad_clip(0.1, axis=-1)
    with pytest.raises(ValueError, match=r"adaptive_grad_clip: axis=-1 .*\['s'\] of shape \(\)"):
        tx.update(params, tx.init(params), params)
