"""so.adafactor equals optax.adafactor over 100 jitted steps; its state, plan and errors."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, decay_mask, random_tree, run_steps

import scirs2_optim_jax as so
from scirs2_optim_jax.config import plan_memory

STEPS = 100
SCHEDULE = so.warmup_cosine_decay_schedule(0.0, 1e-2, 10, 100, 1e-4)


def _tree(key: jax.Array, scale: float = 1.0) -> dict:
    """The mixed test tree plus leaves Adafactor factors at its default threshold (128)."""
    tree = random_tree(key, scale=scale)
    tree["big"] = scale * jax.random.normal(jax.random.fold_in(key, 1), (130, 140))
    tree["stack"] = scale * jax.random.normal(jax.random.fold_in(key, 2), (3, 129, 128))
    return tree


def _grads(i: int) -> dict:
    return _tree(jax.random.fold_in(jax.random.key(7), i), scale=0.5)


CASES = {
    "defaults": {},
    "learning_rate": {"learning_rate": 1e-2},
    "schedule_momentum_decay": {
        "learning_rate": SCHEDULE,
        "momentum": 0.9,
        "weight_decay_rate": 0.01,
        "weight_decay_mask": decay_mask,
    },
    "small_threshold": {"learning_rate": 1e-2, "min_dim_size_to_factor": 2},
    "unfactored_unclipped": {
        "learning_rate": 1e-2,
        "factored": False,
        "clipping_threshold": None,
        "multiply_by_parameter_scale": False,
    },
    "bf16_momentum": {
        "learning_rate": 1e-2,
        "momentum": 0.8,
        "dtype_momentum": jnp.bfloat16,
        "decay_rate": 0.5,
        "eps": 1e-20,
        "clipping_threshold": 2.0,
    },
    "decay_offset": {"learning_rate": 1e-2, "decay_offset": 0, "weight_decay_rate": SCHEDULE},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_optax_adafactor(case: str) -> None:
    params = _tree(jax.random.key(3))
    kwargs = CASES[case]
    ours, ours_state = run_steps(so.adafactor(**kwargs), params, _grads, STEPS)
    ref, _ = run_steps(optax.adafactor(**kwargs), params, _grads, STEPS, standard_promotion=True)
    assert_trees_close(ours, ref, rtol=1e-5, atol=1e-7)
    assert int(ours_state[0].count) == STEPS


def test_signature_matches_optax() -> None:
    ours = inspect.signature(so.adafactor).parameters
    theirs = inspect.signature(optax.adafactor).parameters
    assert list(ours) == list(theirs)
    for arg, param in theirs.items():
        assert ours[arg].default == param.default, arg
        assert ours[arg].kind == param.kind, arg


def test_state_is_factored_where_optax_factors() -> None:
    params = _tree(jax.random.key(0))
    state = so.adafactor().init(params)[0]
    assert isinstance(state, so.FactoredState)
    # (130, 140): means over the largest axis (140) and the second largest (130).
    assert state.factored["big"].v_row.shape == (130,)
    assert state.factored["big"].v_col.shape == (140,)
    assert state.factored["stack"].v_row.shape == (3, 128)  # mean over the 129 axis
    assert state.factored["stack"].v_col.shape == (3, 129)
    assert isinstance(state.v["big"], optax.MaskedNode)
    assert state.v["dense"]["kernel"].shape == (5, 3)
    assert isinstance(state.factored["dense"]["kernel"], optax.MaskedNode)
    assert so.factored_dims((130, 140)) == (0, 1) and so.factored_dims((5, 3)) is None


def test_plan_memory_is_the_factored_state_exactly() -> None:
    params = _tree(jax.random.key(0))
    state = so.adafactor(momentum=0.9, dtype_momentum=jnp.bfloat16).init(params)
    actual = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    plan = plan_memory(params, so.adafactor(momentum=0.9, dtype_momentum=jnp.bfloat16))
    assert plan.optimizer_state_bytes == actual
    # Rows + columns instead of rows x columns: far below Adam's two moments.
    by_name = plan_memory(params, "adafactor").optimizer_state_bytes
    factored = 4 * (130 + 140 + 3 * 129 + 3 * 128)
    rest = {k: leaf for k, leaf in params.items() if k not in ("big", "stack")}
    small = 4 * sum(x.size for x in jax.tree.leaves(rest))
    assert by_name == factored + small + 4
    assert by_name < plan_memory(params, "adam").optimizer_state_bytes / 20


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"learning_rate": -1.0}, ValueError, r"adafactor: learning_rate must be .* got -1\.0"),
        ({"min_dim_size_to_factor": -1}, ValueError, r"min_dim_size_to_factor must be an"),
        ({"min_dim_size_to_factor": 1.5}, TypeError, r"min_dim_size_to_factor must be an integer"),
        ({"decay_offset": -2}, ValueError, r"step_offset must be an integer >= 0, got -2"),
        ({"multiply_by_parameter_scale": 1}, TypeError, r"multiply_by_parameter_scale must be"),
        ({"clipping_threshold": 0.0}, ValueError, r"clipping_threshold must be a finite number"),
        ({"momentum": 1.5}, ValueError, r"momentum must be a number in \[0\.0, 1\.0\], got 1\.5"),
        ({"dtype_momentum": jnp.int8}, ValueError, r"dtype_momentum must be a floating dtype"),
        ({"weight_decay_rate": -0.1}, ValueError, r"weight_decay_rate must be"),
        ({"eps": -1.0}, ValueError, r"epsilon must be a finite number >= 0, got -1\.0"),
        ({"factored": "yes"}, TypeError, r"factored must be a bool, got 'yes'"),
        ({"weight_decay_mask": {"w": 1}}, TypeError, r"weight_decay_mask must be a pytree of"),
    ],
)
def test_errors_name_the_argument(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        so.adafactor(**kwargs)


def test_update_needs_params() -> None:
    tx = so.scale_by_factored_rms()
    g = {"w": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="scale_by_factored_rms: update needs params"):
        tx.update(g, tx.init(g))


def test_param_block_rms_uses_the_whole_leaf() -> None:
    tx = so.scale_by_param_block_rms(min_scale=0.5)
    params = {"w": jnp.array([0.1, 0.1]), "v": jnp.array([3.0, 4.0])}
    u, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    np.testing.assert_allclose(u["w"], 0.5)
    np.testing.assert_allclose(u["v"], np.sqrt(12.5), rtol=1e-6)
