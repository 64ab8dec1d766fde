"""Test-wide settings: 8 fake CPU devices and strict dtype promotion.

XLA_FLAGS must be set before jax is imported anywhere, so it happens at the top of the
first module pytest loads.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)


# Deprecated shims warn when imported, which --doctest-modules would do;
# tests/project/test_layers.py imports them on purpose instead.
collect_ignore = ["scirs2_optim_jax/transforms/fused.py", "scirs2_optim_jax/kernels"]
