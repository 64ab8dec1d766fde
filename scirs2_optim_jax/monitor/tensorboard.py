"""An optional TensorBoard writer for the same step metrics (needs ``tensorboardX``).

Install it with the ``tensorboard`` extra: ``pip install 'scirs2-optim-jax[tensorboard]'``.
Scalars go under ``train/<metric>``, per-layer norms under ``<metric>/<layer>``, health under
``health/status`` and ``health/findings``.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

from scirs2_optim_jax.monitor.health import HealthReport
from scirs2_optim_jax.monitor.record import StepRecord

__all__ = ["TensorBoardWriter"]


class TensorBoardWriter:
    """Writes step records and health reports as TensorBoard scalars.

    Args:
        logdir: directory for the event files (created when missing).
        flush_secs: how often the writer flushes to disk.

    Example:
        >>> import tempfile
        >>> from scirs2_optim_jax.monitor.record import StepRecord
        >>> with tempfile.TemporaryDirectory() as logdir:
        ...     with TensorBoardWriter(logdir) as writer:
        ...         writer.write_step(StepRecord(1, {"loss": 0.5}))
        ...     any(name.startswith("events.out") for name in os.listdir(logdir))
        True
    """

    def __init__(self, logdir: str | os.PathLike[str], *, flush_secs: int = 10) -> None:
        if not isinstance(logdir, (str, os.PathLike)):
            raise TypeError(
                f"TensorBoardWriter: logdir must be a path, got {type(logdir).__name__}"
            )
        if isinstance(flush_secs, bool) or not isinstance(flush_secs, int) or flush_secs < 1:
            raise ValueError(
                f"TensorBoardWriter: flush_secs must be an integer >= 1, got {flush_secs!r}"
            )
        try:
            from tensorboardX import SummaryWriter
        except ImportError as err:
            raise ImportError(
                "TensorBoardWriter needs tensorboardX: pip install 'scirs2-optim-jax[tensorboard]'"
            ) from err
        self.logdir = os.fspath(logdir)
        self._writer: Any = SummaryWriter(logdir=self.logdir, flush_secs=flush_secs)

    def write_step(self, record: StepRecord) -> None:
        """Adds the record's scalars and per-layer norms at its step."""
        for name, value in record.values.items():
            self._writer.add_scalar(f"train/{name}", value, record.step)
        for group, layers in record.layers.items():
            for layer, value in layers.items():
                self._writer.add_scalar(f"{group}/{layer}", value, record.step)

    def write_health(self, report: HealthReport, step: int) -> None:
        """Adds the health status (0/1/2) and the number of findings at ``step``."""
        self._writer.add_scalar("health/status", int(report.status), step)
        self._writer.add_scalar("health/findings", len(report.findings), step)

    def flush(self) -> None:
        """Writes pending events to disk."""
        self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        self._writer.close()

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
