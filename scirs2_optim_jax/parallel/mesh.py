"""Device discovery and the data-parallel mesh.

:func:`make_data_mesh` builds a one-axis mesh (named ``data``) over the devices JAX sees,
every process's devices in a multi-host run; :func:`device_summary` describes them
(platform, device kind, counts, and memory where the backend reports it; the CPU backend
does not).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import AxisType, Mesh

from scirs2_optim_jax.parallel.accelerator import memory_settings_report

__all__ = ["DeviceInfo", "DeviceSummary", "device_summary", "make_data_mesh"]

_AXIS_TYPES = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}


def make_data_mesh(
    num_devices: int | None = None,
    *,
    axis_name: str = "data",
    devices: Sequence[jax.Device] | None = None,
    axis_type: str | AxisType = "explicit",
) -> Mesh:
    """A one-axis mesh over the first ``num_devices`` devices, for data parallelism.

    Args:
        num_devices: how many devices to use (default: all of ``devices``).
        axis_name: name of the mesh axis (default ``"data"``).
        devices: the devices to choose from (default: ``jax.devices()``, i.e. every
            process's devices in a multi-host run).
        axis_type: ``"explicit"`` (JAX's default since 0.9: shardings are part of array
            types), ``"auto"`` (the compiler propagates shardings), or a ``jax.sharding.
            AxisType``.

    Returns:
        A ``jax.sharding.Mesh`` with the single axis ``axis_name``.

    Raises:
        ValueError: if ``num_devices`` is not between 1 and the number of devices.

    Example:
        >>> mesh = make_data_mesh(1)
        >>> mesh.axis_names, mesh.shape["data"]
        (('data',), 1)
    """
    fn = "make_data_mesh"
    if not isinstance(axis_name, str) or not axis_name:
        raise TypeError(f"{fn}: axis_name must be a non-empty string, got {axis_name!r}")
    pool = list(jax.devices() if devices is None else devices)
    if num_devices is None:
        num_devices = len(pool)
    if isinstance(num_devices, bool) or not isinstance(num_devices, int):
        raise TypeError(f"{fn}: num_devices must be an integer or None, got {num_devices!r}")
    if not 1 <= num_devices <= len(pool):
        raise ValueError(
            f"{fn}: num_devices must be between 1 and {len(pool)} (the devices available), "
            f"got {num_devices}"
        )
    if isinstance(axis_type, str):
        if axis_type.lower() not in _AXIS_TYPES:
            raise ValueError(
                f"{fn}: axis_type must be 'explicit', 'auto' or a jax.sharding.AxisType, "
                f"got {axis_type!r}"
            )
        axis_type = _AXIS_TYPES[axis_type.lower()]
    elif not isinstance(axis_type, AxisType):
        raise TypeError(f"{fn}: axis_type must be a string or AxisType, got {axis_type!r}")
    return jax.make_mesh(
        (num_devices,), (axis_name,), axis_types=(axis_type,), devices=pool[:num_devices]
    )


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """One device: its id, platform, kind, owning process and memory limit (None: unknown)."""

    id: int
    platform: str
    kind: str
    process_index: int
    memory_bytes: int | None


@dataclasses.dataclass(frozen=True)
class DeviceSummary:
    """What :func:`device_summary` reports.

    Attributes:
        platform: backend platform (``cpu``, ``gpu``, ``tpu``); ``mixed`` if several.
        kind: device kind (e.g. ``cpu``, ``NVIDIA H100 80GB HBM3``); ``mixed`` if several.
        count: number of devices (all processes).
        local_count: devices of this process.
        process_count: number of processes.
        process_index: this process's index.
        memory_bytes: per-device memory limit where the backend reports it, else None.
        devices: one :class:`DeviceInfo` per device.
        memory_settings: the accelerator memory settings in effect (preallocation, memory
            fraction, allocator), as :func:`scirs2_optim_jax.config.memory_settings_report`
            reads them.
    """

    platform: str
    kind: str
    count: int
    local_count: int
    process_count: int
    process_index: int
    memory_bytes: int | None
    devices: tuple[DeviceInfo, ...]
    memory_settings: Any = None

    def __str__(self) -> str:
        memory = "unknown" if self.memory_bytes is None else f"{self.memory_bytes / 2**30:.1f} GiB"
        text = (
            f"{self.count} x {self.kind} ({self.platform}), {self.local_count} local, "
            f"process {self.process_index} of {self.process_count}, memory per device {memory}"
        )
        if self.memory_settings is not None:
            text += "\n" + self.memory_settings.describe()
        return text


def _memory_bytes(device: jax.Device) -> int | None:
    try:
        stats: dict[str, Any] | None = device.memory_stats()
    except (RuntimeError, NotImplementedError):
        return None
    if not stats:
        return None
    limit = stats.get("bytes_limit")
    return int(limit) if limit is not None else None


def _one_or_mixed(values: Sequence[Any]) -> Any:
    return values[0] if len(set(values)) == 1 else "mixed"


def device_summary(devices: Sequence[jax.Device] | None = None) -> DeviceSummary:
    """Describes ``devices`` (default: all of ``jax.devices()``).

    Args:
        devices: the devices to describe.

    Returns:
        A :class:`DeviceSummary`; ``memory_bytes`` is the smallest reported per-device limit,
        or None when any device does not report one (the CPU backend).

    Example:
        >>> summary = device_summary()
        >>> summary.platform, summary.count == len(summary.devices), summary.process_count
        ('cpu', True, 1)
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("device_summary: devices must not be empty")
    infos = tuple(
        DeviceInfo(
            id=d.id,
            platform=d.platform,
            kind=d.device_kind,
            process_index=d.process_index,
            memory_bytes=_memory_bytes(d),
        )
        for d in devices
    )
    memories = [info.memory_bytes for info in infos]
    return DeviceSummary(
        platform=_one_or_mixed([i.platform for i in infos]),
        kind=_one_or_mixed([i.kind for i in infos]),
        count=len(infos),
        local_count=sum(i.process_index == jax.process_index() for i in infos),
        process_count=jax.process_count(),
        process_index=jax.process_index(),
        memory_bytes=None if any(m is None for m in memories) else min(memories),  # type: ignore[type-var]
        devices=infos,
        memory_settings=memory_settings_report(),
    )
