"""Flax integration and the demo training job: digits data, an NNX MLP, and the loop.

Everything here is a re-export; the implementations live in topical modules: ``data``,
``models``, ``loop`` (the job), ``checkpointing`` (save and resume), ``devices`` (fake CPU
devices), ``report`` (progress bar and summary table), ``remat`` (gradient checkpointing).
"""

from scirs2_optim_jax.training.data import (
    DigitsSplit,
    iterate_batch_indices,
    iterate_batches,
    load_digits_split,
)
from scirs2_optim_jax.training.devices import DEVICE_COUNT_FLAG, request_cpu_devices
from scirs2_optim_jax.training.errors import RunSetupError
from scirs2_optim_jax.training.loop import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LOG_EVERY,
    DEFAULT_SAVE_EVERY,
    DEFAULT_SCHEDULE,
    DEFAULT_STEPS,
    OPTIMIZERS,
    SCHEDULES,
    TRAIN_SIZE,
    TrainLog,
    TrainResult,
    TrainSpec,
    check_train_args,
    default_learning_rate,
    make_optimizer,
    make_schedule,
    params_sha256,
    train_digits,
)
from scirs2_optim_jax.training.models import MLP
from scirs2_optim_jax.training.remat import (
    REMAT_POLICIES,
    apply_stack,
    create_stack,
    remat,
    remat_policy,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LOG_EVERY",
    "DEFAULT_SAVE_EVERY",
    "DEFAULT_SCHEDULE",
    "DEFAULT_STEPS",
    "DEVICE_COUNT_FLAG",
    "MLP",
    "OPTIMIZERS",
    "REMAT_POLICIES",
    "SCHEDULES",
    "TRAIN_SIZE",
    "DigitsSplit",
    "RunSetupError",
    "TrainLog",
    "TrainResult",
    "TrainSpec",
    "apply_stack",
    "check_train_args",
    "create_stack",
    "default_learning_rate",
    "iterate_batch_indices",
    "iterate_batches",
    "load_digits_split",
    "make_optimizer",
    "make_schedule",
    "params_sha256",
    "remat",
    "remat_policy",
    "request_cpu_devices",
    "train_digits",
]
