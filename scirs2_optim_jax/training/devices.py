"""Fake CPU devices for the demo job: ask XLA for N host devices before JAX starts.

XLA's CPU backend makes ``--xla_force_host_platform_device_count=N`` devices out of one
host, which is how data parallelism and ZeRO run on a laptop or in CI. The flag is read
once, when JAX starts its backend (the first ``jax.devices()``, array or jit call), so
:func:`request_cpu_devices` must run before that; afterwards it can only check that enough
devices are there.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping

import jax

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.parallel.accelerator import backend_initialized
from scirs2_optim_jax.training.errors import RunSetupError

__all__ = ["DEVICE_COUNT_FLAG", "request_cpu_devices"]

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_FLAG = re.compile(re.escape(DEVICE_COUNT_FLAG) + r"=(\S*)")


def _backend_started() -> bool:
    return backend_initialized()


def request_cpu_devices(count: int, environ: MutableMapping[str, str] | None = None) -> int:
    """Makes sure JAX will have at least ``count`` devices, setting ``XLA_FLAGS`` if needed.

    Before the backend starts: when ``XLA_FLAGS`` does not already ask for at least
    ``count`` host devices, the device-count flag is set (replacing a smaller one) and the
    other flags are kept. After it has started: the devices are counted instead.

    Args:
        count: the devices the run needs, an integer >= 1.
        environ: the environment to edit (default: ``os.environ``).

    Returns:
        The number of devices JAX has (when the backend has started) or will have on the CPU
        platform (the value of the flag, at least 1).

    Raises:
        RunSetupError: the backend has already started with fewer than ``count`` devices.

    Example:
        >>> env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
        >>> request_cpu_devices(4, env) >= 4  # the test suite's backend already has 8
        True
    """
    v.check_int("request_cpu_devices", "count", count, 1)
    env = os.environ if environ is None else environ
    if _backend_started():
        have = jax.device_count()
        if have < count:
            raise RunSetupError(
                f"devices: {count} requested, but JAX's backend is already initialised with "
                f"{have} {jax.devices()[0].platform} device(s); start a fresh process (the "
                f"command sets {DEVICE_COUNT_FLAG} itself) or ask for at most {have}"
            )
        return have
    flags = env.get("XLA_FLAGS", "")
    match = _FLAG.search(flags)
    if match is not None and match.group(1).isdigit() and int(match.group(1)) >= count:
        return int(match.group(1))
    if count == 1:
        return 1
    rest = _FLAG.sub("", flags).split()
    env["XLA_FLAGS"] = " ".join([*rest, f"{DEVICE_COUNT_FLAG}={count}"])
    return count
