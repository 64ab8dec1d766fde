"""Run configuration, optimizer selection, mixed-precision setup and memory planning.

Everything here is a re-export; the implementations live in topical modules:
``schema`` (typed sections), ``loading`` (file + environment), ``flags`` (feature flags),
``builder`` (optimizer from config), ``selection`` (starting-point rules), ``planner``
(memory and batch size), ``accelerator`` (JAX memory settings), ``demo_models`` (named
models for ``scirs2-optim plan``) and ``commands`` (the CLI subcommand).
"""

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
    optimizer_arguments,
)
from scirs2_optim_jax.config.demo_models import DEMO_MODELS, DemoModel, demo_model
from scirs2_optim_jax.config.fields import REDACTED, parse_bytes
from scirs2_optim_jax.config.flags import checkpoint_record, config_from_record, resolve_optimizer
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

__all__ = [
    "CONFIG_FILE_VAR",
    "DEMO_MODELS",
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
    "DemoModel",
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
    "demo_model",
    "format_bytes",
    "load_config",
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
