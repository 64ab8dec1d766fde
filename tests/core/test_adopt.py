"""ADOPT equals optax.contrib.adopt over 100 jitted steps; its arguments are checked."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, random_tree, run_steps

import scirs2_optim_jax as so
from scirs2_optim_jax.transforms.adopt import ScaleByAdoptState

STEPS = 100


def _grads(i: int) -> dict:
    return random_tree(jax.random.fold_in(jax.random.key(7), i), scale=0.5)


def _compare(ours, theirs, rtol: float = 1e-5) -> None:
    params = random_tree(jax.random.key(3))
    ours_params, ours_state = run_steps(ours, params, _grads, STEPS)
    ref_params, ref_state = run_steps(theirs, params, _grads, STEPS, standard_promotion=True)
    assert_trees_close(ours_params, ref_params, rtol=rtol)
    assert_trees_close(jax.tree.leaves(ours_state), jax.tree.leaves(ref_state), rtol=rtol)


CASES = {
    "defaults": {},
    "betas": {"b1": 0.8, "b2": 0.99, "eps": 1e-5},
    "nesterov": {"nesterov": True},
    "no_clipping": {"use_clipping": False},
    "nesterov_no_clipping": {"nesterov": True, "use_clipping": False, "b2": 0.999},
    "clip_fn": {"clip_value_fn": lambda count: 0.5 + count.astype(jnp.float32) ** 0.5},
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("lr", ["constant", "schedule"])
def test_adopt_matches_optax(case: str, lr: str) -> None:
    learning_rate = 1e-2 if lr == "constant" else so.warmup_cosine_decay_schedule(0, 1e-2, 10, 100)
    kwargs = CASES[case]
    _compare(so.adopt(learning_rate, **kwargs), optax.contrib.adopt(learning_rate, **kwargs))


def _max_abs_diff(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in pairs)


def test_adopt_mu_dtype_agrees_with_optax_to_bf16_precision() -> None:
    """optax multiplies a bf16 ``mu`` by the (weakly typed) decay in bf16; ours computes in
    float32 and rounds ``mu`` once when storing it. Both stay within bf16 rounding of each
    other, and ours is the closer of the two to the float32-moment run."""
    params = random_tree(jax.random.key(3))
    ours, ours_state = run_steps(so.adopt(1e-2, mu_dtype=jnp.bfloat16), params, _grads, STEPS)
    theirs, _ = run_steps(
        optax.contrib.adopt(1e-2, mu_dtype=jnp.bfloat16),
        params,
        _grads,
        STEPS,
        standard_promotion=True,
    )
    exact, _ = run_steps(so.adopt(1e-2), params, _grads, STEPS)
    assert {x.dtype for x in jax.tree.leaves(ours_state[0].mu)} == {jnp.dtype(jnp.bfloat16)}
    assert _max_abs_diff(ours, theirs) < 1e-2
    assert _max_abs_diff(ours, exact) < _max_abs_diff(theirs, exact)


def test_nu_dtype_sets_the_second_moment_dtype() -> None:
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    tx = so.adopt(1e-2, nu_dtype=jnp.float32)
    state = tx.init(params)
    assert state[0].nu["w"].dtype == jnp.float32 and state[0].mu["w"].dtype == jnp.bfloat16
    for _ in range(3):
        updates, state = tx.update({"w": jnp.ones(4, jnp.bfloat16)}, state, params)
    assert updates["w"].dtype == jnp.bfloat16
    assert isinstance(state[0], ScaleByAdoptState)


def test_first_step_only_initialises_the_second_moment() -> None:
    tx = so.scale_by_adopt()
    state = tx.init({"w": jnp.zeros(3)})
    grads = {"w": jnp.array([3.0, -1.0, 0.5])}
    updates, state = tx.update(grads, state)
    np.testing.assert_array_equal(updates["w"], 0.0)
    np.testing.assert_allclose(state.nu["w"], grads["w"] ** 2)
    assert int(state.count) == 1


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(so.adopt, optax.contrib.adopt), (so.scale_by_adopt, optax.contrib.scale_by_adopt)],
)
def test_signature_matches_optax(ours, theirs) -> None:
    """Same names, order, kinds and defaults; optax's default ``clip_value_fn`` is a lambda,
    ours the named function of the same values."""
    ours_params = inspect.signature(ours).parameters
    theirs_params = inspect.signature(theirs).parameters
    assert [p for p in ours_params if p in theirs_params] == list(theirs_params)
    for arg, param in theirs_params.items():
        assert ours_params[arg].kind == param.kind, arg
        if arg == "clip_value_fn":
            counts = jnp.arange(0, 1000, 7, dtype=jnp.int32)
            with jax.numpy_dtype_promotion("standard"):
                expected = param.default(counts)
            np.testing.assert_array_equal(ours_params[arg].default(counts), expected)
        else:
            assert ours_params[arg].default == param.default, arg
    extras = [a for a in ours_params if a not in theirs_params]
    assert all(ours_params[a].kind == inspect.Parameter.KEYWORD_ONLY for a in extras)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: so.adopt(-0.1), ValueError, "adopt: .*learning_rate .* got -0.1"),
        (lambda: so.adopt(0.1, b1=1.0), ValueError, r"adopt: scale_by_adopt: b1 .*\[0.0, 1.0\)"),
        (lambda: so.adopt(0.1, b2=-0.5), ValueError, "adopt: scale_by_adopt: b2 .* got -0.5"),
        (lambda: so.adopt(0.1, eps=0.0), ValueError, "adopt: scale_by_adopt: eps .* > 0, got 0.0"),
        (lambda: so.adopt(0.1, mu_dtype=jnp.int8), ValueError, "adopt: .*mu_dtype must be a float"),
        (lambda: so.adopt(0.1, nesterov=1), TypeError, "adopt: .*nesterov must be a bool, got 1"),
        (lambda: so.adopt(0.1, use_clipping="yes"), TypeError, "adopt: .*use_clipping must be"),
        (lambda: so.adopt(0.1, clip_value_fn=4.0), TypeError, "adopt: .*clip_value_fn must be"),
    ],
    ids=["lr", "b1", "b2", "eps", "mu_dtype", "nesterov", "use_clipping", "clip_value_fn"],
)
def test_arguments_are_checked(build, error, match: str) -> None:
    with pytest.raises(error, match=match):
        build()


def test_update_checks_the_tree() -> None:
    tx = so.scale_by_adopt()
    state = tx.init({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match="scale_by_adopt: updates do not match the state"):
        tx.update({"w": jnp.ones(3)}, state)


def test_adopt_minimises_a_quadratic_under_jit() -> None:
    tx = so.adopt(0.05)
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    state = tx.init(params)

    def loss(p):
        return jnp.sum(p["w"] ** 2)

    @jax.jit
    def step(p, s):
        updates, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    for _ in range(300):
        params, state = step(params, state)
    assert float(loss(params)) < 1e-2
