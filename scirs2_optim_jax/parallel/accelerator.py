"""Accelerator memory settings in effect, read without starting JAX's backend.

JAX's GPU client reads three environment variables once, when the backend starts:
``XLA_PYTHON_CLIENT_PREALLOCATE`` (grab most of the GPU memory up front, JAX's default, or
allocate on demand), ``XLA_PYTHON_CLIENT_MEM_FRACTION`` (the share to preallocate; JAX
0.10 also reads ``XLA_CLIENT_MEM_FRACTION``) and ``XLA_PYTHON_CLIENT_ALLOCATOR``.
:func:`memory_settings_report` says what is in effect, for the device summary of
:func:`~scirs2_optim_jax.parallel.describe_devices`. Whether the backend has started is read
from ``jax._src.xla_bridge.backends_are_initialized`` (JAX keeps its clients in a cache
there), which asks without starting it. Writing the settings from a run's config is the
application's part (``scirs2_optim_jax.config.accelerator.apply_memory_settings``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import jax
from jax._src import xla_bridge

__all__ = [
    "ALLOCATOR_VAR",
    "MEM_FRACTION_VAR",
    "MEM_FRACTION_VAR_NEW",
    "PREALLOCATE_VAR",
    "MemorySettingsReport",
    "backend_initialized",
    "memory_settings_report",
    "read_memory_settings",
]

PREALLOCATE_VAR = "XLA_PYTHON_CLIENT_PREALLOCATE"
MEM_FRACTION_VAR = "XLA_PYTHON_CLIENT_MEM_FRACTION"
MEM_FRACTION_VAR_NEW = "XLA_CLIENT_MEM_FRACTION"
ALLOCATOR_VAR = "XLA_PYTHON_CLIENT_ALLOCATOR"


def backend_initialized() -> bool:
    """Whether JAX has started its backend (asking does not start it).

    Example:
        >>> import jax
        >>> _ = jax.devices()
        >>> backend_initialized()
        True
    """
    return bool(xla_bridge.backends_are_initialized())


def read_memory_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings the environment asks for, parsed as JAX parses them (None: default)."""
    preallocate = environ.get(PREALLOCATE_VAR, "")
    fraction = environ.get(MEM_FRACTION_VAR_NEW, "") or environ.get(MEM_FRACTION_VAR, "")
    allocator = environ.get(ALLOCATOR_VAR, "").lower()
    try:
        parsed_fraction = float(fraction) if fraction else None
    except ValueError:
        parsed_fraction = None
    return {
        "preallocate": preallocate not in ("false", "False", "0") if preallocate else None,
        "memory_fraction": parsed_fraction,
        "allocator": None if allocator in ("", "default") else allocator,
    }


@dataclass(frozen=True)
class MemorySettingsReport:
    """The accelerator memory settings in effect (None: JAX's default).

    Attributes:
        preallocate, memory_fraction, allocator: as the backend reads them.
        variables: the raw environment variables that were set.
        backend_initialized: whether the backend has started (if so, with these).
        platform: the default backend's platform, when it has started.
    """

    preallocate: bool | None
    memory_fraction: float | None
    allocator: str | None
    variables: dict[str, str]
    backend_initialized: bool
    platform: str | None

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data."""
        return asdict(self)

    def describe(self) -> str:
        """Lines for people, e.g. for a device summary."""

        def show(value: Any) -> str:
            return "JAX default" if value is None else str(value)

        state = f"initialised ({self.platform})" if self.backend_initialized else "not started"
        return "\n".join(
            [
                f"accelerator memory: preallocate {show(self.preallocate)}, "
                f"memory fraction {show(self.memory_fraction)}, "
                f"allocator {show(self.allocator)}",
                f"backend: {state}",
            ]
        )


def memory_settings_report(environ: Mapping[str, str] | None = None) -> MemorySettingsReport:
    """Reports the accelerator memory settings and whether the backend has started.

    Does not start the backend.

    Example:
        >>> report = memory_settings_report({"XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
        >>> report.preallocate, report.allocator
        (False, None)
    """
    env = os.environ if environ is None else environ
    initialized = backend_initialized()
    platform = None
    if initialized:
        platform = jax.default_backend()
    names = (PREALLOCATE_VAR, MEM_FRACTION_VAR, MEM_FRACTION_VAR_NEW, ALLOCATOR_VAR)
    return MemorySettingsReport(
        **read_memory_settings(env),
        variables={name: env[name] for name in names if name in env},
        backend_initialized=initialized,
        platform=platform,
    )
