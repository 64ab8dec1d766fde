"""The sum-of-squares kernel and global-norm clipping through it.

``kernels.sum_of_squares`` is held to float64 sums computed by numpy; clipping with
``fused=True`` to the XLA path (``fused=False``) to rtol 1e-6 over 50 steps of AdamW, with
clipping active and not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import run_on_one_device

import scirs2_optim_jax as so
from scirs2_optim_jax.engine import apply_gradients
from scirs2_optim_jax.engine.kernels import GROUP_SIZE, sum_of_squares


def _leaves(seed: int, shapes: list[tuple[int, ...]], scale: float = 1.0) -> list[jax.Array]:
    rng = np.random.default_rng(seed)
    return [jnp.asarray(scale * rng.standard_normal(s), jnp.float32) for s in shapes]


def _float64_sums(leaves: list[jax.Array]) -> np.ndarray:
    return np.array([np.sum(np.square(np.asarray(x, np.float64))) for x in leaves])


# Scalars, an empty leaf, odd sizes, and one leaf split into many chunks across threads.
SHAPES = [(), (0,), (7,), (13, 29), (3, 4, 5, 6), (300_001,), (1,), (1_500_007,)]


def test_sums_match_float64_and_do_not_depend_on_scheduling() -> None:
    leaves = _leaves(0, SHAPES, scale=3.0)
    f = jax.jit(sum_of_squares)
    got = np.asarray(f(leaves))
    np.testing.assert_allclose(got, _float64_sums(leaves), rtol=1e-6)
    assert got[1] == 0.0
    for _ in range(5):  # the chunks of a leaf are added in order, whatever thread ran them
        np.testing.assert_array_equal(np.asarray(f(leaves)), got)


def test_more_leaves_than_one_call_takes() -> None:
    shapes = [(i % 5 + 1, 3) for i in range(GROUP_SIZE + 7)]
    leaves = _leaves(1, shapes)
    got = jax.jit(sum_of_squares)(leaves)
    assert got.shape == (len(shapes),)
    np.testing.assert_allclose(np.asarray(got), _float64_sums(leaves), rtol=1e-6)
    hlo = jax.jit(sum_of_squares).lower(leaves).as_text()
    assert hlo.count("scirs2_sum_squares") == 2


def test_gradient_and_vmap() -> None:
    leaves = _leaves(2, [(5,), (2, 3)])
    grads = jax.grad(lambda xs: jnp.sum(sum_of_squares(xs) * jnp.array([1.0, 3.0])))(leaves)
    np.testing.assert_allclose(np.asarray(grads[0]), 2 * np.asarray(leaves[0]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grads[1]), 6 * np.asarray(leaves[1]), rtol=1e-6)
    batch = jnp.arange(12.0, dtype=jnp.float32).reshape(3, 4)
    got = jax.vmap(lambda x: sum_of_squares([x])[0])(batch)
    np.testing.assert_allclose(np.asarray(got), np.sum(np.square(np.asarray(batch)), axis=1))


def test_rejects_other_dtypes() -> None:
    with pytest.raises(TypeError, match=r"sum_of_squares: leaf 1 must be float32, got bfloat16"):
        sum_of_squares([jnp.ones(3), jnp.ones(3, jnp.bfloat16)])
    assert sum_of_squares([]).shape == (0,)


def _clip_run(fused: bool, max_norm: float) -> tuple:
    shapes = {"w": (64, 33), "b": (33,), "e": (1000, 16)}
    params = dict(zip(shapes, _leaves(3, list(shapes.values())), strict=True))
    tx = so.chain(so.clip_by_global_norm(max_norm, fused=fused), so.adamw(1e-2, fused=False))
    step = jax.jit(lambda p, s, g: apply_gradients(tx, g, s, p))
    state = tx.init(params)
    for i in range(50):
        grads = dict(zip(shapes, _leaves(100 + i, list(shapes.values()), 0.5), strict=True))
        params, state = step(params, state, grads)
    return params, state


@pytest.mark.parametrize("max_norm", [1.0, 1e4])  # clipping active at every step / never
def test_fused_clip_equals_xla_clip(max_norm: float) -> None:
    got, want = _clip_run(True, max_norm), _clip_run(False, max_norm)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_clip_update_is_a_plain_transform_equal_to_optax() -> None:
    """Through ``update`` the clip reduces in XLA and never reaches the engine."""
    grads = {"a": jnp.full((1000,), 3.0), "b": jnp.full((7, 9), -4.0)}
    ours = so.clip_by_global_norm(2.0, fused=True)
    with jax.numpy_dtype_promotion("standard"):
        reference = optax.clip_by_global_norm(2.0)
        want, _ = reference.update(grads, reference.init(grads))
    got, _ = jax.jit(ours.update)(grads, ours.init(grads))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    hlo = jax.jit(ours.update).lower(grads, ours.init(grads)).as_text()
    assert "scirs2_sum_squares" not in hlo


def _clipped_adamw_hlo(tx: optax.GradientTransformation, grads: dict) -> str:
    params = jax.tree.map(jnp.zeros_like, grads)
    step = jax.jit(lambda p, s, g: apply_gradients(tx, g, s, p))
    return step.lower(params, tx.init(params), grads).as_text()


def test_paths_and_errors() -> None:
    grads = {"a": jnp.ones(5)}
    for fused in (False, None):  # None: 8 devices here, so XLA
        tx = so.chain(so.clip_by_global_norm(1.0, fused=fused), so.adamw(1e-3))
        assert "scirs2_sum_squares" not in _clipped_adamw_hlo(tx, grads)
    bf16 = so.chain(so.clip_by_global_norm(1.0, fused=True), so.adamw(1e-3))
    with pytest.raises(ValueError, match=r"clip_by_global_norm: fused=True needs float32 grad"):
        _clipped_adamw_hlo(bf16, {"a": jnp.ones(5, jnp.bfloat16)})
    with pytest.raises(ValueError, match=r"clip_by_global_norm: fused=True does not support"):
        so.clip_by_global_norm(1.0, axis_name="data", fused=True)
    with pytest.raises(TypeError, match=r"clip_by_global_norm: fused must be True, False or"):
        so.clip_by_global_norm(1.0, fused=0)  # type: ignore[arg-type]
    auto = so.clip_by_global_norm(1.0)  # fused=None falls back for bf16 without an error
    got, _ = auto.update({"a": jnp.full(4, 1.0, jnp.bfloat16)}, auto.init(None))
    np.testing.assert_allclose(np.asarray(got["a"], np.float32), 0.5)


def test_auto_uses_kernel_on_one_cpu_device_only_in_the_one_pass_step() -> None:
    code = (
        "import sys, jax, optax, scirs2_optim_jax as so\n"
        "g = {'w': jax.numpy.ones((4, 3))}\n"
        "tx = so.chain(so.clip_by_global_norm(1.0), so.adamw(1e-3))\n"
        "update = jax.jit(tx.update).lower(g, tx.init(g), g).as_text()\n"
        "traced_without_engine = 'scirs2_optim_jax.engine' not in sys.modules\n"
        "step = jax.jit(lambda p, s, g: so.apply_gradients(tx, g, s, p))\n"
        "hlo = step.lower(g, tx.init(g), g).as_text()\n"
        "print(traced_without_engine, 'scirs2_sum_squares' in update,\n"
        "      'scirs2_sum_squares' in hlo, jax.device_count())\n"
    )
    assert run_on_one_device(code) == ["True", "False", "True", "1"]
