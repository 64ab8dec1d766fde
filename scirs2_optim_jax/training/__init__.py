"""Flax integration and the demo training job: digits data, an NNX MLP, and the loop.

Everything here is a re-export; the implementations live in topical modules: ``data``,
``models``, ``spec`` (a run's spec and options, validated), ``setup`` (mesh, model, state),
``loop`` (the job's steps), ``result`` (what a run returns), ``checkpointing`` (save and
resume), ``devices`` (fake CPU devices), ``report`` (progress bar and summary table),
``remat`` (gradient checkpointing) and ``demo_models`` (the models ``scirs2-optim plan``
knows).

The optimizer and schedule builders the job uses are the package's one builder,
:func:`scirs2_optim_jax.config.make_optimizer` and
:func:`scirs2_optim_jax.config.make_schedule`; ``training.make_optimizer`` and
``training.make_schedule`` still work, with a ``DeprecationWarning``.
"""

import warnings
from typing import Any

from scirs2_optim_jax.config import builder as _builder
from scirs2_optim_jax.training.data import (
    DigitsSplit,
    iterate_batch_indices,
    iterate_batches,
    load_digits_split,
)
from scirs2_optim_jax.training.demo_models import DEMO_MODELS, DemoModel, demo_model
from scirs2_optim_jax.training.devices import DEVICE_COUNT_FLAG, request_cpu_devices
from scirs2_optim_jax.training.errors import RunSetupError
from scirs2_optim_jax.training.loop import train_digits
from scirs2_optim_jax.training.models import MLP
from scirs2_optim_jax.training.remat import (
    REMAT_POLICIES,
    apply_stack,
    create_stack,
    remat,
    remat_policy,
)
from scirs2_optim_jax.training.result import TrainLog, TrainResult, params_sha256
from scirs2_optim_jax.training.spec import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LOG_EVERY,
    DEFAULT_SAVE_EVERY,
    DEFAULT_SCHEDULE,
    DEFAULT_STEPS,
    OPTIMIZERS,
    SCHEDULES,
    TRAIN_SIZE,
    TrainSpec,
    check_train_args,
    default_learning_rate,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LOG_EVERY",
    "DEFAULT_SAVE_EVERY",
    "DEFAULT_SCHEDULE",
    "DEFAULT_STEPS",
    "DEMO_MODELS",
    "DEVICE_COUNT_FLAG",
    "MLP",
    "OPTIMIZERS",
    "REMAT_POLICIES",
    "SCHEDULES",
    "TRAIN_SIZE",
    "DemoModel",
    "DigitsSplit",
    "RunSetupError",
    "TrainLog",
    "TrainResult",
    "TrainSpec",
    "apply_stack",
    "check_train_args",
    "create_stack",
    "default_learning_rate",
    "demo_model",
    "iterate_batch_indices",
    "iterate_batches",
    "load_digits_split",
    "params_sha256",
    "remat",
    "remat_policy",
    "request_cpu_devices",
    "train_digits",
]

# Builders that moved to the config's one builder; the old names warn and forward.
_MOVED = ("make_optimizer", "make_schedule")


def __getattr__(name: str) -> Any:
    """``make_optimizer`` and ``make_schedule``, now in :mod:`scirs2_optim_jax.config`."""
    if name in _MOVED:
        warnings.warn(
            f"scirs2_optim_jax.training.{name} moved to scirs2_optim_jax.config.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(_builder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
