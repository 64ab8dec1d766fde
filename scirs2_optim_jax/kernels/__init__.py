"""Deprecated: the kernels moved to :mod:`scirs2_optim_jax.engine.kernels`."""

import warnings

from scirs2_optim_jax.engine.kernels import *  # noqa: F403
from scirs2_optim_jax.engine.kernels import __all__  # noqa: F401

warnings.warn(
    "scirs2_optim_jax.kernels is deprecated: use scirs2_optim_jax.engine.kernels",
    DeprecationWarning,
    stacklevel=2,
)
