"""The host side of monitoring a run: one object the training loop hands each step's metrics.

:class:`RunMonitor` ties the pieces together. The loop calls ``monitor.record(step, metrics)``
right after dispatching a step, with the metrics pytree the step returned, still on the
device. The monitor fetches the *previous* step's metrics, which are ready by then, so it never
makes the host wait for the step it has just launched; the last step is fetched by
:meth:`RunMonitor.flush` (or on close). Each fetched step becomes a
:class:`~scirs2_optim_jax.monitor.record.StepRecord`, which feeds the health monitor, the
Prometheus exporter, the JSON logs and, when configured, TensorBoard. Every ``health_every``
steps it samples CPU and memory and evaluates health; every ``log_every`` steps it logs the
step. When ``port`` is set, ``/metrics`` and ``/health`` are served while the monitor runs.

Step latency is the wall time between consecutive ``record`` calls, which in a loop bound by
the device is the time per step; the first step (compilation) has none.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import jax
from prometheus_client import CollectorRegistry

from scirs2_optim_jax.monitor.config import MonitorConfig
from scirs2_optim_jax.monitor.health import HealthMonitor, HealthReport, HealthStatus
from scirs2_optim_jax.monitor.logs import LOGGER_NAME, configure_logging
from scirs2_optim_jax.monitor.prometheus import PrometheusExporter
from scirs2_optim_jax.monitor.record import StepReader, StepRecord
from scirs2_optim_jax.monitor.resources import ResourceSampler
from scirs2_optim_jax.monitor.server import MetricsServer
from scirs2_optim_jax.monitor.tensorboard import TensorBoardWriter
from scirs2_optim_jax.monitor.tracing import Tracing

__all__ = ["RunMonitor"]


class RunMonitor:
    """Receives each step's metrics and reports the run's health everywhere configured.

    Args:
        config: where and how to report; ``MonitorConfig()`` (no server) when None.
        batch_size: samples per step, for the throughput and sample counter.
        registry: Prometheus registry to use; a new private one when None.
        tracing: spans to use; one built from ``config.otlp_endpoint`` when None.
        configure_logs: install the JSON log formatter at ``config.log_level`` on the
            package's logger when the monitor starts.
        clock: seconds as a float, for step latency (``time.perf_counter``).

    Example:
        >>> import jax.numpy as jnp
        >>> with RunMonitor(MonitorConfig(health_every=1), configure_logs=False) as monitor:
        ...     for step in range(3):
        ...         _ = monitor.record(step, {"loss": jnp.float32(1.0 / (step + 1)),
        ...                                   "grad_norm": jnp.float32(50.0)})
        >>> monitor.exporter.registry.get_sample_value("scirs2_steps_total")
        3.0
        >>> "gradient_explosion" in monitor.health.latest.names
        True
    """

    def __init__(
        self,
        config: MonitorConfig | None = None,
        *,
        batch_size: int | None = None,
        registry: CollectorRegistry | None = None,
        tracing: Tracing | None = None,
        configure_logs: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        fn = "RunMonitor"
        if config is not None and not isinstance(config, MonitorConfig):
            raise TypeError(
                f"{fn}: config must be a MonitorConfig or None, got {type(config).__name__}"
            )
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(
                f"{fn}: batch_size must be an integer >= 1 or None, got {batch_size!r}"
            )
        if tracing is not None and not isinstance(tracing, Tracing):
            raise TypeError(
                f"{fn}: tracing must be a Tracing or None, got {type(tracing).__name__}"
            )
        if not callable(clock):
            raise TypeError(f"{fn}: clock must be callable, got {clock!r}")
        self.config = MonitorConfig() if config is None else config
        self.batch_size = batch_size
        self.exporter = PrometheusExporter(registry)
        self.health = HealthMonitor(self.config.health_rules)
        self._owns_tracing = tracing is None
        self.tracing = (
            Tracing(self.config.service_name, otlp_endpoint=self.config.otlp_endpoint)
            if tracing is None
            else tracing
        )
        self.server: MetricsServer | None = None
        self.tensorboard: TensorBoardWriter | None = None
        self.logger = logging.getLogger(LOGGER_NAME)
        self._configure_logs = configure_logs
        self._clock = clock
        self._reader = StepReader()
        self._sampler = ResourceSampler()
        self._pending: tuple[int, Any, float] | None = None
        self._last_time: float | None = None
        self._processed = 0
        self._status = HealthStatus.HEALTHY
        self._started = False

    def start(self) -> RunMonitor:
        """Configures logs, opens TensorBoard and starts the server as configured."""
        if self._started:
            return self
        if self._configure_logs:
            configure_logging(self.config.log_level)
        if self.config.tensorboard_dir is not None:
            self.tensorboard = TensorBoardWriter(self.config.tensorboard_dir)
        if self.config.port is not None:
            self.server = MetricsServer(
                self.exporter.registry,
                lambda: self.health.latest,
                host=self.config.host,
                port=self.config.port,
                token=self.config.token,
            ).start()
        self._started = True
        return self

    @property
    def url(self) -> str | None:
        """Base URL of the running ``/metrics`` and ``/health`` server, None without one."""
        return None if self.server is None else self.server.url

    def record(self, step: int, metrics: Mapping[str, Any]) -> StepRecord | None:
        """Hands over step ``step``'s metrics; processes the previous step's.

        Args:
            step: the step number.
            metrics: the metrics pytree the step returned (device arrays are fine).

        Returns:
            The record of the previous step, or None for the first call.
        """
        if isinstance(step, bool):
            raise TypeError(f"RunMonitor.record: step must be an integer, got {step!r}")
        try:
            step = operator.index(step)
        except TypeError:
            raise TypeError(f"RunMonitor.record: step must be an integer, got {step!r}") from None
        if not isinstance(metrics, Mapping):
            raise TypeError(
                f"RunMonitor.record: metrics must be a mapping, got {type(metrics).__name__}"
            )
        now = self._clock()
        done = self._process_pending()
        self._pending = (step, metrics, now)
        return done

    def flush(self) -> StepRecord | None:
        """Processes the step still held (waiting for it); returns its record."""
        return self._process_pending()

    def evaluate_health(self) -> HealthReport:
        """Samples resources and evaluates health now; exports and logs the result."""
        snapshot = self._sampler.sample()
        self.exporter.record_resources(snapshot)
        report = self.health.evaluate(snapshot)
        self.exporter.record_health(report)
        if self.tensorboard is not None and report.step is not None:
            self.tensorboard.write_health(report, report.step)
        if report.status != self._status:
            level = logging.INFO if report.status is HealthStatus.HEALTHY else logging.WARNING
            self.logger.log(
                level,
                "health %s",
                report.status.label,
                extra={"health": report.to_dict()},
            )
            self._status = report.status
        return report

    def _process_pending(self) -> StepRecord | None:
        if self._pending is None:
            return None
        step, metrics, when = self._pending
        self._pending = None
        latency = None if self._last_time is None else when - self._last_time
        self._last_time = when
        record = self._reader.read(step, jax.device_get(metrics))
        self.health.observe(record)
        self.exporter.record_step(record, latency_seconds=latency, batch_size=self.batch_size)
        if self.tensorboard is not None:
            self.tensorboard.write_step(record)
        self._processed += 1
        if record.skipped:
            self.logger.warning("step skipped by the guard", extra=_fields(record))
        if record.switched:
            self.logger.warning(
                "fallback breaker switched",
                extra={**_fields(record), "using_fallback": record.values.get("using_fallback")},
            )
        log_every = self.config.log_every
        if log_every and self._processed % log_every == 0:
            self.logger.info("step", extra=_fields(record))
        if self._processed % self.config.health_every == 0:
            self.evaluate_health()
        return record

    def close(self) -> None:
        """Processes the held step, evaluates health once more, stops everything it started."""
        try:
            # The last step may have fallen between two scheduled evaluations.
            if self.flush() is not None and self._processed % self.config.health_every:
                self.evaluate_health()
        finally:
            if self.server is not None:
                self.server.stop()
                self.server = None
            if self.tensorboard is not None:
                self.tensorboard.close()
                self.tensorboard = None
            if self._owns_tracing:
                self.tracing.shutdown()
            self._started = False

    def __enter__(self) -> RunMonitor:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _fields(record: StepRecord) -> dict[str, Any]:
    return {"step": record.step, "metrics": record.values}
