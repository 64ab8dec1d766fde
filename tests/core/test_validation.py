"""Bad input fails loudly: factories name the function, argument and value; updates with a
mismatched tree name the first differing path."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import pytest

import scirs2_optim_jax as so

BAD_ARGUMENTS = [
    # (factory, kwargs, argument named in the message, value shown)
    ("adamw", {"learning_rate": -0.1}, "learning_rate", "-0.1"),
    ("adamw", {"learning_rate": math.nan}, "learning_rate", "nan"),
    ("adamw", {"learning_rate": 1e-3, "b1": 1.0}, "b1", "1.0"),
    ("adamw", {"learning_rate": 1e-3, "b2": -0.5}, "b2", "-0.5"),
    ("adamw", {"learning_rate": 1e-3, "eps": 0.0}, "eps", "0.0"),
    ("adamw", {"learning_rate": 1e-3, "weight_decay": -1e-4}, "weight_decay", "-0.0001"),
    ("adamw", {"learning_rate": 1e-3, "mu_dtype": jnp.int32}, "mu_dtype", "int32"),
    ("adam", {"learning_rate": "fast"}, "learning_rate", "'fast'"),
    ("adam", {"learning_rate": 1e-3, "eps_root": -1.0}, "eps_root", "-1.0"),
    ("lamb", {"learning_rate": 1e-3, "b1": 1.5}, "b1", "1.5"),
    ("lamb", {"learning_rate": 1e-3, "mask": {"w": "yes"}}, "mask", "str"),
    ("lars", {"learning_rate": 0.1, "momentum": 1.5}, "momentum", "1.5"),
    ("lars", {"learning_rate": 0.1, "trust_coefficient": 0.0}, "trust_coefficient", "0.0"),
    ("sgd", {"learning_rate": math.inf}, "learning_rate", "inf"),
    ("sgd", {"learning_rate": 0.1, "momentum": -0.1}, "momentum", "-0.1"),
    ("lion", {"learning_rate": 1e-4, "b2": 1.0}, "b2", "1.0"),
    ("rmsprop", {"learning_rate": 1e-3, "decay": 2.0}, "decay", "2.0"),
    ("radam", {"learning_rate": 1e-3, "threshold": 0.0}, "threshold", "0.0"),
    (
        "adagrad",
        {"learning_rate": 1e-3, "initial_accumulator_value": -1.0},
        "initial_accumulator_value",
        "-1.0",
    ),
    ("clip_by_global_norm", {"max_norm": 0.0}, "max_norm", "0.0"),
    ("clip_by_global_norm", {"max_norm": -1.0}, "max_norm", "-1.0"),
    ("clip", {"max_delta": -1.0}, "max_delta", "-1.0"),
    ("clip_by_block_rms", {"threshold": 0.0}, "threshold", "0.0"),
    ("clip_by_leaf_norm", {"max_norm": math.nan}, "max_norm", "nan"),
    ("adaptive_grad_clip", {"clipping": -0.01}, "clipping", "-0.01"),
    ("trace", {"decay": 1.1}, "decay", "1.1"),
    ("scale_by_adam", {"b1": -0.1}, "b1", "-0.1"),
    ("scale_by_rss", {"eps": -1e-7}, "eps", "-1e-07"),
    # A negative weight decay is fine for add_decayed_weights (as in optax), not for aliases.
    ("add_decayed_weights", {"weight_decay": math.inf}, "weight_decay", "inf"),
    ("lion", {"learning_rate": 1e-3, "weight_decay": -0.1}, "weight_decay", "-0.1"),
    ("lamb", {"learning_rate": 1e-3, "weight_decay": -0.1}, "weight_decay", "-0.1"),
    ("scale_by_lion", {"mode": "soft"}, "mode", "soft"),
    ("scale_by_lion", {"mode": "smooth", "smooth_beta": 0.0}, "smooth_beta", "0.0"),
    ("scale_by_adam", {"mu_dtype": "int32"}, "mu_dtype", "int32"),
    ("scale_by_learning_rate", {"learning_rate": -1.0}, "learning_rate", "-1.0"),
    ("scale_by_trust_ratio", {"min_norm": -1.0}, "min_norm", "-1.0"),
]


@pytest.mark.parametrize(("factory", "kwargs", "argument", "shown"), BAD_ARGUMENTS)
def test_factory_rejects_bad_argument(
    factory: str, kwargs: dict, argument: str, shown: str
) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        getattr(so, factory)(**kwargs)
    message = str(info.value)
    assert message.startswith(f"{factory}:"), message
    assert argument in message, message
    assert shown in message, message


def test_numeric_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match=r"^adamw: .*learning_rate must be .*got -0\.1$"):
        so.adamw(-0.1)


def test_valid_edge_values_are_accepted() -> None:
    so.sgd(0.0)  # a zero learning rate is legal (frozen run, warm-up from zero)
    so.adamw(1e-3, b1=0.0, weight_decay=0.0)
    so.lars(0.1, momentum=1.0, eps=0.0)
    so.adamw(jnp.asarray(1e-3))  # jax scalars, as inject_hyperparams passes them
    so.adamw(lambda count: 1e-3)  # schedules


def _params() -> dict:
    return {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}, "out": jnp.ones(4)}


@pytest.mark.parametrize("name", ["adamw", "lamb", "lars", "sgd", "lion", "rmsprop", "adagrad"])
def test_mismatched_tree_names_first_differing_path(name: str) -> None:
    kwargs = {"momentum": 0.9} if name == "sgd" else {}
    tx = getattr(so, name)(1e-3, **kwargs)
    params = _params()
    state = tx.init(params)
    grads = {"dense": {"kernel": jnp.ones((3, 2)), "b": jnp.zeros(2)}, "out": jnp.ones(4)}
    with pytest.raises(ValueError, match=re.escape("['dense']['b']")):
        jax.jit(tx.update)(grads, state, params)


def test_mismatched_leaf_shape_names_path_and_shapes() -> None:
    tx = so.adamw(1e-3)
    params = _params()
    grads = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(2)}, "out": jnp.ones(4)}
    with pytest.raises(ValueError, match=r"\['dense'\]\['kernel'\].*float32\[2, 3\].*\[3, 2\]"):
        tx.update(grads, tx.init(params), params)


def test_missing_leaf_is_named() -> None:
    tx = so.adam(1e-3)
    params = _params()
    grads = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    with pytest.raises(ValueError, match=r"\['out'\]"):
        tx.update(grads, tx.init(params), params)


def test_a_missing_key_is_named_not_the_leaf_after_it() -> None:
    """A gradient tree without 'b' names 'b' as missing, not the next leaf ('w')."""
    tx = so.adamw(1e-3)
    params = {"a": jnp.ones(2), "b": jnp.ones(3), "w": jnp.ones(4)}
    grads = {"a": jnp.ones(2), "w": jnp.ones(4)}
    with pytest.raises(ValueError, match=re.escape("adamw: scale_by_adam: updates do not")) as err:
        tx.update(grads, tx.init(params), params)
    assert "['b'] missing (the state has it)" in str(err.value)
    assert "['w']" not in str(err.value)
    extra = {**params, "z": jnp.ones(1)}
    with pytest.raises(ValueError, match=re.escape("['z'] not in the state")):
        tx.update(extra, tx.init(params), params)


def test_transforms_needing_params_say_so() -> None:
    tx = so.lamb(1e-3)
    params = _params()
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, tx.init(params))
