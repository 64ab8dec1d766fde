"""Formats benchmark results as a text table or JSON."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from typing import Any

from scirs2_optim_jax.bench.harness import BenchResult

__all__ = ["HEADER", "format_row", "machine_info", "to_json"]

HEADER = (
    f"{'config':<7}{'leaves':>7}{'ours ms':>10}{'optax ms':>10}{'speed-up':>10}"
    f"{'bound ms':>10}{'effic.':>8}{'GB/s':>7}{'comp s ours':>12}{'comp s optax':>13}"
    f"{'torch ms':>10}{'protocol ms':>12}"
)


def format_row(result: BenchResult) -> str:
    """One aligned table row.

    Example:
        >>> r = BenchResult("a", "x", 10, 2, 2.0, 3.0, 1.5, 50.0, 0.1, 0.2)
        >>> format_row(r).split()[:5]
        ['a', '2', '2.00', '3.00', '1.50x']
    """
    torch_ms = "-" if result.torch_ms is None else f"{result.torch_ms:.2f}"
    protocol_ms = "-" if result.protocol_ms is None else f"{result.protocol_ms:.2f}"
    return (
        f"{result.config:<7}{result.num_leaves:>7}{result.ours_ms:>10.2f}{result.optax_ms:>10.2f}"
        f"{result.speedup:>9.2f}x{result.bound_ms:>10.2f}{result.efficiency:>8.0%}"
        f"{result.bandwidth_gbps:>7.1f}{result.ours_compile_s:>12.2f}"
        f"{result.optax_compile_s:>13.2f}{torch_ms:>10}{protocol_ms:>12}"
    )


def machine_info() -> dict[str, Any]:
    """Where the figures come from: backend, device, versions, cores."""
    import os

    import jax
    import optax

    device = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "optax": optax.__version__,
    }


def to_json(results: Sequence[BenchResult], extra: dict[str, Any] | None = None) -> str:
    """The results, machine info and any extra figures as a JSON document."""
    document = {
        "machine": machine_info(),
        "results": [r.as_dict() for r in results],
        **(extra or {}),
    }
    return json.dumps(document, indent=2)
