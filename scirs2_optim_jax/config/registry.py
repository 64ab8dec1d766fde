"""The optimizers and learning-rate schedules a run can name: the one list of each.

The config (``[optimizer] name``, ``[features] optimizer_variant``, ``[schedule] name``), the
builder (:func:`~scirs2_optim_jax.config.make_optimizer`,
:func:`~scirs2_optim_jax.config.make_schedule`), the demo training job and the
``scirs2-optim`` command all take their names from here.

A schedule name has two accepted spellings: with underscores (``warmup_cosine``, the
canonical one, used in config files) and with hyphens (``warmup-cosine``, used on the
command line and by the training job). :func:`canonical_schedule` maps either to the
canonical one; :func:`command_line_schedule` gives the hyphenated one.

This module needs only the standard library, so the command line can build its parser from
it without starting JAX.

Example:
    >>> OPTIMIZERS[:3], canonical_schedule("f", "Warmup-Cosine")
    (('adamw', 'adam', 'lamb'), 'warmup_cosine')
"""

from __future__ import annotations

import typing
from typing import Any, Literal

__all__ = [
    "COMMAND_LINE_SCHEDULES",
    "HYPERPARAMETER_FIELDS",
    "OFFLOAD_COMPUTE",
    "OPTIMIZERS",
    "OPTIMIZER_FIELDS",
    "SCHEDULES",
    "WHOLE_LEAF_NORMS",
    "OptimizerName",
    "ScheduleName",
    "canonical_optimizer",
    "canonical_schedule",
    "command_line_schedule",
    "normalize_schedule",
]

# Where offload(tx, compute=...) updates an offloaded state (the engine's COMPUTE), for
# the command line, the config and the planner, which must not import JAX to list it.
OFFLOAD_COMPUTE: tuple[str, ...] = ("device", "host")

OptimizerName = Literal[
    "adamw",
    "adam",
    "lamb",
    "lars",
    "sgd",
    "lion",
    "rmsprop",
    "radam",
    "adagrad",
    "adopt",
    "schedule_free_adamw",
    "schedule_free_sgd",
    "muon",
    "adafactor",
]
"""An optimizer alias of :mod:`scirs2_optim_jax.optimizers` that a run can name."""

OPTIMIZERS: tuple[str, ...] = typing.get_args(OptimizerName)

ScheduleName = Literal[
    "warmup_cosine",
    "warmup_constant",
    "constant",
    "cosine",
    "linear",
    "one_cycle",
    "warmup_stable_decay",
]
"""A learning-rate schedule a run can name (canonical spelling); see
:func:`~scirs2_optim_jax.config.make_schedule` for their shapes."""

SCHEDULES: tuple[str, ...] = typing.get_args(ScheduleName)
COMMAND_LINE_SCHEDULES: tuple[str, ...] = tuple(name.replace("_", "-") for name in SCHEDULES)

# The [optimizer] fields that are hyperparameters (besides the name and learning rate).
HYPERPARAMETER_FIELDS: tuple[str, ...] = (
    "weight_decay",
    "b1",
    "b2",
    "eps",
    "momentum",
    "nesterov",
    "mu_dtype",
    "nu_dtype",
)

# For each optimizer: which [optimizer] fields its alias takes, and under which argument name.
OPTIMIZER_FIELDS: dict[str, dict[str, str]] = {
    "adamw": {
        "b1": "b1",
        "b2": "b2",
        "eps": "eps",
        "weight_decay": "weight_decay",
        "nesterov": "nesterov",
        "mu_dtype": "mu_dtype",
        "nu_dtype": "nu_dtype",
    },
    "adam": {
        "b1": "b1",
        "b2": "b2",
        "eps": "eps",
        "nesterov": "nesterov",
        "mu_dtype": "mu_dtype",
        "nu_dtype": "nu_dtype",
    },
    "lamb": {
        "b1": "b1",
        "b2": "b2",
        "eps": "eps",
        "weight_decay": "weight_decay",
        "mu_dtype": "mu_dtype",
        "nu_dtype": "nu_dtype",
    },
    "lars": {
        "weight_decay": "weight_decay",
        "eps": "eps",
        "momentum": "momentum",
        "nesterov": "nesterov",
        "mu_dtype": "accumulator_dtype",
    },
    "sgd": {"momentum": "momentum", "nesterov": "nesterov", "mu_dtype": "accumulator_dtype"},
    "lion": {"b1": "b1", "b2": "b2", "weight_decay": "weight_decay", "mu_dtype": "mu_dtype"},
    "rmsprop": {
        "eps": "eps",
        "momentum": "momentum",
        "nesterov": "nesterov",
        "nu_dtype": "nu_dtype",
    },
    "radam": {
        "b1": "b1",
        "b2": "b2",
        "eps": "eps",
        "nesterov": "nesterov",
        "mu_dtype": "mu_dtype",
        "nu_dtype": "nu_dtype",
    },
    "adagrad": {"eps": "eps", "nu_dtype": "accumulator_dtype"},
    "adopt": {
        "b1": "b1",
        "b2": "b2",
        "eps": "eps",
        "nesterov": "nesterov",
        "mu_dtype": "mu_dtype",
        "nu_dtype": "nu_dtype",
    },
    # b1 is the schedule-free interpolation; mu_dtype stores the iterates z, the state that
    # takes the place of the momentum.
    "schedule_free_adamw": {
        "b1": "b1",
        "b2": "b2",
        "eps": "eps",
        "weight_decay": "weight_decay",
        "mu_dtype": "state_dtype",
        "nu_dtype": "nu_dtype",
    },
    "schedule_free_sgd": {"b1": "b1", "weight_decay": "weight_decay", "mu_dtype": "state_dtype"},
    # momentum is Muon's own decay (beta); b1, b2 are those of the AdamW for non-matrices.
    "muon": {
        "momentum": "beta",
        "b1": "adam_b1",
        "b2": "adam_b2",
        "eps": "eps",
        "weight_decay": "weight_decay",
        "nesterov": "nesterov",
        "mu_dtype": "mu_dtype",
    },
    # momentum (None: none) is an average of the updates stored in mu_dtype; weight decay
    # is Adafactor's weight_decay_rate.
    "adafactor": {
        "momentum": "momentum",
        "eps": "eps",
        "weight_decay": "weight_decay_rate",
        "mu_dtype": "dtype_momentum",
    },
}

# Optimizers whose trust ratios reduce over whole leaves: under ZeRO they take the mesh axis.
WHOLE_LEAF_NORMS: frozenset[str] = frozenset({"lamb", "lars"})


def canonical_optimizer(fn: str, name: Any, *, argument: str = "optimizer") -> str:
    """Returns ``name`` when it is one of :data:`OPTIMIZERS`; raises naming ``fn`` otherwise.

    Example:
        >>> canonical_optimizer("f", "adamx")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: f: optimizer must be one of adamw, adam, lamb, lars, sgd, ..., got 'adamx'
    """
    if isinstance(name, str) and name in OPTIMIZERS:
        return name
    raise ValueError(f"{fn}: {argument} must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def normalize_schedule(name: Any) -> Any:
    """``name`` in the canonical spelling when it names a schedule in either; else unchanged.

    Case and surrounding blanks are ignored, as for every config choice.

    Example:
        >>> normalize_schedule("one-cycle"), normalize_schedule("step")
        ('one_cycle', 'step')
    """
    if isinstance(name, str):
        key = name.strip().lower().replace("-", "_")
        if key in SCHEDULES:
            return key
    return name


def canonical_schedule(
    fn: str, name: Any, *, argument: str = "schedule", hyphens: bool = False
) -> str:
    """The canonical name of the schedule ``name`` (either spelling); raises naming ``fn``.

    Args:
        fn, argument: the function and argument named in the error.
        name: a schedule name, with underscores or hyphens.
        hyphens: list the choices in the hyphenated spelling in the error.

    Example:
        >>> canonical_schedule("f", "warmup-constant")
        'warmup_constant'
        >>> canonical_schedule("f", "step", hyphens=True)
        Traceback (most recent call last):
        ...
        ValueError: f: schedule must be one of warmup-cosine, warmup-constant, constant, cosine, linear, one-cycle, warmup-stable-decay, got 'step'
    """  # noqa: E501
    key = normalize_schedule(name)
    if isinstance(key, str) and key in SCHEDULES:
        return key
    choices = COMMAND_LINE_SCHEDULES if hyphens else SCHEDULES
    raise ValueError(f"{fn}: {argument} must be one of {', '.join(choices)}, got {name!r}")


def command_line_schedule(name: str) -> str:
    """The hyphenated spelling of a schedule name given in either spelling.

    Example:
        >>> command_line_schedule("warmup_cosine")
        'warmup-cosine'
    """
    return canonical_schedule("command_line_schedule", name).replace("_", "-")
