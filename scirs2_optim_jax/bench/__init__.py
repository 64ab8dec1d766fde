"""Side-by-side benchmark harness: ours vs optax vs the memory-bandwidth bound.

Everything here is a re-export; the implementations live in topical modules: ``configs``
(the benchmark configs), ``harness`` (timing), ``report`` (table and JSON), ``offload``
(the optimizer-state offload rows, ``--offload``), ``cache_check`` (the persistent
compilation cache) and ``commands`` (``scirs2-optim bench``). The names
load on first use, so that ``commands`` (standard library only) imports without JAX: the
``scirs2-optim`` command builds its parser from it, even for ``--help``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scirs2_optim_jax.bench.configs import CONFIGS, BenchConfig
    from scirs2_optim_jax.bench.harness import (
        BenchResult,
        measure_bandwidth,
        run_config,
        run_configs,
    )
    from scirs2_optim_jax.bench.offload import OffloadResult, run_offload_rows

# Public name -> the module of this package that defines it.
_EXPORTS = {
    "CONFIGS": "configs",
    "BenchConfig": "configs",
    "BenchResult": "harness",
    "measure_bandwidth": "harness",
    "run_config": "harness",
    "run_configs": "harness",
    "OffloadResult": "offload",
    "run_offload_rows": "offload",
}

__all__ = [
    "CONFIGS",
    "BenchConfig",
    "BenchResult",
    "OffloadResult",
    "measure_bandwidth",
    "run_config",
    "run_configs",
    "run_offload_rows",
]


def __getattr__(name: str) -> Any:
    """Loads a public name from its module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
