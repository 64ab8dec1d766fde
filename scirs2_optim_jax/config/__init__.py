"""Run configuration, the optimizer/schedule registry and builder, selection and planning.

Everything here is a re-export; the implementations live in topical modules:
``schema`` (typed sections), ``loading`` (file + environment), ``flags`` (feature flags),
``registry`` (the optimizer and schedule names), ``builder`` (the one builder of optimizers
and schedules, by name or from a config), ``selection`` (starting-point rules), ``planner``
(memory and batch size) and ``accelerator`` (JAX memory settings).

The names load on first use, so that ``registry`` (standard library only) imports without
JAX: the ``scirs2-optim`` command builds its parser from it, even for ``--help``.

``DEMO_MODELS``, ``DemoModel`` and ``demo_model`` moved to
:mod:`scirs2_optim_jax.training` (they are Flax models of the training job); the names here
still work, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scirs2_optim_jax.config.accelerator import (
        BackendAlreadyInitializedError,
        MemorySettingsReport,
        apply_memory_settings,
        backend_initialized,
        memory_settings_report,
    )
    from scirs2_optim_jax.config.builder import (
        build_loss_scale,
        build_optimizer,
        build_schedule,
        make_optimizer,
        make_schedule,
        optimizer_arguments,
    )
    from scirs2_optim_jax.config.fields import REDACTED, parse_bytes
    from scirs2_optim_jax.config.flags import (
        checkpoint_record,
        config_from_record,
        resolve_optimizer,
    )
    from scirs2_optim_jax.config.loading import (
        CONFIG_FILE_VAR,
        ENV_PREFIX,
        load_config,
        production_default,
        read_config_file,
    )
    from scirs2_optim_jax.config.planner import (
        ActivationProfile,
        BatchSizeRecommendation,
        CompiledMemory,
        MemoryPlan,
        abstract_params,
        compiled_memory,
        compiled_train_step_memory,
        format_bytes,
        host_memory_of_hlo,
        plan_for_config,
        plan_memory,
        profile_activations,
        recommend_batch_size,
        zero_shard_elements,
    )
    from scirs2_optim_jax.config.schema import (
        OPTIMIZER_NAMES,
        AcceleratorConfig,
        CheckpointConfig,
        ClippingConfig,
        FeatureFlags,
        MonitoringConfig,
        OptimizerConfig,
        ParallelConfig,
        PrecisionConfig,
        ResourceConfig,
        RunConfig,
        ScheduleConfig,
    )
    from scirs2_optim_jax.config.selection import OptimizerSelection, select_optimizer

# Public name -> the module of this package that defines it.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "BackendAlreadyInitializedError",
            "MemorySettingsReport",
            "apply_memory_settings",
            "backend_initialized",
            "memory_settings_report",
        ),
        "accelerator",
    ),
    **dict.fromkeys(
        (
            "build_loss_scale",
            "build_optimizer",
            "build_schedule",
            "make_optimizer",
            "make_schedule",
            "optimizer_arguments",
        ),
        "builder",
    ),
    **dict.fromkeys(("REDACTED", "parse_bytes"), "fields"),
    **dict.fromkeys(("checkpoint_record", "config_from_record", "resolve_optimizer"), "flags"),
    **dict.fromkeys(
        ("CONFIG_FILE_VAR", "ENV_PREFIX", "load_config", "production_default", "read_config_file"),
        "loading",
    ),
    **dict.fromkeys(
        (
            "ActivationProfile",
            "BatchSizeRecommendation",
            "CompiledMemory",
            "MemoryPlan",
            "abstract_params",
            "compiled_memory",
            "compiled_train_step_memory",
            "format_bytes",
            "host_memory_of_hlo",
            "plan_for_config",
            "plan_memory",
            "profile_activations",
            "recommend_batch_size",
            "zero_shard_elements",
        ),
        "planner",
    ),
    **dict.fromkeys(
        (
            "OPTIMIZER_NAMES",
            "AcceleratorConfig",
            "CheckpointConfig",
            "ClippingConfig",
            "FeatureFlags",
            "MonitoringConfig",
            "OptimizerConfig",
            "ParallelConfig",
            "PrecisionConfig",
            "ResourceConfig",
            "RunConfig",
            "ScheduleConfig",
        ),
        "schema",
    ),
    **dict.fromkeys(("OptimizerSelection", "select_optimizer"), "selection"),
}

# Names that moved to the training job, with where they live now.
_MOVED = dict.fromkeys(
    ("DEMO_MODELS", "DemoModel", "demo_model"), "scirs2_optim_jax.training.demo_models"
)

__all__ = [
    "CONFIG_FILE_VAR",
    "ENV_PREFIX",
    "OPTIMIZER_NAMES",
    "REDACTED",
    "AcceleratorConfig",
    "ActivationProfile",
    "BackendAlreadyInitializedError",
    "BatchSizeRecommendation",
    "CheckpointConfig",
    "ClippingConfig",
    "CompiledMemory",
    "FeatureFlags",
    "MemoryPlan",
    "MemorySettingsReport",
    "MonitoringConfig",
    "OptimizerConfig",
    "OptimizerSelection",
    "ParallelConfig",
    "PrecisionConfig",
    "ResourceConfig",
    "RunConfig",
    "ScheduleConfig",
    "abstract_params",
    "apply_memory_settings",
    "backend_initialized",
    "build_loss_scale",
    "build_optimizer",
    "build_schedule",
    "checkpoint_record",
    "compiled_memory",
    "compiled_train_step_memory",
    "config_from_record",
    "format_bytes",
    "host_memory_of_hlo",
    "load_config",
    "make_optimizer",
    "make_schedule",
    "memory_settings_report",
    "optimizer_arguments",
    "parse_bytes",
    "plan_for_config",
    "plan_memory",
    "production_default",
    "profile_activations",
    "read_config_file",
    "recommend_batch_size",
    "resolve_optimizer",
    "select_optimizer",
    "zero_shard_elements",
]


def __getattr__(name: str) -> Any:
    """Loads a public name from its module on first use (and the moved ones, warning)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    if name in _MOVED:
        warnings.warn(
            f"scirs2_optim_jax.config.{name} moved to {_MOVED[name]}.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        from scirs2_optim_jax.training import demo_models  # deprecated path; see the docstring

        return getattr(demo_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
