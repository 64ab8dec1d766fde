"""Accelerator memory settings: applied before JAX starts its backend, and reported.

JAX's GPU client reads three environment variables once, when the backend starts (the
first ``jax.devices()``, array or jit call), never again:

- ``XLA_PYTHON_CLIENT_PREALLOCATE``: grab most of the GPU memory up front (JAX's default)
  or allocate on demand (``false``);
- ``XLA_PYTHON_CLIENT_MEM_FRACTION``: the share of GPU memory to preallocate (JAX 0.10 also
  reads ``XLA_CLIENT_MEM_FRACTION``; this module writes whichever one is already set, the
  first otherwise: setting both is an error in jaxlib);
- ``XLA_PYTHON_CLIENT_ALLOCATOR``: ``default`` (BFC), ``platform`` (allocate and free
  exactly, slow, for debugging), ``bfc`` or ``cuda_async``.

:func:`apply_memory_settings` writes them from ``[accelerator]``; called after the backend
has started with other values, it raises :class:`BackendAlreadyInitializedError` rather
than pretend. :func:`memory_settings_report` (from :mod:`scirs2_optim_jax.parallel.accelerator`)
says what is in effect. CPU runs ignore all three.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from typing import Any

from scirs2_optim_jax.config.schema import AcceleratorConfig, RunConfig
from scirs2_optim_jax.parallel.accelerator import (
    ALLOCATOR_VAR,
    MEM_FRACTION_VAR,
    MEM_FRACTION_VAR_NEW,
    PREALLOCATE_VAR,
    MemorySettingsReport,
    backend_initialized,
    memory_settings_report,
    read_memory_settings,
)

__all__ = [
    "ALLOCATOR_VAR",
    "MEM_FRACTION_VAR",
    "MEM_FRACTION_VAR_NEW",
    "PREALLOCATE_VAR",
    "BackendAlreadyInitializedError",
    "MemorySettingsReport",
    "apply_memory_settings",
    "backend_initialized",
    "memory_settings_report",
]


class BackendAlreadyInitializedError(RuntimeError):
    """JAX's backend already started with memory settings other than the config's."""


def _fraction_var(environ: Mapping[str, str]) -> str:
    return MEM_FRACTION_VAR_NEW if environ.get(MEM_FRACTION_VAR_NEW) else MEM_FRACTION_VAR


def _show(value: Any) -> str:
    return "the JAX default" if value is None else repr(value)


def _wanted(settings: AcceleratorConfig) -> dict[str, Any]:
    return {
        "preallocate": settings.preallocate,
        "memory_fraction": settings.memory_fraction,
        "allocator": None if settings.allocator in (None, "default") else settings.allocator,
    }


def apply_memory_settings(
    settings: AcceleratorConfig | RunConfig, environ: MutableMapping[str, str] | None = None
) -> dict[str, str]:
    """Writes the accelerator memory settings into the environment, before JAX starts.

    Unset (None) settings leave the environment as it is. If the backend has already
    started, nothing is written; that is fine when the environment already holds the same
    values, and an error otherwise.

    Args:
        settings: ``[accelerator]``, or a whole :class:`RunConfig`.
        environ: the environment to write (default: ``os.environ``).

    Returns:
        The variables the settings ask for, ``{name: value}``.

    Raises:
        BackendAlreadyInitializedError: if JAX's backend has started with other values.

    Example:
        >>> apply_memory_settings(AcceleratorConfig(preallocate=True), {})
        {'XLA_PYTHON_CLIENT_PREALLOCATE': 'true'}
    """
    if isinstance(settings, RunConfig):
        settings = settings.accelerator
    if not isinstance(settings, AcceleratorConfig):
        raise TypeError(
            f"apply_memory_settings: settings must be an AcceleratorConfig or RunConfig, "
            f"got {settings!r}"
        )
    env = os.environ if environ is None else environ
    variables: dict[str, str] = {}
    if settings.preallocate is not None:
        variables[PREALLOCATE_VAR] = "true" if settings.preallocate else "false"
    if settings.memory_fraction is not None:
        variables[_fraction_var(env)] = repr(settings.memory_fraction)
    if settings.allocator is not None:
        variables[ALLOCATOR_VAR] = settings.allocator
    if backend_initialized():
        current, wanted = read_memory_settings(env), _wanted(settings)
        effective = dict(current)
        if effective["preallocate"] is None:
            effective["preallocate"] = True  # what JAX does when the variable is unset
        conflicts = [
            f"{name}: the backend has {_show(current[name])}, the config asks for {wanted[name]!r}"
            for name in wanted
            if getattr(settings, name) is not None and effective[name] != wanted[name]
        ]
        if conflicts:
            raise BackendAlreadyInitializedError(
                "apply_memory_settings: JAX's backend is already initialised, so accelerator "
                "memory settings can no longer change; " + "; ".join(conflicts) + ". Apply "
                "them before the first JAX computation (jax.devices(), an array, a jit call) "
                "or export the variables before starting the process."
            )
        return variables
    env.update(variables)
    return variables
