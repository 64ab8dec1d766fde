"""Fused CPU kernels for the optimizer step (Adam/AdamW and LAMB in one pass).

See :mod:`scirs2_optim_jax.engine.kernels.build` for how they are built and
:mod:`scirs2_optim_jax.engine.onepass` for the one-pass step that uses them.
"""

from scirs2_optim_jax.engine.kernels.build import (
    ENV_CACHE_DIR,
    ENV_DISABLE,
    KernelLibrary,
    kernel_cache_dir,
    kernels_available,
    load_kernels,
)
from scirs2_optim_jax.engine.kernels.ops import (
    GROUP_SIZE,
    fused_step,
    group_bounds,
    hyper_vector,
    sum_of_squares,
)

__all__ = [
    "ENV_CACHE_DIR",
    "ENV_DISABLE",
    "GROUP_SIZE",
    "KernelLibrary",
    "fused_step",
    "group_bounds",
    "hyper_vector",
    "kernel_cache_dir",
    "kernels_available",
    "load_kernels",
    "sum_of_squares",
]
