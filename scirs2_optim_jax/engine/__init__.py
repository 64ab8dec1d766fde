"""The one-pass engine: the core's Adam-family chains as one fused kernel pass.

An accelerator of the core, never a second definition of its math. It is reached through
one seam, :func:`one_pass_step` (and :func:`apply_gradients`, which uses it): the engine
reads the description a core transformation carries and, where it has a one-pass form,
runs the same step in one pass through C++ kernels called with ``jax.ffi`` (built with the
machine's C++ compiler on first use, see :mod:`scirs2_optim_jax.engine.kernels`). Results
equal the core's ``update`` + ``optax.apply_updates`` (to float rounding) and the state is
the core's own, so checkpoints and other optimizers' tools see no difference.
"""

from scirs2_optim_jax.engine.memory import host_device, to_memory
from scirs2_optim_jax.engine.offload import (
    HostStep,
    host_step,
    offload,
    offload_of,
    place_state,
)
from scirs2_optim_jax.engine.onepass import OnePassStep, apply_gradients, one_pass_step

__all__ = [
    "HostStep",
    "OnePassStep",
    "apply_gradients",
    "host_device",
    "host_step",
    "offload",
    "offload_of",
    "one_pass_step",
    "place_state",
    "to_memory",
]
