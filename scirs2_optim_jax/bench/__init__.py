"""Side-by-side benchmark harness: ours vs optax vs the memory-bandwidth bound."""

from scirs2_optim_jax.bench.configs import CONFIGS, BenchConfig
from scirs2_optim_jax.bench.harness import BenchResult, measure_bandwidth, run_config, run_configs

__all__ = [
    "CONFIGS",
    "BenchConfig",
    "BenchResult",
    "measure_bandwidth",
    "run_config",
    "run_configs",
]
