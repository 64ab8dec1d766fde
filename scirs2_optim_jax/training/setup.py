"""Setting up a run of the demo job: the mesh, the data, the model, the optimizer and the step.

:func:`setup_run` builds everything a run needs before its first step, as a
:class:`RunSetup`: the one-axis ``data`` mesh (:func:`data_mesh`), the digits split, the
optimizer of the :class:`~scirs2_optim_jax.training.TrainSpec` (its state offloaded to host
memory when the run's options ask, :func:`~scirs2_optim_jax.engine.offload`), the MLP split into
``graphdef, params`` (the loss merges them back, as Flax recommends for functional steps),
and the package's data-parallel step over the mesh. :func:`global_batch` places one batch
on the mesh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from scirs2_optim_jax import parallel
from scirs2_optim_jax.engine import offload
from scirs2_optim_jax.training.data import (
    NUM_CLASSES,
    NUM_FEATURES,
    DigitsSplit,
    load_digits_split,
)
from scirs2_optim_jax.training.errors import RunSetupError
from scirs2_optim_jax.training.models import MLP
from scirs2_optim_jax.training.spec import AXIS, HIDDEN, RunOptions, TrainSpec

__all__ = ["RunSetup", "data_mesh", "global_batch", "setup_run"]


def data_mesh(devices: int | None) -> jax.sharding.Mesh:
    """The ``data`` mesh: the first ``devices`` devices, the same share of every process's.

    Args:
        devices: how many devices; None: all of them.

    Raises:
        RunSetupError: there are too few devices, or they do not split evenly over the
            processes.

    Example:
        >>> data_mesh(2).shape["data"]
        2
    """
    available = jax.devices()
    wanted = len(available) if devices is None else devices
    processes = jax.process_count()
    if wanted > len(available):
        per_process = "" if processes == 1 else f" ({wanted // processes} per process)"
        raise RunSetupError(
            f"train_digits: devices must be at most {len(available)}, the "
            f"{available[0].platform} devices JAX's backend started with; got {wanted}. "
            "For fake CPU devices set XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{wanted // processes}{per_process} before JAX starts (scirs2-optim train "
            "--devices does this), or use fewer"
        )
    if processes == 1:
        return parallel.make_data_mesh(wanted, axis_name=AXIS)
    # Every process must own devices on the mesh (it feeds them its rows of the batch), and
    # equal shares keep the processes' work equal.
    if wanted % processes:
        raise RunSetupError(
            f"train_digits: devices ({wanted}) must be a multiple of the {processes} "
            "processes, so that every process holds the same share of the mesh"
        )
    share = wanted // processes
    pool: list[jax.Device] = []
    for index in range(processes):
        own = [d for d in available if d.process_index == index]
        if len(own) < share:
            raise RunSetupError(
                f"train_digits: devices ({wanted}) needs {share} devices in each of the "
                f"{processes} processes, but process {index} has {len(own)}"
            )
        pool.extend(own[:share])
    return parallel.make_data_mesh(wanted, axis_name=AXIS, devices=pool)


@dataclass(frozen=True)
class RunSetup:
    """What a run needs before its first step.

    Attributes:
        mesh: the one-axis ``data`` mesh.
        data: the digits split.
        tx, lr_schedule: the optimizer (offloaded with the run's ``offload_optimizer``)
            and its learning-rate schedule.
        graphdef: the model's static structure; ``nnx.merge(graphdef, params)`` is the model.
        params: the initial parameters (from the spec's seed), not yet on the mesh.
        step_fn: the data-parallel step (``step_fn.init(params)`` places the state).
        batch_sharding: how a batch is split over the mesh.
    """

    mesh: jax.sharding.Mesh
    data: DigitsSplit
    tx: optax.GradientTransformation
    lr_schedule: Callable[[Any], jax.Array]
    graphdef: Any
    params: Any
    step_fn: Any
    batch_sharding: jax.sharding.NamedSharding

    @property
    def num_devices(self) -> int:
        """Devices on the ``data`` axis."""
        return int(self.mesh.shape[AXIS])


def setup_run(spec: TrainSpec, options: RunOptions) -> RunSetup:
    """Builds the mesh, data, model, optimizer and step of a run of ``spec``.

    Raises:
        RunSetupError: too few devices, a batch that does not split over them, or an
            optimizer updated on the host (``offload_optimizer="host"``) in a
            multi-process run.

    Example:
        >>> from scirs2_optim_jax.training.spec import RunOptions, TrainSpec
        >>> spec = TrainSpec.create(steps=10, batch_size=32)
        >>> setup = setup_run(spec, RunOptions.create(spec, devices=2))
        >>> setup.num_devices, setup.data.x_train.shape
        (2, (1437, 64))
    """
    mesh = data_mesh(options.devices)
    num_devices = mesh.shape[AXIS]
    if spec.batch_size % num_devices:
        raise RunSetupError(
            f"train_digits: batch_size ({spec.batch_size}) must be divisible by the "
            f"{num_devices} devices"
        )
    data = load_digits_split(seed=spec.data_seed)
    # Reductions over the data axis are needed only where the optimizer sees ZeRO slices;
    # on whole leaves the data-parallel step can then take the engine's one-pass step.
    tx, lr_schedule = spec.make_optimizer(axis_name=AXIS if options.zero_stage else None)
    if options.offload_optimizer is not None:
        if options.offload_optimizer == "host" and jax.process_count() > 1:
            raise RunSetupError(
                "train_digits: offload_optimizer='host' runs in one process (the host update "
                f"reads every gradient); this run has {jax.process_count()} processes: use "
                "offload_optimizer='device', which keeps each device's state in its own "
                "host's memory"
            )
        tx = offload(tx, compute=options.offload_optimizer)
    model = MLP(NUM_FEATURES, HIDDEN, NUM_CLASSES, rngs=nnx.Rngs(spec.seed))
    graphdef, params = nnx.split(model)

    def loss_fn(p: Any, batch: dict[str, jax.Array]) -> jax.Array:
        logits = nnx.merge(graphdef, p)(batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    step_fn = parallel.make_data_parallel_step(loss_fn, tx, mesh, zero_stage=options.zero_stage)
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))
    return RunSetup(mesh, data, tx, lr_schedule, graphdef, params, step_fn, batch_sharding)


def global_batch(
    data: DigitsSplit, rows: np.ndarray, sharding: jax.sharding.NamedSharding
) -> dict[str, jax.Array]:
    """The batch of samples ``rows`` as global arrays split over the ``data`` axis.

    Each process reads only the rows of its own devices' slices (the callback runs for
    addressable devices only), so in a multi-process run every process builds its part of
    the same global batch.

    Example:
        >>> import numpy as np
        >>> from scirs2_optim_jax.training import load_digits_split
        >>> mesh = data_mesh(2)
        >>> sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        >>> batch = global_batch(load_digits_split(), np.arange(4), sharding)
        >>> batch["x"].shape, batch["y"].dtype.name
        ((4, 64), 'int32')
    """

    def place(values: np.ndarray) -> jax.Array:
        shape = (len(rows), *values.shape[1:])
        return jax.make_array_from_callback(
            shape, sharding, lambda index: values[rows[index[0]]][(slice(None), *index[1:])]
        )

    return {"x": place(data.x_train), "y": place(data.y_train)}
