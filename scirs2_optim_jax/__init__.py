"""scirs2-optim-jax: optax-compatible optimizers for JAX, sharding- and memory-aware.

Everything here is a re-export; the implementations live in topical modules.
"""

from scirs2_optim_jax import checkpoint, config, monitor, parallel, precision, schedules
from scirs2_optim_jax.checkpoint import CheckpointCorruptError, CheckpointManager, CheckpointState
from scirs2_optim_jax.config import (
    RunConfig,
    build_optimizer,
    load_config,
    plan_memory,
    production_default,
    select_optimizer,
)
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
from scirs2_optim_jax.parallel import (
    init_distributed,
    make_data_mesh,
    make_data_parallel_step,
    zero,
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
from scirs2_optim_jax.transforms.fused import apply_gradients, chain

__version__ = "0.1.0"

__all__ = [
    "apply_gradients",
    "chain",
    "CheckpointCorruptError",
    "CheckpointManager",
    "CheckpointState",
    "DynamicLossScale",
    "FallbackState",
    "LossScaleState",
    "MasterWeightsState",
    "RunConfig",
    "SkipNonFiniteState",
    "adagrad",
    "adam",
    "adamw",
    "build_optimizer",
    "checkpoint",
    "config",
    "lamb",
    "lars",
    "lion",
    "load_config",
    "init_distributed",
    "make_data_mesh",
    "make_data_parallel_step",
    "monitor",
    "parallel",
    "plan_memory",
    "precision",
    "precision_policy",
    "production_default",
    "fallback_on_failure",
    "radam",
    "rmsprop",
    "schedules",
    "scaled_value_and_grad",
    "select_optimizer",
    "sgd",
    "skip_non_finite",
    "with_master_weights",
    "zero",
    *_schedules_all,
    *_transforms_all,
]
