"""Resource readings on the host: CPU and memory utilisation (psutil), device memory (JAX).

Device memory comes from ``jax.Device.memory_stats()``, which GPU and TPU backends report and
the CPU backend does not (it returns None there); utilisation then falls back to host memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import psutil

__all__ = ["ResourceSampler", "ResourceSnapshot", "device_memory_stats"]


def device_memory_stats(devices: Sequence[Any] | None = None) -> dict[str, int] | None:
    """Device memory in bytes, summed over the devices that report it.

    Args:
        devices: the devices to read; None reads ``jax.local_devices()``.

    Returns:
        ``{"bytes_in_use", "peak_bytes_in_use", "bytes_limit", "devices"}`` (the last is how
        many devices reported), or None when no device reports memory statistics (the CPU
        backend).

    Example:
        >>> stats = device_memory_stats()
        >>> stats is None or stats["bytes_in_use"] >= 0
        True
    """
    devices = jax.local_devices() if devices is None else list(devices)
    totals = {"bytes_in_use": 0, "peak_bytes_in_use": 0, "bytes_limit": 0, "devices": 0}
    for device in devices:
        stats = device.memory_stats()
        if not stats:
            continue
        totals["devices"] += 1
        in_use = int(stats.get("bytes_in_use", 0))
        totals["bytes_in_use"] += in_use
        totals["peak_bytes_in_use"] += int(stats.get("peak_bytes_in_use", in_use))
        totals["bytes_limit"] += int(stats.get("bytes_limit", 0))
    return totals if totals["devices"] else None


@dataclass(frozen=True)
class ResourceSnapshot:
    """One reading of the machine's resources.

    Attributes:
        cpu_utilization: system-wide CPU use since the previous reading, in [0, 1].
        host_memory_utilization: fraction of the host's memory in use, in [0, 1].
        rss_bytes: resident memory of this process.
        device_bytes_in_use, device_bytes_limit: device memory, None where not reported.
    """

    cpu_utilization: float
    host_memory_utilization: float
    rss_bytes: int
    device_bytes_in_use: int | None = None
    device_bytes_limit: int | None = None

    @property
    def device_memory_utilization(self) -> float | None:
        """Device bytes in use over the limit, None where the backend does not report them."""
        if not self.device_bytes_limit or self.device_bytes_in_use is None:
            return None
        return self.device_bytes_in_use / self.device_bytes_limit

    @property
    def memory_utilization(self) -> float:
        """The fuller of host and device memory, in [0, 1]: what the health rule checks."""
        device = self.device_memory_utilization
        return (
            self.host_memory_utilization
            if device is None
            else max(self.host_memory_utilization, device)
        )


class ResourceSampler:
    """Takes :class:`ResourceSnapshot` readings of this process and its devices.

    CPU utilisation is measured between consecutive readings (the first reading covers the
    time since the sampler was made).

    Args:
        devices: the devices whose memory to read; None reads ``jax.local_devices()``.

    Example:
        >>> snapshot = ResourceSampler().sample()
        >>> 0.0 <= snapshot.memory_utilization <= 1.0 and snapshot.rss_bytes > 0
        True
    """

    def __init__(self, devices: Sequence[Any] | None = None) -> None:
        self._devices = None if devices is None else list(devices)
        self._process = psutil.Process()
        psutil.cpu_percent(interval=None)

    def sample(self) -> ResourceSnapshot:
        """Reads the resources now."""
        device = device_memory_stats(self._devices)
        return ResourceSnapshot(
            cpu_utilization=psutil.cpu_percent(interval=None) / 100.0,
            host_memory_utilization=psutil.virtual_memory().percent / 100.0,
            rss_bytes=int(self._process.memory_info().rss),
            device_bytes_in_use=None if device is None else device["bytes_in_use"],
            device_bytes_limit=None if device is None else device["bytes_limit"],
        )
