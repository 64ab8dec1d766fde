"""Verified, canonical Orbax checkpoints: async save, retention, integrity, restore anywhere.

Everything here is a re-export; the implementations live in topical modules. The names load
on first use, so a submodule that needs no Orbax (``commands``, whose parser the
``scirs2-optim`` command line builds even for ``--help``) imports without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scirs2_optim_jax.checkpoint.errors import CheckpointCorruptError, CheckpointSaveError
    from scirs2_optim_jax.checkpoint.layout import Layout, opt_state_layout
    from scirs2_optim_jax.checkpoint.manager import (
        CheckpointInfo,
        CheckpointManager,
        CheckpointState,
        Restored,
    )
    from scirs2_optim_jax.checkpoint.preemption import PreemptionGuard
    from scirs2_optim_jax.checkpoint.treespec import register_type

# Public name -> the module that defines it.
_EXPORTS = {
    "CheckpointCorruptError": "errors",
    "CheckpointSaveError": "errors",
    "CheckpointInfo": "manager",
    "CheckpointManager": "manager",
    "CheckpointState": "manager",
    "Layout": "layout",
    "PreemptionGuard": "preemption",
    "Restored": "manager",
    "opt_state_layout": "layout",
    "register_type": "treespec",
}

__all__ = [
    "CheckpointCorruptError",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointSaveError",
    "CheckpointState",
    "Layout",
    "PreemptionGuard",
    "Restored",
    "opt_state_layout",
    "register_type",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
