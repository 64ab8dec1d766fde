"""scirs2-optim-jax: optax-compatible optimizers for JAX, sharding- and memory-aware.

Everything here is a re-export; the implementations live in topical modules. Importing
the package loads only the core (transforms, optimizers, schedules, precision, resilience;
it needs jax, optax and numpy). The other layers load on first use of one of their names:
``parallel``, ``engine`` (and ``apply_gradients``), ``checkpoint`` (extra ``[checkpoint]``),
``monitor`` (extra ``[monitor]``), ``config``, ``training``, ``bench`` and ``cli``.
"""

import importlib
import warnings
from typing import Any

from scirs2_optim_jax import optimizers, precision, resilience, schedules, transforms, validation
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
from scirs2_optim_jax.precision import (
    DynamicLossScale,
    LossScaleState,
    MasterWeightsState,
    precision_policy,
    scaled_value_and_grad,
    with_master_weights,
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

# Subpackages above the core, loaded on first attribute access.
_SUBPACKAGES = ("bench", "checkpoint", "cli", "config", "engine", "monitor", "parallel", "training")

# name -> the module it is loaded from on first access.
_LAZY = {
    "apply_gradients": "scirs2_optim_jax.engine",
    "CheckpointCorruptError": "scirs2_optim_jax.checkpoint",
    "CheckpointManager": "scirs2_optim_jax.checkpoint",
    "CheckpointState": "scirs2_optim_jax.checkpoint",
    "RunConfig": "scirs2_optim_jax.config",
    "build_optimizer": "scirs2_optim_jax.config",
    "load_config": "scirs2_optim_jax.config",
    "plan_memory": "scirs2_optim_jax.config",
    "production_default": "scirs2_optim_jax.config",
    "select_optimizer": "scirs2_optim_jax.config",
    "init_distributed": "scirs2_optim_jax.parallel",
    "make_data_mesh": "scirs2_optim_jax.parallel",
    "make_data_parallel_step": "scirs2_optim_jax.parallel",
    "zero": "scirs2_optim_jax.parallel",
}

# Engine internals that used to be top-level names: importable with a DeprecationWarning.
_DEPRECATED = ("FactorUpdate", "FusedUpdate", "fused_adam_family")


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"scirs2_optim_jax.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _DEPRECATED:
        warnings.warn(
            f"scirs2_optim_jax.{name} is an engine internal and deprecated; "
            "use scirs2_optim_jax.apply_gradients / scirs2_optim_jax.engine.one_pass_step",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(transforms, name)
    raise AttributeError(f"module 'scirs2_optim_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBPACKAGES) | set(_LAZY))


# The eager names (a star import never loads an optional layer); the lazy ones are listed by
# __dir__ and documented with their subpackages.
__all__ = [
    "DynamicLossScale",
    "FallbackState",
    "LossScaleState",
    "MasterWeightsState",
    "SkipNonFiniteState",
    "adagrad",
    "adam",
    "adamw",
    "fallback_on_failure",
    "lamb",
    "lars",
    "lion",
    "optimizers",
    "precision",
    "precision_policy",
    "radam",
    "resilience",
    "rmsprop",
    "scaled_value_and_grad",
    "schedules",
    "sgd",
    "skip_non_finite",
    "transforms",
    "validation",
    "with_master_weights",
    *_schedules_all,
    *_transforms_all,
]
