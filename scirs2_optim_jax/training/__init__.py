"""Flax integration and the demo training job: digits data, an NNX MLP, and the loop.

Everything here is a re-export; the implementations live in topical modules.
"""

from scirs2_optim_jax.training.data import DigitsSplit, iterate_batches, load_digits_split
from scirs2_optim_jax.training.loop import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LOG_EVERY,
    DEFAULT_STEPS,
    OPTIMIZERS,
    TRAIN_SIZE,
    TrainLog,
    TrainResult,
    check_train_args,
    default_learning_rate,
    make_optimizer,
    params_sha256,
    train_digits,
)
from scirs2_optim_jax.training.models import MLP

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LOG_EVERY",
    "DEFAULT_STEPS",
    "MLP",
    "OPTIMIZERS",
    "TRAIN_SIZE",
    "DigitsSplit",
    "TrainLog",
    "TrainResult",
    "check_train_args",
    "default_learning_rate",
    "iterate_batches",
    "load_digits_split",
    "make_optimizer",
    "params_sha256",
    "train_digits",
]
