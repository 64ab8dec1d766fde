"""Prometheus metrics for a training run, all named ``scirs2_*``, in their own registry.

:class:`PrometheusExporter` owns a ``prometheus_client.CollectorRegistry`` (not the global
default, so several runs or tests in one process do not collide) holding the run's gauges,
counters and the step-latency histogram, plus prometheus_client's process collector
(``process_resident_memory_bytes``, ...). Serve it with
:class:`~scirs2_optim_jax.monitor.server.MetricsServer`.

=========================================  =========  ============================================
metric                                     type       meaning
=========================================  =========  ============================================
``scirs2_step``                            gauge      latest step recorded
``scirs2_loss``                            gauge      training loss of that step
``scirs2_gradient_norm``                   gauge      global gradient norm
``scirs2_update_norm``                     gauge      global update norm
``scirs2_parameter_norm``                  gauge      global parameter norm
``scirs2_learning_rate``                   gauge      learning rate used
``scirs2_nonfinite_gradient_values``       gauge      non-finite gradient values in that step
``scirs2_using_fallback``                  gauge      1 while a fallback breaker is open
``scirs2_layer_gradient_norm{layer}``      gauge      per-layer norms (also ``update``,
                                                      ``parameter``), when the step reports them
``scirs2_step_latency_seconds``            histogram  wall time per step
``scirs2_throughput_samples_per_second``   gauge      samples per second of the latest step
``scirs2_steps_total``                     counter    steps recorded
``scirs2_samples_total``                   counter    samples processed
``scirs2_nonfinite_steps_total``           counter    steps that saw NaN or infinite values
``scirs2_skipped_steps_total``             counter    steps a guard skipped
``scirs2_exploded_steps_total``            counter    steps a guard flagged as gradient explosions
``scirs2_fallback_switches_total``         counter    breaker switches
``scirs2_memory_utilization_ratio``        gauge      memory in use, host or device (the fuller)
``scirs2_cpu_utilization_ratio``           gauge      system CPU utilisation
``scirs2_device_memory_bytes{kind}``       gauge      device memory ``in_use``/``limit``, where
                                                      the backend reports it
``scirs2_health_status``                   gauge      0 healthy, 1 warning, 2 critical
``scirs2_health_finding{finding}``         gauge      1 while that finding is present, else 0
=========================================  =========  ============================================
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from scirs2_optim_jax.monitor.health import FINDINGS, HealthReport
from scirs2_optim_jax.monitor.record import StepRecord
from scirs2_optim_jax.monitor.resources import ResourceSnapshot

__all__ = ["LATENCY_BUCKETS", "PrometheusExporter"]

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

# Step metric (as returned by step_metrics) -> gauge name without the prefix.
_SCALAR_GAUGES = {
    "loss": ("loss", "Training loss of the latest step."),
    "grad_norm": ("gradient_norm", "Global L2 norm of the latest step's gradients."),
    "update_norm": ("update_norm", "Global L2 norm of the latest step's updates."),
    "param_norm": ("parameter_norm", "Global L2 norm of the parameters."),
    "learning_rate": ("learning_rate", "Learning rate of the latest step."),
    "nonfinite": (
        "nonfinite_gradient_values",
        "Number of NaN or infinite gradient values in the latest step.",
    ),
    "using_fallback": ("using_fallback", "1 while the fallback optimizer is in use."),
}
_LAYER_GAUGES = {
    "layer_grad_norm": "gradient",
    "layer_update_norm": "update",
    "layer_param_norm": "parameter",
}


class PrometheusExporter:
    """The run's Prometheus metrics, updated from step records, health reports and readings.

    Args:
        registry: the registry to register into; a new one when None.
        namespace: the metric-name prefix.
        process_metrics: also register prometheus_client's process collector.

    Example:
        >>> from scirs2_optim_jax.monitor.record import StepRecord
        >>> exporter = PrometheusExporter()
        >>> exporter.record_step(StepRecord(7, {"loss": 0.25}), latency_seconds=0.01, batch_size=32)
        >>> exporter.registry.get_sample_value("scirs2_loss")
        0.25
        >>> exporter.registry.get_sample_value("scirs2_throughput_samples_per_second")
        3200.0
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "scirs2",
        process_metrics: bool = True,
    ) -> None:
        if registry is not None and not isinstance(registry, CollectorRegistry):
            raise TypeError(
                "PrometheusExporter: registry must be a CollectorRegistry or None, "
                f"got {type(registry).__name__}"
            )
        if not isinstance(namespace, str) or not namespace.isidentifier():
            raise ValueError(
                f"PrometheusExporter: namespace must be an identifier, got {namespace!r}"
            )
        self.registry = CollectorRegistry() if registry is None else registry
        reg, ns = self.registry, namespace

        self._gauges = {
            key: Gauge(name, doc, namespace=ns, registry=reg)
            for key, (name, doc) in _SCALAR_GAUGES.items()
        }
        self.step = Gauge("step", "Latest step recorded.", namespace=ns, registry=reg)
        self._layer_gauges = {
            key: Gauge(
                f"layer_{kind}_norm",
                f"Per-layer L2 norm of the {kind}s.",
                ["layer"],
                namespace=ns,
                registry=reg,
            )
            for key, kind in _LAYER_GAUGES.items()
        }
        self.step_latency = Histogram(
            "step_latency_seconds",
            "Wall time per training step.",
            namespace=ns,
            registry=reg,
            buckets=LATENCY_BUCKETS,
        )
        self.throughput = Gauge(
            "throughput_samples_per_second",
            "Samples per second of the latest step.",
            namespace=ns,
            registry=reg,
        )
        self.steps = Counter("steps", "Training steps recorded.", namespace=ns, registry=reg)
        self.samples = Counter("samples", "Samples processed.", namespace=ns, registry=reg)
        self.nonfinite_steps = Counter(
            "nonfinite_steps",
            "Steps that saw NaN or infinite gradients, updates or loss.",
            namespace=ns,
            registry=reg,
        )
        self.skipped_steps = Counter(
            "skipped_steps", "Steps skipped by a guard.", namespace=ns, registry=reg
        )
        self.exploded_steps = Counter(
            "exploded_steps",
            "Steps a guard flagged as gradient explosions.",
            namespace=ns,
            registry=reg,
        )
        self.fallback_switches = Counter(
            "fallback_switches",
            "Switches of the fallback optimizer breaker, either way.",
            namespace=ns,
            registry=reg,
        )
        self.memory_utilization = Gauge(
            "memory_utilization_ratio",
            "Fraction of memory in use: host or device, whichever is fuller.",
            namespace=ns,
            registry=reg,
        )
        self.cpu_utilization = Gauge(
            "cpu_utilization_ratio", "System CPU utilisation.", namespace=ns, registry=reg
        )
        self.device_memory = Gauge(
            "device_memory_bytes",
            "Device memory in bytes (kind: in_use or limit), where the backend reports it.",
            ["kind"],
            namespace=ns,
            registry=reg,
        )
        self.health_status = Gauge(
            "health_status",
            "Run health: 0 healthy, 1 warning, 2 critical.",
            namespace=ns,
            registry=reg,
        )
        self.health_finding = Gauge(
            "health_finding",
            "1 while the named health finding is present, else 0.",
            ["finding"],
            namespace=ns,
            registry=reg,
        )
        for name in FINDINGS:
            self.health_finding.labels(finding=name).set(0)
        if process_metrics:
            ProcessCollector(registry=reg)

    def record_step(
        self,
        record: StepRecord,
        *,
        latency_seconds: float | None = None,
        batch_size: int | None = None,
    ) -> None:
        """Updates the step metrics from one :class:`StepRecord`.

        Args:
            record: the step.
            latency_seconds: its wall time, observed into the latency histogram.
            batch_size: samples in the step; with the latency gives the throughput.
        """
        if not isinstance(record, StepRecord):
            raise TypeError(
                "PrometheusExporter.record_step: record must be a StepRecord, "
                f"got {type(record).__name__}"
            )
        self.step.set(record.step)
        self.steps.inc()
        for key, value in record.values.items():
            gauge = self._gauges.get(key)
            if gauge is not None:
                gauge.set(value)
        for key, layers in record.layers.items():
            layer_gauge = self._layer_gauges.get(key)
            if layer_gauge is not None:
                for layer, value in layers.items():
                    layer_gauge.labels(layer=layer).set(value)
        if record.nonfinite:
            self.nonfinite_steps.inc()
        if record.skipped:
            self.skipped_steps.inc()
        if record.exploded:
            self.exploded_steps.inc()
        if record.switched:
            self.fallback_switches.inc()
        if batch_size is not None:
            self.samples.inc(batch_size)
        if latency_seconds is not None and math.isfinite(latency_seconds):
            self.step_latency.observe(latency_seconds)
            if batch_size is not None and latency_seconds > 0:
                self.throughput.set(batch_size / latency_seconds)

    def record_resources(self, snapshot: ResourceSnapshot) -> None:
        """Updates the utilisation and device-memory gauges from one reading."""
        self.memory_utilization.set(snapshot.memory_utilization)
        self.cpu_utilization.set(snapshot.cpu_utilization)
        if snapshot.device_bytes_in_use is not None:
            self.device_memory.labels(kind="in_use").set(snapshot.device_bytes_in_use)
        if snapshot.device_bytes_limit is not None:
            self.device_memory.labels(kind="limit").set(snapshot.device_bytes_limit)

    def record_health(self, report: HealthReport) -> None:
        """Updates the health status and the per-finding gauges from one report."""
        self.health_status.set(int(report.status))
        present = set(report.names)
        for name in FINDINGS:
            self.health_finding.labels(finding=name).set(1 if name in present else 0)
