"""Every alias equals optax's same-named optimizer over 100 jitted steps on mixed trees.

Also with a schedule as learning rate and, where the optimizer decays weights, with a
weight-decay mask (a pytree of bools and a callable).
"""

from __future__ import annotations

import inspect

import jax
import optax
import pytest
from helpers import assert_trees_close, decay_mask, random_tree, run_steps

import scirs2_optim_jax as so

STEPS = 100


# Both sides get the same schedule function (ours; optax's own has identical values).
SCHEDULE = so.warmup_cosine_decay_schedule(0.0, 1e-2, 10, 100, 1e-4)

# name -> (kwargs shared by both, name of the mask argument or None)
CASES = {
    "adamw": ({"weight_decay": 0.05}, "mask"),
    "adam": ({"b1": 0.8, "b2": 0.99, "eps_root": 1e-8}, None),
    "lamb": ({"weight_decay": 0.01}, "mask"),
    "lars": (
        {"weight_decay": 1e-3, "trust_coefficient": 0.01, "momentum": 0.8},
        "weight_decay_mask",
    ),
    "sgd": ({"momentum": 0.9, "nesterov": True}, None),
    "lion": ({"weight_decay": 0.01}, "mask"),
    "rmsprop": ({"momentum": 0.5, "centered": True, "bias_correction": True}, None),
    "radam": ({"threshold": 4.0}, None),
    "adagrad": ({"initial_accumulator_value": 0.2}, None),
}
EXTRA_VARIANTS = [
    ("adamw", {"nesterov": True, "weight_decay": 0.01}),
    ("adam", {"mu_dtype": "float32"}),
    ("sgd", {}),
    ("rmsprop", {"eps_in_sqrt": False, "initial_scale": 0.1}),
    ("rmsprop", {"momentum": 0.9, "nesterov": True}),
    ("radam", {"nesterov": True}),
    ("lars", {"nesterov": True, "trust_ratio_mask": False}),
]
LEARNING_RATE = {"lion": 1e-3, "lars": 0.1, "adagrad": 0.05, "sgd": 0.01}


def _grads(i: int) -> dict:
    return random_tree(jax.random.fold_in(jax.random.key(7), i), scale=0.5)


def _compare(name: str, kwargs: dict, learning_rate) -> None:
    params = random_tree(jax.random.key(3))
    ours = getattr(so, name)(learning_rate, **kwargs)
    theirs = getattr(optax, name)(learning_rate, **kwargs)
    ours_params, ours_state = run_steps(ours, params, _grads, STEPS)
    ref_params, ref_state = run_steps(theirs, params, _grads, STEPS, standard_promotion=True)
    assert_trees_close(ours_params, ref_params)
    # Optimizer moments must agree too, not just the parameters.
    ours_arrays = [x for x in jax.tree.leaves(ours_state) if x.ndim > 0]
    ref_arrays = [x for x in jax.tree.leaves(ref_state) if x.ndim > 0]
    assert_trees_close(ours_arrays, ref_arrays)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_optax_constant_learning_rate(name: str) -> None:
    _compare(name, CASES[name][0], LEARNING_RATE.get(name, 1e-2))


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_optax_with_schedule(name: str) -> None:
    _compare(name, CASES[name][0], SCHEDULE)


@pytest.mark.parametrize("name", sorted(n for n, (_, mask) in CASES.items() if mask))
@pytest.mark.parametrize("mask_kind", ["tree", "callable"])
def test_matches_optax_with_weight_decay_mask(name: str, mask_kind: str) -> None:
    kwargs, mask_arg = CASES[name]
    mask = decay_mask if mask_kind == "callable" else decay_mask(random_tree(jax.random.key(0)))
    _compare(name, {**kwargs, mask_arg: mask}, LEARNING_RATE.get(name, 1e-2))


@pytest.mark.parametrize(("name", "kwargs"), EXTRA_VARIANTS)
def test_matches_optax_variants(name: str, kwargs: dict) -> None:
    _compare(name, kwargs, LEARNING_RATE.get(name, 1e-2))


@pytest.mark.parametrize("name", sorted(CASES))
def test_signature_matches_optax(name: str) -> None:
    """Same argument names, order and defaults as optax; our extras keyword-only."""
    ours = inspect.signature(getattr(so, name)).parameters
    theirs = inspect.signature(getattr(optax, name)).parameters
    shared = [p for p in ours if p in theirs]
    assert shared == list(theirs), f"{name}: argument order differs"
    for arg, param in theirs.items():
        assert ours[arg].default == param.default, f"{name}.{arg}: default differs"
        assert ours[arg].kind == param.kind, f"{name}.{arg}: kind differs"
    for arg in ours:
        if arg not in theirs:
            assert ours[arg].kind == inspect.Parameter.KEYWORD_ONLY, f"{name}.{arg}"
