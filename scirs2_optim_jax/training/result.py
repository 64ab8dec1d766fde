"""What a run of the demo job reports: progress records, the result, and how it is scored.

:class:`TrainLog` is one progress record (``on_log``); :class:`TrainResult` is what
:func:`~scirs2_optim_jax.training.train_digits` returns: the configuration, the final loss
and test accuracy (:func:`evaluate`), the timings, and the final parameters with their
:func:`params_sha256`.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from scirs2_optim_jax import parallel
from scirs2_optim_jax.training.data import DigitsSplit

__all__ = [
    "StopReason",
    "TrainLog",
    "TrainResult",
    "evaluate",
    "params_sha256",
    "steps_per_second",
]

StopReason = Literal["completed", "stopped", "preempted"]


@dataclass(frozen=True)
class TrainLog:
    """One progress record, passed to ``on_log`` every ``log_every`` steps and at the end.

    Attributes:
        step: the step just finished (1-based, counted from the start of the run).
        steps: the run's total steps.
        loss: mean training-batch loss over the steps since the previous record.
        learning_rate: the rate the last of those steps used.
        seconds: time since this process started training, compilation included.
        samples_per_second: throughput since the previous record (since the first step
            finished, for the first record, so compilation is left out when possible).
    """

    step: int
    steps: int
    loss: float
    learning_rate: float
    seconds: float
    samples_per_second: float


@dataclass(frozen=True)
class TrainResult:
    """What :func:`~scirs2_optim_jax.training.train_digits` returns.

    Attributes:
        optimizer, learning_rate, steps, batch_size, seed, schedule: the configuration.
        devices: devices on the data axis; zero_stage: 0, 1 or 2.
        offload_optimizer: None, or where the update of the optimizer state kept in host
            memory ran: ``"device"`` or ``"host"``.
        step: the step the parameters are at (``steps`` unless stopped early).
        start_step: the step the run started from (0, or the checkpoint it resumed).
        stop_reason: ``"completed"``, ``"stopped"`` (``stop_at``) or ``"preempted"``.
        final_loss: mean cross-entropy of the final model over the whole training set.
        test_accuracy: fraction of the held-out test digits classified correctly.
        seconds: wall time of the whole call (data, init, restore, compilation, training,
            evaluation).
        compile_seconds: wall time of the first step, which traces and compiles it.
        steps_per_second: training throughput over the steps after the first.
        samples_per_second: ``steps_per_second * batch_size``.
        checkpoint_step: the newest step saved by this call, or None.
        params: the final parameters on the host, an ``nnx.State`` of ``nnx.Param``.
        params_sha256: :func:`params_sha256` of ``params``.
        phase_seconds: where ``seconds`` went: ``setup`` (data, model, optimizer state,
            restore), ``compile`` (the first step), ``steps`` (the others, with logging,
            metrics and checkpoints) and ``evaluation`` (scoring the final model); they add
            up to ``seconds``.
    """

    optimizer: str
    learning_rate: float
    steps: int
    batch_size: int
    seed: int
    schedule: str
    devices: int
    zero_stage: int
    step: int
    start_step: int
    stop_reason: StopReason
    final_loss: float
    test_accuracy: float
    seconds: float
    compile_seconds: float
    steps_per_second: float
    samples_per_second: float
    checkpoint_step: int | None
    params: nnx.State
    params_sha256: str
    phase_seconds: dict[str, float] = field(default_factory=dict)
    offload_optimizer: str | None = None


def params_sha256(params: Any) -> str:
    """Returns the sha256 hex digest of a parameter pytree's raw bytes, in canonical order.

    The leaves are visited in ``jax.tree_util.tree_flatten_with_path`` order, gathered to
    the host as C-contiguous numpy arrays (whole logical arrays, whatever their sharding),
    and their bytes (native order: little-endian on every platform JAX supports) hashed one
    after the other. Two runs with the same seed and configuration give the same digest; any
    change to any parameter changes it.

    Args:
        params: a pytree of arrays, e.g. ``nnx.state(model, nnx.Param)``.

    Returns:
        64 lowercase hex characters.

    Example:
        >>> import numpy as np
        >>> params_sha256({"w": np.zeros(2, np.float32)})[:16]
        'af5570f5a1810b7a'
    """
    digest = hashlib.sha256()
    for _, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        digest.update(np.ascontiguousarray(parallel.to_host(leaf)).tobytes())
    return digest.hexdigest()


def steps_per_second(ran: int, train_start: float, first_done: float, train_end: float) -> float:
    """Training throughput of ``ran`` steps, leaving out the first (compiling) one if it can.

    Args:
        ran: the steps this call ran.
        train_start, first_done, train_end: ``time.perf_counter()`` before the first step,
            after it, and after the last.

    Example:
        >>> steps_per_second(11, 0.0, 5.0, 6.0), steps_per_second(1, 0.0, 2.0, 2.0)
        (10.0, 0.5)
    """
    rest = train_end - first_done
    if ran > 1 and rest > 0:
        return (ran - 1) / rest
    if ran > 0:
        return ran / (train_end - train_start)
    return 0.0


@functools.partial(jax.jit, static_argnums=0)
def _per_sample(
    graphdef: Any, params: Any, x: jax.Array, y: jax.Array
) -> tuple[jax.Array, jax.Array]:
    logits = nnx.merge(graphdef, params)(x)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return losses, jnp.argmax(logits, axis=-1) == y


def evaluate(graphdef: Any, params: Any, data: DigitsSplit) -> tuple[float, float]:
    """Mean training loss and test accuracy of the model ``nnx.merge(graphdef, params)``.

    Both sets go through the model in one call (one shape, one compilation, cached across
    runs by the static ``graphdef``); the means are taken on the host in float64.

    Example:
        >>> from flax import nnx
        >>> from scirs2_optim_jax.training import MLP, load_digits_split
        >>> graphdef, params = nnx.split(MLP(rngs=nnx.Rngs(0)))
        >>> loss, accuracy = evaluate(graphdef, params, load_digits_split())
        >>> loss > 1.0, 0.0 <= accuracy < 0.5  # untrained
        (True, True)
    """
    x = np.concatenate([data.x_train, data.x_test])
    y = np.concatenate([data.y_train, data.y_test])
    losses, correct = jax.device_get(_per_sample(graphdef, params, x, y))
    n = len(data.x_train)
    return float(np.mean(losses[:n], dtype=np.float64)), float(np.mean(correct[n:]))
