"""Verified, canonical Orbax checkpoints: async save, retention, integrity, restore anywhere.

Everything here is a re-export; the implementations live in topical modules.
"""

from scirs2_optim_jax.checkpoint.errors import CheckpointCorruptError
from scirs2_optim_jax.checkpoint.layout import Layout, opt_state_layout
from scirs2_optim_jax.checkpoint.manager import (
    CheckpointInfo,
    CheckpointManager,
    CheckpointState,
    Restored,
)
from scirs2_optim_jax.checkpoint.preemption import PreemptionGuard
from scirs2_optim_jax.checkpoint.treespec import register_type

__all__ = [
    "CheckpointCorruptError",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointState",
    "Layout",
    "PreemptionGuard",
    "Restored",
    "opt_state_layout",
    "register_type",
]
