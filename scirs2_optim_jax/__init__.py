"""scirs2-optim-jax: optax-compatible optimizers for JAX, sharding- and memory-aware.

Everything here is a re-export; the implementations live in topical modules.
"""

from scirs2_optim_jax import monitor, schedules
from scirs2_optim_jax.optimizers import (
    adagrad,
    adam,
    adamw,
    lamb,
    lars,
    lion,
    radam,
    rmsprop,
    sgd,
)
from scirs2_optim_jax.resilience import (
    FallbackState,
    SkipNonFiniteState,
    fallback_on_failure,
    skip_non_finite,
)
from scirs2_optim_jax.schedules import *  # noqa: F403
from scirs2_optim_jax.schedules import __all__ as _schedules_all
from scirs2_optim_jax.transforms import *  # noqa: F403
from scirs2_optim_jax.transforms import __all__ as _transforms_all

__version__ = "0.1.0"

__all__ = [
    "FallbackState",
    "SkipNonFiniteState",
    "adagrad",
    "adam",
    "adamw",
    "lamb",
    "lars",
    "lion",
    "monitor",
    "fallback_on_failure",
    "radam",
    "rmsprop",
    "schedules",
    "sgd",
    "skip_non_finite",
    *_schedules_all,
    *_transforms_all,
]
