"""Schedule-Free AdamW / SGD and the wrapper equal optax.contrib's over 100 jitted steps.

Parameters, every state array and the evaluation parameters are compared (rtol 1e-5), with
a constant learning rate, a warmup, a schedule, weight decay and a narrower ``z``; then the
evaluation-parameter helper, the argument checks and low-precision parameters.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, decay_mask, random_tree, run_steps

import scirs2_optim_jax as so
from scirs2_optim_jax.transforms.schedule_free import ScheduleFreeState

STEPS = 100


def _grads(i: int) -> dict:
    return random_tree(jax.random.fold_in(jax.random.key(7), i), scale=0.5)


def _optax_eval(state, params):
    with jax.numpy_dtype_promotion("standard"):
        return optax.contrib.schedule_free_eval_params(state, params)


def _compare(ours, theirs, rtol: float = 1e-5) -> float:
    """Runs both for STEPS steps; asserts params, state and eval params agree; returns the
    largest relative difference of the parameters."""
    params = random_tree(jax.random.key(3))
    ours_params, ours_state = run_steps(ours, params, _grads, STEPS)
    ref_params, ref_state = run_steps(theirs, params, _grads, STEPS, standard_promotion=True)
    assert_trees_close(ours_params, ref_params, rtol=rtol)
    assert_trees_close(jax.tree.leaves(ours_state), jax.tree.leaves(ref_state), rtol=rtol)
    assert_trees_close(
        so.schedule_free_eval_params(ours_state, ours_params),
        _optax_eval(ref_state, ref_params),
        rtol=rtol,
    )
    return max(
        float(np.max(np.abs(np.float64(a) - np.float64(b)) / (np.abs(np.float64(b)) + 1e-30)))
        for a, b in zip(jax.tree.leaves(ours_params), jax.tree.leaves(ref_params), strict=True)
    )


ADAMW_CASES = {
    "defaults": {},
    "constant": {"learning_rate": 1e-2},
    "warmup_decay": {"learning_rate": 1e-2, "warmup_steps": 10, "weight_decay": 0.05},
    "betas": {"learning_rate": 3e-3, "b1": 0.95, "b2": 0.99, "eps": 1e-6, "weight_lr_power": 1.0},
    "b1_one": {"learning_rate": 1e-2, "b1": 1.0},
    "schedule": {"learning_rate": so.warmup_constant_schedule(0.0, 1e-2, 20)},
}


@pytest.mark.parametrize("case", sorted(ADAMW_CASES))
def test_schedule_free_adamw_matches_optax(case: str) -> None:
    kwargs = ADAMW_CASES[case]
    _compare(so.schedule_free_adamw(**kwargs), optax.contrib.schedule_free_adamw(**kwargs))


def test_schedule_free_adamw_state_dtype_matches_optax() -> None:
    """With a bf16 ``z``, optax rounds the products ``(1 - b1) * z`` to bf16 before adding
    them to float32 parameters; ours keeps them in float32. The two then agree to the
    precision of bf16 (one bf16 rounding of ``z`` is 0.4%)."""
    kwargs = {"learning_rate": 1e-2, "warmup_steps": 5, "state_dtype": jnp.bfloat16}
    ours = so.schedule_free_adamw(**kwargs)
    _compare(ours, optax.contrib.schedule_free_adamw(**kwargs), rtol=1e-2)
    state = ours.init(random_tree(jax.random.key(0)))
    assert {leaf.dtype for leaf in jax.tree.leaves(state.z)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize(
    "kwargs",
    [{"learning_rate": 0.1}, {"learning_rate": 0.1, "warmup_steps": 10, "weight_decay": 0.01}],
    ids=["plain", "warmup_decay"],
)
def test_schedule_free_sgd_matches_optax(kwargs: dict) -> None:
    _compare(so.schedule_free_sgd(**kwargs), optax.contrib.schedule_free_sgd(**kwargs))


def test_schedule_free_wrapper_matches_optax_around_adam() -> None:
    lr = so.warmup_constant_schedule(0.0, 1e-2, 10)
    ours = so.schedule_free(so.adam(lr, b1=0.0), lr, b1=0.9)
    theirs = optax.contrib.schedule_free(optax.adam(lr, b1=0.0), lr, b1=0.9)
    _compare(ours, theirs)


def test_mask_limits_weight_decay_to_the_masked_leaves() -> None:
    params = random_tree(jax.random.key(3))
    zeros = jax.tree.map(jnp.zeros_like, params)
    tx = so.schedule_free_adamw(0.1, weight_decay=0.5, mask=decay_mask)
    updates, _ = tx.update(zeros, tx.init(params), params)
    # Undecayed leaves move only by rounding (x is recomputed from y and z).
    moved = jax.tree.map(lambda u: bool(jnp.max(jnp.abs(u)) > 1e-4), updates)
    assert moved == decay_mask(params)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("schedule_free_adamw", optax.contrib.schedule_free_adamw),
        ("schedule_free_sgd", optax.contrib.schedule_free_sgd),
        ("schedule_free", optax.contrib.schedule_free),
        ("schedule_free_eval_params", optax.contrib.schedule_free_eval_params),
    ],
)
def test_signature_matches_optax(name: str, reference) -> None:
    ours = inspect.signature(getattr(so, name)).parameters
    theirs = inspect.signature(reference).parameters
    assert [p for p in ours if p in theirs] == list(theirs)
    for arg, param in theirs.items():
        assert ours[arg].default == param.default, f"{name}.{arg}"
        assert ours[arg].kind == param.kind, f"{name}.{arg}"
    assert all(ours[a].kind == inspect.Parameter.KEYWORD_ONLY for a in ours if a not in theirs)


def test_state_has_optax_fields_and_z_is_a_copy() -> None:
    params = {"w": jnp.arange(3.0)}
    state = so.schedule_free_adamw().init(params)
    assert state._fields == optax.contrib.ScheduleFreeState._fields
    assert int(state.step_count) == 1 and state.step_count.dtype == jnp.int32
    assert state.z["w"] is not params["w"]
    np.testing.assert_array_equal(state.z["w"], params["w"])


# -- evaluation parameters ---------------------------------------------------------------------


def _trained(tx, steps: int = 5):
    params = random_tree(jax.random.key(3))
    return run_steps(tx, params, _grads, steps)


def test_eval_params_found_inside_a_chain_and_inject_hyperparams() -> None:
    plain_params, plain_state = _trained(so.schedule_free_adamw(1e-2))
    expected = so.schedule_free_eval_params(plain_state, plain_params)
    chained = optax.chain(so.clip_by_global_norm(100.0), so.schedule_free_adamw(1e-2))
    params, state = _trained(chained)
    assert_trees_close(so.schedule_free_eval_params(state, params), expected, atol=1e-6)
    injected = optax.inject_hyperparams(so.schedule_free_adamw)(learning_rate=1e-2)
    params, state = _trained(injected)
    assert_trees_close(so.schedule_free_eval_params(state, params), expected, atol=1e-6)


def test_eval_params_accepts_optax_state_and_equals_x() -> None:
    params, state = _trained(so.schedule_free_sgd(0.1))
    x = so.schedule_free_eval_params(state, params)
    # y = b1 * x + (1 - b1) * z, so x recomputed from y and z gives y back.
    y = jax.tree.map(lambda xi, zi: 0.9 * xi + 0.1 * zi, x, state.z)
    assert_trees_close(y, params, rtol=1e-5, atol=1e-6)
    theirs = optax.contrib.ScheduleFreeState(*state)
    assert_trees_close(so.schedule_free_eval_params(theirs, params), x, rtol=0)


def test_eval_params_keep_the_parameter_dtype() -> None:
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    tx = so.schedule_free_adamw(1e-2, state_dtype=jnp.float32)
    state = tx.init(params)
    assert so.schedule_free_eval_params(state, params)["w"].dtype == jnp.bfloat16


def test_eval_params_errors_name_the_problem() -> None:
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="schedule_free_eval_params: state must hold exactly one"):
        so.schedule_free_eval_params(so.adam(0.1).init(params), params)
    both = (so.schedule_free_sgd().init(params), so.schedule_free_sgd().init(params))
    with pytest.raises(ValueError, match="got tuple with 2 ScheduleFreeStates"):
        so.schedule_free_eval_params(both, params)
    with pytest.raises(ValueError, match=r"schedule_free_eval_params: params do not match"):
        so.schedule_free_eval_params(so.schedule_free_sgd().init(params), {"v": jnp.ones(3)})


# -- argument checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (
            lambda: so.schedule_free_adamw(b1=0.0),
            ValueError,
            r"schedule_free_adamw: b1 must be a number in \(0.0, 1.0\], got 0.0",
        ),
        (lambda: so.schedule_free_adamw(b1=1.5), ValueError, "schedule_free_adamw: b1 .* got 1.5"),
        (lambda: so.schedule_free_adamw(b2=1.0), ValueError, "schedule_free_adamw: b2 .* got 1.0"),
        (
            lambda: so.schedule_free_adamw(eps=0.0),
            ValueError,
            "schedule_free_adamw: eps must be a finite number > 0, got 0.0",
        ),
        (
            lambda: so.schedule_free_adamw(-1.0),
            ValueError,
            "schedule_free_adamw: learning_rate .* got -1.0",
        ),
        (
            lambda: so.schedule_free_adamw(weight_decay=-0.1),
            ValueError,
            "schedule_free_adamw: weight_decay .* got -0.1",
        ),
        (
            lambda: so.schedule_free_adamw(warmup_steps=0),
            ValueError,
            "schedule_free_adamw: warmup_steps must be an integer >= 1 or None, got 0",
        ),
        (
            lambda: so.schedule_free_adamw(warmup_steps=2.5),
            TypeError,
            "schedule_free_adamw: warmup_steps must be an integer",
        ),
        (
            lambda: so.schedule_free_adamw(so.constant_schedule(0.1), warmup_steps=5),
            TypeError,
            "schedule_free_adamw: warmup_steps=5 needs a constant learning_rate",
        ),
        (
            lambda: so.schedule_free_adamw(weight_lr_power=-2.0),
            ValueError,
            "schedule_free_adamw: weight_lr_power must be a finite number >= 0, got -2.0",
        ),
        (
            lambda: so.schedule_free_adamw(state_dtype=jnp.int32),
            ValueError,
            "schedule_free_adamw: state_dtype must be a floating dtype",
        ),
        (
            lambda: so.schedule_free_adamw(nu_dtype="float99"),
            TypeError,
            "schedule_free_adamw: .*nu_dtype must be a dtype",
        ),
        (
            lambda: so.schedule_free_sgd(b1=0.0),
            ValueError,
            r"schedule_free_sgd: b1 must be a number in \(0.0, 1.0\]",
        ),
        (
            lambda: so.schedule_free_sgd(weight_decay=-1.0),
            ValueError,
            "schedule_free_sgd: .*weight_decay .* got -1.0",
        ),
        (
            lambda: so.schedule_free(lambda g: g, 0.1),
            TypeError,
            "schedule_free: base_optimizer must be an optax.GradientTransformation",
        ),
        (
            lambda: so.schedule_free(so.sgd(0.1), "fast"),
            TypeError,
            "schedule_free: learning_rate must be",
        ),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_arguments_are_checked(build, error, match: str) -> None:
    with pytest.raises(error, match=match):
        build()


def test_update_needs_params_and_matching_trees() -> None:
    tx = so.schedule_free_sgd(0.1)
    state = tx.init({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match="schedule_free: update needs params"):
        tx.update({"w": jnp.ones(2)}, state)
    with pytest.raises(ValueError, match="schedule_free: params do not match the state"):
        tx.update({"w": jnp.ones(3)}, state, {"w": jnp.ones(3)})


def test_bf16_params_stay_bf16_and_train() -> None:
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), random_tree(jax.random.key(3)))
    tx = so.schedule_free_adamw(1e-2, warmup_steps=3)
    state = tx.init(params)
    assert state.b1.dtype == jnp.bfloat16 and state.max_lr.dtype == jnp.bfloat16
    new_params, state = run_steps(tx, params, lambda i: jax.tree.map(jnp.sign, params), 10)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(new_params))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(new_params))
    assert isinstance(state, ScheduleFreeState)
