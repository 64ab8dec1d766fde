"""Multi-host training on JAX's own distributed runtime.

:func:`init_distributed` starts ``jax.distributed`` from arguments or environment variables.
Every process runs the same program; after it, ``jax.devices()`` lists the devices of all
processes and a :func:`~scirs2_optim_jax.parallel.mesh.make_data_mesh` spans them, so the
data-parallel and ZeRO steps run unchanged. On CPU the collectives between processes go
over gloo (TCP), which is how two processes on 127.0.0.1 test it.

Environment variables (an argument wins over the variable; ours win over JAX's):

================================ ======================= =====================================
ours                             JAX's fallback          meaning
================================ ======================= =====================================
``SCIRS2_COORDINATOR_ADDRESS``   ``JAX_COORDINATOR_ADDRESS`` ``host:port`` of process 0's service
``SCIRS2_NUM_PROCESSES``         ``JAX_NUM_PROCESSES``   number of processes
``SCIRS2_PROCESS_ID``            ``JAX_PROCESS_ID``      this process's id, ``0 .. n-1``
================================ ======================= =====================================

A run must end or fail in bounded time. JAX's coordination service notices a process that
stops sending heartbeats (``heartbeat_timeout_s``) and terminates the others with an error;
a collective whose peer died usually fails at once when the TCP connection drops. For the
cases neither catches, :func:`step_deadline` is a watchdog that ends the process with a
clear message and a non-zero exit code if a block (a training step) overruns.

Host-side decisions that change what the processes run next (stop now, save this step) must
be taken by all of them together: :func:`any_process` turns one flag per process into a value
every process reads the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DEADLINE_EXIT_CODE",
    "ENV_COORDINATOR_ADDRESS",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "DistributedConfig",
    "any_process",
    "distributed_from_env",
    "init_distributed",
    "resolve_distributed_config",
    "step_deadline",
]

ENV_COORDINATOR_ADDRESS = "SCIRS2_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "SCIRS2_NUM_PROCESSES"
ENV_PROCESS_ID = "SCIRS2_PROCESS_ID"
_JAX_FALLBACK = {
    ENV_COORDINATOR_ADDRESS: "JAX_COORDINATOR_ADDRESS",
    ENV_NUM_PROCESSES: "JAX_NUM_PROCESSES",
    ENV_PROCESS_ID: "JAX_PROCESS_ID",
}
DEADLINE_EXIT_CODE = 75


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Where the coordinator is, how many processes there are, and which one this is."""

    coordinator_address: str
    num_processes: int
    process_id: int


def _from_env(env: Mapping[str, str], name: str) -> tuple[str | None, str]:
    for key in (name, _JAX_FALLBACK[name]):
        value = env.get(key)
        if value not in (None, ""):
            return value, key
    return None, name


def _as_int(fn: str, name: str, value: Any, source: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be an integer, got {value!r} (from {source})")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{fn}: {name} must be an integer, got {value!r} (from {source})"
        ) from None


def resolve_distributed_config(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> DistributedConfig:
    """Combines arguments and environment variables into a validated configuration.

    Args:
        coordinator_address: ``host:port`` of the coordinator (process 0), or None to read
            ``SCIRS2_COORDINATOR_ADDRESS`` / ``JAX_COORDINATOR_ADDRESS``.
        num_processes: number of processes, or None to read ``SCIRS2_NUM_PROCESSES`` /
            ``JAX_NUM_PROCESSES``.
        process_id: this process's id, or None to read ``SCIRS2_PROCESS_ID`` /
            ``JAX_PROCESS_ID``.
        environ: the environment to read (default ``os.environ``).

    Returns:
        A :class:`DistributedConfig`.

    Raises:
        ValueError: naming the missing or invalid setting and where it came from.

    Example:
        >>> resolve_distributed_config(environ={"SCIRS2_COORDINATOR_ADDRESS": "10.0.0.1:1234",
        ...                                     "SCIRS2_NUM_PROCESSES": "2"}, process_id=1)
        DistributedConfig(coordinator_address='10.0.0.1:1234', num_processes=2, process_id=1)
    """
    fn = "init_distributed"
    env = os.environ if environ is None else environ
    values: dict[str, tuple[Any, str]] = {}
    for arg, value, var in (
        ("coordinator_address", coordinator_address, ENV_COORDINATOR_ADDRESS),
        ("num_processes", num_processes, ENV_NUM_PROCESSES),
        ("process_id", process_id, ENV_PROCESS_ID),
    ):
        if value is not None:
            values[arg] = (value, f"the argument {arg}")
            continue
        found, key = _from_env(env, var)
        if found is None:
            raise ValueError(
                f"{fn}: {arg} is not set: pass it or set {var} (or {_JAX_FALLBACK[var]})"
            )
        values[arg] = (found, f"${key}")
    address, source = values["coordinator_address"]
    host, sep, port = str(address).rpartition(":")
    if not isinstance(address, str) or not sep or not host or not port.isdigit():
        raise ValueError(
            f"{fn}: coordinator_address must look like 'host:port', got {address!r} (from {source})"
        )
    count = _as_int(fn, "num_processes", *values["num_processes"])
    if count < 1:
        raise ValueError(
            f"{fn}: num_processes must be >= 1, got {count} (from {values['num_processes'][1]})"
        )
    index = _as_int(fn, "process_id", *values["process_id"])
    if not 0 <= index < count:
        raise ValueError(
            f"{fn}: process_id must be in [0, {count}), got {index} "
            f"(from {values['process_id'][1]})"
        )
    return DistributedConfig(address, count, index)


def distributed_from_env(environ: Mapping[str, str] | None = None) -> DistributedConfig | None:
    """The multi-process settings in the environment, or None for a single-process run.

    A run is multi-process when ``SCIRS2_NUM_PROCESSES`` (or ``JAX_NUM_PROCESSES``) is set to
    more than 1; then the coordinator address and the process id must be set too. A launcher
    or a command that runs either way (``scirs2-optim train``) calls this to decide whether to
    call :func:`init_distributed`.

    Args:
        environ: the environment to read (default ``os.environ``).

    Returns:
        None when the process count is unset or 1, else the :class:`DistributedConfig`.

    Raises:
        ValueError: naming the missing or invalid variable.

    Example:
        >>> distributed_from_env({}) is None, distributed_from_env({"SCIRS2_NUM_PROCESSES": "1"})
        (True, None)
        >>> distributed_from_env({"SCIRS2_NUM_PROCESSES": "2", "SCIRS2_PROCESS_ID": "1",
        ...                       "SCIRS2_COORDINATOR_ADDRESS": "10.0.0.1:1234"}).process_id
        1
    """
    env = os.environ if environ is None else environ
    count, source = _from_env(env, ENV_NUM_PROCESSES)
    if count is None:
        return None
    number = _as_int("init_distributed", "num_processes", count, f"${source}")
    if number < 1:
        raise ValueError(
            f"init_distributed: num_processes must be >= 1, got {number} (from ${source})"
        )
    if number == 1:
        return None
    return resolve_distributed_config(environ=env)


def init_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    cpu_collectives: str | None = "gloo",
    initialization_timeout_s: int = 300,
    heartbeat_timeout_s: int = 100,
    shutdown_timeout_s: int = 300,
    environ: Mapping[str, str] | None = None,
) -> DistributedConfig:
    """Joins this process to a multi-process JAX run (``jax.distributed.initialize``).

    Call it first, before anything touches a device. Settings not passed are read from the
    environment (module doc).

    Args:
        coordinator_address: ``host:port`` of process 0's coordination service.
        num_processes: number of processes.
        process_id: this process's id.
        cpu_collectives: CPU collectives between processes (``"gloo"``; ``"mpi"`` needs an
            MPI build); None leaves JAX's setting alone. Ignored by GPU/TPU devices.
        initialization_timeout_s: how long to wait for every process to join.
        heartbeat_timeout_s: after how long without heartbeats a process counts as dead,
            which makes the others exit with an error.
        shutdown_timeout_s: how long the exit barrier waits for the other processes.
        environ: the environment to read (default ``os.environ``).

    Returns:
        The :class:`DistributedConfig` used.

    Raises:
        ValueError: for a missing or invalid setting (before anything starts).
        RuntimeError: if JAX was already initialised in this process.

    Example:
        >>> init_distributed(environ={})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: init_distributed: coordinator_address is not set: pass it or set ...
    """
    config = resolve_distributed_config(
        coordinator_address, num_processes, process_id, environ=environ
    )
    for name, value in (
        ("initialization_timeout_s", initialization_timeout_s),
        ("heartbeat_timeout_s", heartbeat_timeout_s),
        ("shutdown_timeout_s", shutdown_timeout_s),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"init_distributed: {name} must be an integer >= 1, got {value!r}")
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    try:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
            initialization_timeout=initialization_timeout_s,
            heartbeat_timeout_seconds=heartbeat_timeout_s,
            shutdown_timeout_seconds=shutdown_timeout_s,
        )
    except RuntimeError as err:
        raise RuntimeError(
            f"init_distributed: could not join the run as process {config.process_id} of "
            f"{config.num_processes} at {config.coordinator_address}: {err}"
        ) from err
    return config


# Bounded: one entry per mesh that votes (a run has one), each holding 4 bytes per device.
@functools.lru_cache(maxsize=8)
def _any_fn(mesh: Mesh) -> Any:
    return jax.jit(
        lambda votes: jnp.max(votes) > 0, out_shardings=NamedSharding(mesh, PartitionSpec())
    )


@functools.lru_cache(maxsize=16)
def _votes(mesh: Mesh, vote: bool) -> jax.Array:
    """This process's vote on each of its devices; built once, so a vote costs one dispatch."""
    shape = mesh.devices.shape
    return jax.make_array_from_callback(
        shape,
        NamedSharding(mesh, PartitionSpec(*mesh.axis_names)),
        lambda index: np.full(np.empty(shape, np.bool_)[index].shape, np.int32(vote)),
    )


def any_process(flag: bool, mesh: Mesh) -> jax.Array:
    """Whether ``flag`` is True in any process: a replicated boolean, computed on ``mesh``.

    Each process contributes its own ``flag`` (say, "a stop signal arrived here") and every
    process gets the same answer, so they can act on it at the same step. It is a collective:
    every process must call it at the same point of its program, with the same mesh. The
    result is dispatched asynchronously; read it (``bool(to_host(result))``) a step later to
    keep the host from waiting on it.

    Args:
        flag: this process's vote.
        mesh: a mesh spanning the processes that vote (every process must own a device).

    Returns:
        A 0-d boolean ``jax.Array``, replicated over ``mesh``.

    Example:
        >>> from scirs2_optim_jax.parallel import make_data_mesh, to_host
        >>> bool(to_host(any_process(True, make_data_mesh())))
        True
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"any_process: mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    return _any_fn(mesh)(_votes(mesh, bool(flag)))


@contextlib.contextmanager
def step_deadline(
    seconds: float, what: str = "step", *, exit_code: int = DEADLINE_EXIT_CODE
) -> Iterator[None]:
    """Ends the process if the block takes longer than ``seconds`` (a hung collective).

    A blocked collective cannot be interrupted from Python, so on expiry a watchdog thread
    writes ``"<what> did not finish within <seconds> s ..."`` to stderr and calls
    ``os._exit(exit_code)``. Use it around the steps of a multi-process run, with a limit
    well above a step's normal time (compilation included).

    Args:
        seconds: the time limit, > 0.
        what: names the block in the message.
        exit_code: the process's exit status on expiry (default 75).

    Returns:
        A context manager.

    Example:
        >>> with step_deadline(60.0, "step 1"):
        ...     pass
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ValueError(f"step_deadline: seconds must be a number > 0, got {seconds!r}")

    def expire() -> None:
        sys.stderr.write(
            f"scirs2_optim_jax: {what} did not finish within {seconds} s (process "
            f"{jax.process_index()} of {jax.process_count()}); a peer process has probably "
            f"died or hung. Exiting with status {exit_code}.\n"
        )
        sys.stderr.flush()
        os._exit(exit_code)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
