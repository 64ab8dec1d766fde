"""so.muon equals optax.contrib.muon over 100 jitted steps; its pieces and its errors."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from helpers import assert_trees_close, decay_mask, random_tree, run_steps
from optax.contrib import _muon as optax_muon

import scirs2_optim_jax as so

STEPS = 100
SCHEDULE = so.warmup_cosine_decay_schedule(0.0, 1e-2, 10, 100, 1e-4)


def _grads(i: int) -> dict:
    return random_tree(jax.random.fold_in(jax.random.key(7), i), scale=0.5)


def _conv_as_matrix(params: dict) -> dict:
    """The 4-D kernel as a batch of (2*3) x (2*4) matrices, 2-D leaves as matrices, the
    rest to Adam: exercises reshaping and the per-leaf routing."""

    def spec(x: jax.ShapeDtypeStruct) -> so.MuonDimensionNumbers | None:
        if x.ndim == 4:
            return so.MuonDimensionNumbers(reduction_axis=(0, 1), output_axis=(2, 3))
        return so.MuonDimensionNumbers() if x.ndim == 2 else None

    return jax.tree.map(spec, params)


CASES = {
    "defaults": {},
    "no_nesterov_decay": {"nesterov": False, "weight_decay": 0.1},
    "decay_mask_tree": {"weight_decay": 0.1, "weight_decay_mask": "tree"},
    "decay_mask_callable": {"weight_decay": 0.1, "weight_decay_mask": decay_mask},
    "adaptive_aol": {"adaptive": True, "preconditioning": "aol"},
    "dion_schatten_rms": {
        "ns_coeffs": "dion",
        "preconditioning": "schatten",
        "consistent_rms": 0.2,
    },
    "spectral_3_steps": {"preconditioning": "spectral", "ns_steps": 3, "beta": 0.9},
    "adam_options": {
        "adam_b1": 0.8,
        "adam_b2": 0.99,
        "adam_eps_root": 1e-8,
        "adam_weight_decay": 0.01,
        "adam_learning_rate": 3e-3,
    },
    "dimension_numbers_callable": {"muon_weight_dimension_numbers": _conv_as_matrix},
    "dimension_numbers_tree": {"muon_weight_dimension_numbers": "tree"},
}


def _resolve(kwargs: dict) -> dict:
    params = random_tree(jax.random.key(0))
    out = dict(kwargs)
    if out.get("weight_decay_mask") == "tree":
        out["weight_decay_mask"] = decay_mask(params)
    if out.get("muon_weight_dimension_numbers") == "tree":
        out["muon_weight_dimension_numbers"] = {
            "dense": {"kernel": so.MuonDimensionNumbers(), "bias": None},
            "conv": None,
            "scale": None,
            "head": so.MuonDimensionNumbers(reduction_axis=1, output_axis=0),
        }
    return out


def _compare(kwargs: dict, learning_rate) -> None:
    kwargs = _resolve(kwargs)
    params = random_tree(jax.random.key(3))
    ours, _ = run_steps(so.muon(learning_rate, **kwargs), params, _grads, STEPS)
    ref, _ = run_steps(
        optax.contrib.muon(learning_rate, **kwargs), params, _grads, STEPS, standard_promotion=True
    )
    assert_trees_close(ours, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_optax_muon(case: str) -> None:
    _compare(CASES[case], 1e-2)


def test_matches_optax_muon_with_schedule() -> None:
    _compare({"weight_decay": 0.05}, SCHEDULE)


def test_signature_matches_optax() -> None:
    ours = inspect.signature(so.muon).parameters
    theirs = inspect.signature(optax.contrib.muon).parameters
    assert list(ours) == list(theirs)
    for arg, param in theirs.items():
        assert ours[arg].default == param.default, arg
        assert ours[arg].kind == param.kind, arg


def test_orthogonalize_matches_optax_and_orthogonalises() -> None:
    x = jax.random.normal(jax.random.key(1), (6, 9))
    coeffs = jnp.asarray((3.4445, -4.7750, 2.0315))
    for pre in ("frobenius", "spectral", "aol", "schatten"):
        ours = so.orthogonalize_via_newton_schulz(x, coeffs, 5, pre)
        with jax.numpy_dtype_promotion("standard"):
            ref = optax_muon.orthogonalize_via_newton_schulz(x, coeffs, 5, pre)
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    singular = jnp.linalg.svd(so.orthogonalize_via_newton_schulz(x.T, coeffs), compute_uv=False)
    assert bool(jnp.all((singular > 0.6) & (singular < 1.3)))


def test_state_is_muon_momentum_and_adam_moments() -> None:
    params = random_tree(jax.random.key(3))
    state = so.muon(0.1, mu_dtype=jnp.bfloat16).init(params)
    muon_state = state.inner_states["muon"].inner_state[0]
    assert isinstance(muon_state, so.MuonState)
    # Matrices have a momentum in mu_dtype; other leaves are masked out of the Muon branch.
    assert muon_state.mu["dense"]["kernel"].dtype == jnp.bfloat16
    assert isinstance(muon_state.mu["dense"]["bias"], optax.MaskedNode)
    adam_state = state.inner_states["adam"].inner_state[0]
    assert adam_state.mu["dense"]["bias"].shape == (7,)
    assert isinstance(adam_state.mu["dense"]["kernel"], optax.MaskedNode)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"learning_rate": -1.0}, ValueError, r"muon: learning_rate must be .* got -1\.0"),
        ({"ns_steps": 0}, ValueError, r"ns_steps must be an integer >= 1, got 0"),
        ({"ns_coeffs": "fast"}, ValueError, r"ns_coeffs must be one of standard, dion, got"),
        ({"ns_coeffs": (1.0, 2.0)}, ValueError, r"ns_coeffs must have shape \(3,\) or \(n, 3\)"),
        ({"ns_coeffs": "dion", "ns_steps": 3}, ValueError, r"5 rows, more than ns_steps=3"),
        ({"beta": 1.0}, ValueError, r"muon: .*beta must be a number in \[0\.0, 1\.0\)"),
        ({"eps": -1e-8}, ValueError, r"eps must be a finite number >= 0"),
        ({"weight_decay": -0.1}, ValueError, r"weight_decay must be"),
        ({"mu_dtype": jnp.int32}, ValueError, r"mu_dtype must be a floating dtype"),
        ({"nesterov": 1}, TypeError, r"nesterov must be a bool, got 1"),
        ({"preconditioning": "qr"}, ValueError, r"preconditioning must be one of frobenius"),
        ({"adam_b2": 1.5}, ValueError, r"b2 must be a number in \[0\.0, 1\.0\), got 1\.5"),
        ({"consistent_rms": -0.2}, ValueError, r"consistent_rms must be a finite number >= 0"),
        (
            {"muon_weight_dimension_numbers": {"w": 3}},
            TypeError,
            r"muon_weight_dimension_numbers must hold MuonDimensionNumbers or None, got int at "
            r"\['w'\]",
        ),
    ],
)
def test_errors_name_the_argument(kwargs: dict, error: type, match: str) -> None:
    kwargs = {"learning_rate": 0.1, **kwargs}
    with pytest.raises(error, match=match):
        so.muon(**kwargs)


def test_scale_by_muon_refuses_vectors() -> None:
    tx = so.scale_by_muon()
    g = {"b": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"scale_by_muon: leaf 0 has logical shape \(3,\)"):
        tx.update(g, tx.init(g))
