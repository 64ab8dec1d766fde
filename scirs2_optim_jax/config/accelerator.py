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
than pretend. :func:`memory_settings_report` says what is in effect. Whether the backend has
started is read from ``jax._src.xla_bridge.backends_are_initialized`` (JAX keeps its
clients in a cache there), which asks without starting it. CPU runs ignore all three.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import asdict, dataclass
from typing import Any

from scirs2_optim_jax.config.schema import AcceleratorConfig, RunConfig

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

PREALLOCATE_VAR = "XLA_PYTHON_CLIENT_PREALLOCATE"
MEM_FRACTION_VAR = "XLA_PYTHON_CLIENT_MEM_FRACTION"
MEM_FRACTION_VAR_NEW = "XLA_CLIENT_MEM_FRACTION"
ALLOCATOR_VAR = "XLA_PYTHON_CLIENT_ALLOCATOR"


class BackendAlreadyInitializedError(RuntimeError):
    """JAX's backend already started with memory settings other than the config's."""


def backend_initialized() -> bool:
    """Whether JAX has started its backend (asking does not start it).

    Example:
        >>> import jax
        >>> _ = jax.devices()
        >>> backend_initialized()
        True
    """
    from jax._src import xla_bridge

    return bool(xla_bridge.backends_are_initialized())


def _fraction_var(environ: Mapping[str, str]) -> str:
    return MEM_FRACTION_VAR_NEW if environ.get(MEM_FRACTION_VAR_NEW) else MEM_FRACTION_VAR


def _read(environ: Mapping[str, str]) -> dict[str, Any]:
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
        current, wanted = _read(env), _wanted(settings)
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
        import jax

        platform = jax.default_backend()
    names = (PREALLOCATE_VAR, MEM_FRACTION_VAR, MEM_FRACTION_VAR_NEW, ALLOCATOR_VAR)
    return MemorySettingsReport(
        **_read(env),
        variables={name: env[name] for name in names if name in env},
        backend_initialized=initialized,
        platform=platform,
    )
