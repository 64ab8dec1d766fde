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
    "DEFAULT_STEPS",
    "MLP",
    "OPTIMIZERS",
    "REMAT_POLICIES",
    "TRAIN_SIZE",
    "DigitsSplit",
    "TrainLog",
    "TrainResult",
    "apply_stack",
    "check_train_args",
    "create_stack",
    "default_learning_rate",
    "iterate_batches",
    "load_digits_split",
    "make_optimizer",
    "params_sha256",
    "remat",
    "remat_policy",
    "train_digits",
]
