"""scirs2-optim-jax: optax-compatible optimizers for JAX, sharding- and memory-aware.

Everything here is a re-export; the implementations live in topical modules. Names load
on first use, so that ``import scirs2_optim_jax`` costs nothing until a name is used and
the command line answers ``--help`` without starting JAX: the first core name
(``so.adamw``, ``so.chain``, ``so.warmup_cosine``, ...) loads the core (transforms,
optimizers, schedules, precision, resilience; jax, optax and numpy), which then costs what
``import optax`` costs. The other layers load on first use of one of their names:
``parallel``, ``engine`` (``apply_gradients``, ``offload``), ``checkpoint`` (extra
``[checkpoint]``), ``monitor`` (extra ``[monitor]``), ``config``, ``training``, ``bench``
and ``cli``.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what static tools see; at run time the same names load on first use
    from scirs2_optim_jax import (
        optimizers,
        precision,
        resilience,
        schedules,
        transforms,
        validation,
    )
    from scirs2_optim_jax.optimizers import (
        adagrad,
        adam,
        adamw,
        adopt,
        lamb,
        lars,
        lion,
        radam,
        rmsprop,
        schedule_free_adamw,
        schedule_free_sgd,
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
    from scirs2_optim_jax.transforms import *  # noqa: F403

__version__ = "0.1.0"

# The core's modules, and the modules whose public names (``__all__``) are re-exported here.
_CORE_MODULES = ("optimizers", "precision", "resilience", "schedules", "transforms", "validation")
_CORE_NAMES_FROM = {
    "optimizers": None,  # None: all of the module's __all__ (the aliases)
    "precision": (
        "DynamicLossScale",
        "LossScaleState",
        "MasterWeightsState",
        "precision_policy",
        "scaled_value_and_grad",
        "with_master_weights",
    ),
    "resilience": ("FallbackState", "SkipNonFiniteState", "fallback_on_failure", "skip_non_finite"),
    "schedules": None,  # None: all of the module's __all__
    "transforms": None,
}

# Subpackages above the core, loaded on first attribute access.
_SUBPACKAGES = (
    "bench",
    "checkpoint",
    "cli",
    "config",
    "engine",
    "flax",
    "monitor",
    "parallel",
    "training",
)

# name -> the module it is loaded from on first access.
_LAZY = {
    "apply_gradients": "scirs2_optim_jax.engine",
    "offload": "scirs2_optim_jax.engine",
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


_loading: list[bool] = []


def _load_core() -> list[str]:
    """Imports the core and binds its public names here; returns them (the ``__all__``)."""
    if _loading:  # a name asked for while the core itself is importing: not bound yet
        raise AttributeError("scirs2_optim_jax: the core is still importing")
    _loading.append(True)
    try:
        return _bind_core()
    finally:
        _loading.clear()


def _bind_core() -> list[str]:
    names = list(_CORE_MODULES)
    for module_name in _CORE_MODULES:
        module = importlib.import_module(f"scirs2_optim_jax.{module_name}")
        globals()[module_name] = module
        if module_name not in _CORE_NAMES_FROM:
            continue
        exported = _CORE_NAMES_FROM[module_name] or module.__all__
        for name in exported:
            globals()[name] = getattr(module, name)
        names += exported
    globals()["__all__"] = names
    return names


def __getattr__(name: str) -> Any:
    # A module of the package (``from scirs2_optim_jax import validation`` inside the core
    # asks for it this way before importing it): that module alone.
    if name in _SUBPACKAGES or name in _CORE_MODULES:
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
        return getattr(importlib.import_module("scirs2_optim_jax.transforms"), name)
    if "__all__" not in globals() and not name.startswith("__"):
        _load_core()
        if name in globals():
            return globals()[name]
    if name == "__all__":
        # A star import asks for the core's names: the eager ones (it never loads an
        # optional layer); the lazy ones are listed by dir() and documented with their
        # subpackages.
        return _load_core()
    raise AttributeError(f"module 'scirs2_optim_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    core = globals().get("__all__") or _load_core()
    return sorted(set(globals()) | set(core) | set(_SUBPACKAGES) | set(_LAZY))
