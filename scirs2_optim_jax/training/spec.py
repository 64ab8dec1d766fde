"""What a run of the demo job is: its spec, its options, and the checks of its arguments.

A run is a function of its :class:`TrainSpec` (optimizer, schedule, steps, batch size,
seeds): two runs with equal specs train the same model, and a resumed run must have the spec
of the run that wrote the checkpoint. :class:`RunOptions` holds the rest of a run's
arguments (devices, ZeRO stage, reporting and checkpoint intervals), which change how it
runs but not what it trains. Both validate their arguments when created, before anything
is built on a device; :func:`check_train_args` runs both checks for callers such as the CLI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import optax

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.config import registry
from scirs2_optim_jax.config.builder import make_optimizer
from scirs2_optim_jax.training.data import (
    DEFAULT_TEST_SIZE,
    NUM_CLASSES,
    NUM_FEATURES,
    NUM_SAMPLES,
)

__all__ = [
    "AXIS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LOG_EVERY",
    "DEFAULT_SAVE_EVERY",
    "DEFAULT_SCHEDULE",
    "DEFAULT_STEPS",
    "HIDDEN",
    "OFFLOAD_OPTIMIZER",
    "OPTIMIZERS",
    "SCHEDULES",
    "TRAIN_SIZE",
    "RunOptions",
    "TrainSpec",
    "check_train_args",
    "default_learning_rate",
]

# Peak learning rates that reach >= 95% test accuracy on the digits with the other defaults.
_DEFAULT_LEARNING_RATES: dict[str, float] = {
    "adamw": 3e-3,
    "adam": 3e-3,
    "radam": 3e-3,
    "lamb": 1e-2,
    "lion": 3e-4,
    "sgd": 0.3,
    "lars": 1.0,
    "rmsprop": 1e-3,
    "adagrad": 0.1,
    "adopt": 1e-3,
    "schedule_free_adamw": 1e-2,
    "schedule_free_sgd": 0.3,
    "muon": 0.02,
    "adafactor": 0.01,
}
# The registry's names; the job spells schedules with hyphens, as the command line does.
OPTIMIZERS: tuple[str, ...] = registry.OPTIMIZERS
SCHEDULES: tuple[str, ...] = registry.COMMAND_LINE_SCHEDULES
DEFAULT_SCHEDULE = "warmup-cosine"
DEFAULT_STEPS = 800
DEFAULT_BATCH_SIZE = 128
DEFAULT_LOG_EVERY = 100
DEFAULT_SAVE_EVERY = 100
HIDDEN = (128, 128)
TRAIN_SIZE = NUM_SAMPLES - DEFAULT_TEST_SIZE
AXIS = "data"  # the mesh axis the batch (and, under ZeRO, the optimizer state) is split over
# Where an offloaded optimizer updates its state, kept in host memory (engine.offload).
OFFLOAD_OPTIMIZER = registry.OFFLOAD_COMPUTE

_FN = "train_digits"


def default_learning_rate(optimizer: str) -> float:
    """Returns the peak learning rate the demo job uses for ``optimizer`` when none is given.

    Example:
        >>> default_learning_rate("adamw")
        0.003
    """
    return _DEFAULT_LEARNING_RATES[registry.canonical_optimizer("default_learning_rate", optimizer)]


@dataclass(frozen=True)
class TrainSpec:
    """What determines a run's parameters: two runs with equal specs train the same model.

    A resumed run must have the spec of the run that wrote the checkpoint. The number of
    devices and the ZeRO stage are not part of it: they change only the order of floating
    point reductions (see :mod:`scirs2_optim_jax.training.loop`).

    Attributes:
        optimizer: one of :data:`OPTIMIZERS`.
        learning_rate: the peak learning rate (resolved: never None).
        steps: length of the run and of its schedule.
        batch_size: samples per step, in [1, 1437].
        seed: seeds the initial parameters and the batch order.
        schedule: one of :data:`SCHEDULES` (hyphenated; either spelling is accepted).
        warmup_ratio, min_lr_ratio: schedule shape (see
            :func:`~scirs2_optim_jax.config.make_schedule`).
        hyperparameters: further keyword arguments of the optimizer alias.
        max_global_norm: gradient clipping, or None.
        data_seed: seeds the train/test split.

    Example:
        >>> spec = TrainSpec.create("sgd", steps=10)
        >>> spec.learning_rate, spec.to_json()["schedule"]
        (0.3, 'warmup-cosine')
    """

    optimizer: str
    learning_rate: float
    steps: int
    batch_size: int
    seed: int
    schedule: str
    warmup_ratio: float
    min_lr_ratio: float
    hyperparameters: tuple[tuple[str, Any], ...]
    max_global_norm: float | None
    data_seed: int

    @classmethod
    def create(
        cls,
        optimizer: str = "adamw",
        learning_rate: float | None = None,
        steps: int = DEFAULT_STEPS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        seed: int = 0,
        *,
        schedule: str = DEFAULT_SCHEDULE,
        warmup_ratio: float = 0.06,
        min_lr_ratio: float = 0.01,
        hyperparameters: Mapping[str, Any] | None = None,
        max_global_norm: float | None = None,
        data_seed: int = 0,
    ) -> TrainSpec:
        """Validates the arguments (building the optimizer once) and returns the spec.

        Raises:
            ValueError, TypeError: naming the first invalid argument and its value.
        """
        fn = _FN
        registry.canonical_optimizer(fn, optimizer)
        if learning_rate is None:
            learning_rate = _DEFAULT_LEARNING_RATES[optimizer]
        v.check_positive(fn, "learning_rate", learning_rate)
        v.check_int(fn, "steps", steps, 1)
        v.check_int(fn, "batch_size", batch_size, 1)
        if batch_size > TRAIN_SIZE:
            raise ValueError(
                f"{fn}: batch_size must be an integer <= {TRAIN_SIZE} (the training-set size), "
                f"got {batch_size!r}"
            )
        v.check_int(fn, "seed", seed, 0)
        schedule = registry.canonical_schedule(fn, schedule, hyphens=True)
        v.check_int(fn, "data_seed", data_seed, 0)
        if hyperparameters is not None and not isinstance(hyperparameters, Mapping):
            raise TypeError(
                f"{fn}: hyperparameters must be a mapping or None, got {hyperparameters!r}"
            )
        spec = cls(
            optimizer=optimizer,
            learning_rate=float(learning_rate),
            steps=int(steps),
            batch_size=int(batch_size),
            seed=int(seed),
            schedule=registry.command_line_schedule(schedule),
            warmup_ratio=float(warmup_ratio),
            min_lr_ratio=float(min_lr_ratio),
            hyperparameters=tuple(sorted((hyperparameters or {}).items())),
            max_global_norm=None if max_global_norm is None else float(max_global_norm),
            data_seed=int(data_seed),
        )
        try:
            spec.make_optimizer(axis_name=AXIS)
        except (ValueError, TypeError) as err:
            message = str(err)
            raise type(err)(message if message.startswith(fn) else f"{fn}: {message}") from None
        return spec

    def make_optimizer(
        self, axis_name: str | None = None
    ) -> tuple[optax.GradientTransformation, Callable[[Any], jax.Array]]:
        """``(tx, schedule)`` of this spec (:func:`~scirs2_optim_jax.config.make_optimizer`)."""
        return make_optimizer(
            self.optimizer,
            self.learning_rate,
            self.steps,
            schedule=self.schedule,
            hyperparameters=dict(self.hyperparameters),
            max_global_norm=self.max_global_norm,
            warmup_ratio=self.warmup_ratio,
            min_lr_ratio=self.min_lr_ratio,
            axis_name=axis_name,
        )

    def to_json(self) -> dict[str, Any]:
        """The spec as JSON data (stored in checkpoints and compared on resume)."""
        data = dataclasses.asdict(self)
        data["hyperparameters"] = dict(self.hyperparameters)
        data["model"] = f"mlp-{NUM_FEATURES}-{'-'.join(map(str, HIDDEN))}-{NUM_CLASSES}"
        return data


@dataclass(frozen=True)
class RunOptions:
    """How a run goes, beyond what it trains (validated by :meth:`create`).

    Attributes:
        log_every: report every this many steps (0: only after the last).
        devices: devices on the ``data`` mesh axis; None: all.
        zero_stage: 0, 1 or 2.
        save_every: checkpoint every this many steps.
        keep_checkpoints: how many of the newest checkpoints to keep.
        stop_at: end the run after this step, or None.
        offload_optimizer: None (the optimizer state in device memory), or where the
            update runs with the state kept in host memory
            (:func:`~scirs2_optim_jax.engine.offload`): ``"device"`` (streamed to the
            device for the update) or ``"host"`` (updated on the host's CPU). Like the
            device count and the ZeRO stage, it changes how the run goes, not what it
            trains: a run may resume with or without it.
    """

    log_every: int = DEFAULT_LOG_EVERY
    devices: int | None = 1
    zero_stage: int = 0
    save_every: int = DEFAULT_SAVE_EVERY
    keep_checkpoints: int = 3
    stop_at: int | None = None
    offload_optimizer: str | None = None

    @classmethod
    def create(cls, spec: TrainSpec, **options: Any) -> RunOptions:
        """Validates the options of a run of ``spec``; keywords as the attributes.

        Example:
            >>> RunOptions.create(TrainSpec.create(steps=10), stop_at=11)
            Traceback (most recent call last):
            ...
            ValueError: train_digits: stop_at must be an integer <= steps (10), got 11
            >>> RunOptions.create(TrainSpec.create(steps=10), offload_optimizer="cpu")
            Traceback (most recent call last):
            ...
            ValueError: train_digits: offload_optimizer must be one of device, host, None, got 'cpu'
        """
        fn = _FN
        run = cls(**options)
        v.check_int(fn, "log_every", run.log_every, 0)
        if run.devices is not None:
            v.check_int(fn, "devices", run.devices, 1)
            if spec.batch_size % run.devices:
                raise ValueError(
                    f"{fn}: batch_size ({spec.batch_size}) must be divisible by devices "
                    f"({run.devices})"
                )
        if isinstance(run.zero_stage, bool) or run.zero_stage not in (0, 1, 2):
            raise ValueError(f"{fn}: zero_stage must be 0, 1 or 2, got {run.zero_stage!r}")
        v.check_int(fn, "save_every", run.save_every, 1)
        v.check_int(fn, "keep_checkpoints", run.keep_checkpoints, 1)
        if run.stop_at is not None:
            v.check_int(fn, "stop_at", run.stop_at, 1)
            if run.stop_at > spec.steps:
                raise ValueError(
                    f"{fn}: stop_at must be an integer <= steps ({spec.steps}), got {run.stop_at!r}"
                )
        v.check_one_of(fn, "offload_optimizer", run.offload_optimizer, (*OFFLOAD_OPTIMIZER, None))
        return run


def check_train_args(
    optimizer: str = "adamw",
    learning_rate: float | None = None,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    log_every: int = DEFAULT_LOG_EVERY,
    *,
    schedule: str = DEFAULT_SCHEDULE,
    devices: int | None = 1,
    zero_stage: int = 0,
    hyperparameters: Mapping[str, Any] | None = None,
    max_global_norm: float | None = None,
    warmup_ratio: float = 0.06,
    min_lr_ratio: float = 0.01,
    data_seed: int = 0,
    save_every: int = DEFAULT_SAVE_EVERY,
    keep_checkpoints: int = 3,
    stop_at: int | None = None,
    offload_optimizer: str | None = None,
) -> float:
    """Validates :func:`~scirs2_optim_jax.training.train_digits`'s arguments without training.

    Builds the optimizer too, so the optimizer's and the schedule's own checks run. A caller
    such as the CLI uses it to tell bad arguments (reported as usage errors) from a run that
    fails. What needs the devices or the file system (enough devices, the checkpoint
    directory) is checked by ``train_digits`` and raised as
    :class:`~scirs2_optim_jax.training.RunSetupError`.

    Returns:
        The peak learning rate the run will use (``learning_rate``, or the optimizer's default
        when it is None).

    Raises:
        ValueError, TypeError: naming the first invalid argument and its value.

    Example:
        >>> check_train_args("adamw")
        0.003
        >>> check_train_args("adamw", steps=0)
        Traceback (most recent call last):
        ...
        ValueError: train_digits: steps must be an integer >= 1, got 0
        >>> check_train_args("adamw", batch_size=100, devices=8)
        Traceback (most recent call last):
        ...
        ValueError: train_digits: batch_size (100) must be divisible by devices (8)
    """
    spec = TrainSpec.create(
        optimizer,
        learning_rate,
        steps,
        batch_size,
        seed,
        schedule=schedule,
        warmup_ratio=warmup_ratio,
        min_lr_ratio=min_lr_ratio,
        hyperparameters=hyperparameters,
        max_global_norm=max_global_norm,
        data_seed=data_seed,
    )
    RunOptions.create(
        spec,
        log_every=log_every,
        devices=devices,
        zero_stage=zero_stage,
        save_every=save_every,
        keep_checkpoints=keep_checkpoints,
        stop_at=stop_at,
        offload_optimizer=offload_optimizer,
    )
    return spec.learning_rate
