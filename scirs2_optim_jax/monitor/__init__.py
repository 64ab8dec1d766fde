"""Run health: in-step metrics, health evaluation, Prometheus, logs, traces and profiling.

Inside the jitted step, :func:`step_metrics` computes a small pytree of scalars. On the host,
:class:`RunMonitor` receives it, evaluates health (:class:`HealthMonitor`), updates the
Prometheus metrics (:class:`PrometheusExporter`) served with ``/health`` by
:class:`MetricsServer`, writes JSON logs, and optionally TensorBoard events and OpenTelemetry
spans. Everything here is a re-export; the implementations live in topical modules.
"""

from scirs2_optim_jax.monitor.config import ENV_VARS, MonitorConfig, Secret, parse_log_level
from scirs2_optim_jax.monitor.health import (
    FINDINGS,
    Finding,
    HealthMonitor,
    HealthReport,
    HealthRules,
    HealthStatus,
    status_for,
)
from scirs2_optim_jax.monitor.logs import LOGGER_NAME, JsonFormatter, configure_logging
from scirs2_optim_jax.monitor.metrics import layer_norms, learning_rate_from_state, step_metrics
from scirs2_optim_jax.monitor.profiling import StepProfiler, profile_steps
from scirs2_optim_jax.monitor.prometheus import LATENCY_BUCKETS, PrometheusExporter
from scirs2_optim_jax.monitor.record import StepReader, StepRecord
from scirs2_optim_jax.monitor.resources import (
    ResourceSampler,
    ResourceSnapshot,
    device_memory_stats,
)
from scirs2_optim_jax.monitor.run import RunMonitor
from scirs2_optim_jax.monitor.server import MetricsServer
from scirs2_optim_jax.monitor.tensorboard import TensorBoardWriter
from scirs2_optim_jax.monitor.tracing import Tracing, otel_available

__all__ = [
    "ENV_VARS",
    "FINDINGS",
    "LATENCY_BUCKETS",
    "LOGGER_NAME",
    "Finding",
    "HealthMonitor",
    "HealthReport",
    "HealthRules",
    "HealthStatus",
    "JsonFormatter",
    "MetricsServer",
    "MonitorConfig",
    "PrometheusExporter",
    "ResourceSampler",
    "ResourceSnapshot",
    "RunMonitor",
    "Secret",
    "StepProfiler",
    "StepReader",
    "StepRecord",
    "TensorBoardWriter",
    "Tracing",
    "configure_logging",
    "device_memory_stats",
    "layer_norms",
    "learning_rate_from_state",
    "otel_available",
    "parse_log_level",
    "profile_steps",
    "status_for",
    "step_metrics",
]
