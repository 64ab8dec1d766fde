"""The host's reading of one step: metrics fetched from the device, turned into plain numbers.

:class:`StepReader` turns the metrics pytree a step returned (after ``jax.device_get``) into a
:class:`StepRecord`: Python floats, per-layer dicts, and what happened at this step (non-finite
values, a skipped step, a breaker switch), derived from the guard's cumulative counters. Health
evaluation, Prometheus, logs and TensorBoard all consume the same record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["GUARD_COUNTERS", "StepReader", "StepRecord"]

GUARD_COUNTERS = ("skipped_steps", "nonfinite_steps", "exploded_steps", "switches")


@dataclass(frozen=True)
class StepRecord:
    """One step as the host sees it.

    Attributes:
        step: the step number the caller gave.
        values: the scalar metrics as floats (``loss``, ``grad_norm``, ...).
        layers: the per-layer metrics: ``{"layer_grad_norm": {"dense": 0.3, ...}, ...}``.
        nonfinite: the step saw NaN or infinite gradients, updates or loss.
        skipped: a guard skipped the step.
        exploded: a guard flagged the gradient norm as an explosion.
        switched: a fallback breaker switched at this step.
    """

    step: int
    values: dict[str, float]
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    nonfinite: bool = False
    skipped: bool = False
    exploded: bool = False
    switched: bool = False

    @property
    def error(self) -> bool:
        """True for a step that failed: skipped by a guard, or non-finite without one."""
        return self.skipped or self.nonfinite


def _scalar(name: str, value: Any) -> float:
    array = np.asarray(value)
    if array.ndim != 0:
        raise ValueError(f"StepReader: metric {name!r} must be a scalar, got shape {array.shape}")
    return float(array)


class StepReader:
    """Turns fetched step metrics into :class:`StepRecord` objects, one step after another.

    The guard counters in the metrics are cumulative; the reader remembers the last values to
    tell what happened at each step (a counter that goes down, as after a restore from an
    older checkpoint, is taken as the new baseline).

    Example:
        >>> reader = StepReader()
        >>> reader.read(1, {"loss": 0.5, "nonfinite": 0, "skipped_steps": 0}).skipped
        False
        >>> record = reader.read(2, {"loss": float("nan"), "nonfinite": 3, "skipped_steps": 1})
        >>> record.skipped, record.nonfinite, record.values["nonfinite"]
        (True, True, 3.0)
    """

    def __init__(self) -> None:
        self._counters: dict[str, float] = {}

    def read(self, step: int, metrics: Mapping[str, Any]) -> StepRecord:
        """Builds the record of ``step`` from its fetched ``metrics``.

        Args:
            step: the step number.
            metrics: the step's metrics on the host: scalars, and dicts of scalars for the
                per-layer norms.

        Returns:
            A :class:`StepRecord`.
        """
        if not isinstance(metrics, Mapping):
            raise TypeError(
                f"StepReader.read: metrics must be a mapping, got {type(metrics).__name__}"
            )
        values: dict[str, float] = {}
        layers: dict[str, dict[str, float]] = {}
        for name, value in metrics.items():
            if isinstance(value, Mapping):
                layers[name] = {str(k): _scalar(f"{name}/{k}", x) for k, x in value.items()}
            else:
                values[name] = _scalar(name, value)

        increased: dict[str, bool] = {}
        for name in GUARD_COUNTERS:
            if name in values:
                previous = self._counters.get(name, 0.0)
                increased[name] = values[name] > previous
                self._counters[name] = values[name]
        nonfinite = (
            values.get("nonfinite", 0.0) > 0
            or increased.get("nonfinite_steps", False)
            or any(not math.isfinite(x) for x in values.values())
        )
        return StepRecord(
            step=step,
            values=values,
            layers=layers,
            nonfinite=nonfinite,
            skipped=increased.get("skipped_steps", False),
            exploded=increased.get("exploded_steps", False),
            switched=increased.get("switches", False),
        )
