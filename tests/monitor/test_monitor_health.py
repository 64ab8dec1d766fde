"""Health evaluation on the host: each default rule fires on its own with its name, each is
configurable, and the number of findings sets the status (0 Healthy, 1-2 Warning, 3+
Critical). Also the monitoring config and its secret token."""

from __future__ import annotations

import logging

import pytest

from scirs2_optim_jax.monitor import (
    FINDINGS,
    HealthMonitor,
    HealthRules,
    HealthStatus,
    MonitorConfig,
    ResourceSnapshot,
    Secret,
    StepReader,
    StepRecord,
)


def _resources(cpu: float = 0.1, memory: float = 0.2, **kwargs: int) -> ResourceSnapshot:
    return ResourceSnapshot(
        cpu_utilization=cpu, host_memory_utilization=memory, rss_bytes=1 << 20, **kwargs
    )


def _healthy_steps(monitor: HealthMonitor, n: int, start: int = 0) -> None:
    """Steps whose loss falls steadily: none of the rules fire on them."""
    for i in range(start, start + n):
        monitor.observe(StepRecord(i, {"loss": 10.0 / (1 + i), "grad_norm": 1.0}))


# Each case: rules (stall window small so it fills quickly), what to feed, the finding.
def _explosion(m: HealthMonitor) -> None:
    m.observe(StepRecord(99, {"loss": 0.1, "grad_norm": 10.5}))


def _vanishing(m: HealthMonitor) -> None:
    m.observe(StepRecord(99, {"loss": 0.1, "grad_norm": 5e-7}))


def _errors(m: HealthMonitor) -> None:
    # 2 failed of the last 100 steps: 2% > 1%.
    for i in range(100):
        record = StepRecord(100 + i, {"loss": 0.05 / (1 + i), "grad_norm": 1.0}, skipped=i >= 98)
        m.observe(record)


def _stalled(m: HealthMonitor) -> None:
    for i in range(20):
        m.observe(StepRecord(100 + i, {"loss": 0.5, "grad_norm": 1.0}))


def _nonfinite(m: HealthMonitor) -> None:
    m.observe(StepRecord(99, {"loss": 0.01, "grad_norm": 1.0}, nonfinite=True))


CASES = {
    "gradient_explosion": (_explosion, None),
    "vanishing_gradient": (_vanishing, None),
    "high_memory": (None, _resources(memory=0.86)),
    "high_cpu": (None, _resources(cpu=0.91)),
    "high_error_rate": (_errors, None),
    "loss_stalled": (_stalled, None),
    "nonfinite_values": (_nonfinite, None),
}
RULES = HealthRules(error_window=100, stall_window=20)


def test_every_finding_has_a_case() -> None:
    assert sorted(CASES) == sorted(FINDINGS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_default_rule_fires_alone_and_is_named(name: str) -> None:
    feed, resources = CASES[name]
    monitor = HealthMonitor(RULES)
    _healthy_steps(monitor, 100)
    assert monitor.evaluate(_resources()).status is HealthStatus.HEALTHY
    if feed is not None:
        feed(monitor)
    report = monitor.evaluate(resources if resources is not None else _resources())
    assert report.names == (name,)
    assert report.status is HealthStatus.WARNING
    assert report.findings[0].message


def test_thresholds_are_the_documented_defaults() -> None:
    rules = HealthRules()
    assert (rules.max_grad_norm, rules.min_grad_norm) == (10.0, 1e-6)
    assert (rules.max_memory_utilization, rules.max_cpu_utilization) == (0.85, 0.90)
    assert rules.max_error_rate == 0.01
    monitor = HealthMonitor()
    monitor.observe(StepRecord(0, {"loss": 1.0, "grad_norm": 10.0}))  # at the limit: fine
    assert monitor.evaluate(_resources(cpu=0.9, memory=0.85)).names == ()
    monitor.observe(StepRecord(1, {"loss": 1.0, "grad_norm": 10.01}))
    assert monitor.evaluate(_resources(cpu=0.901, memory=0.851)).names == (
        "gradient_explosion",
        "high_memory",
        "high_cpu",
    )


def test_each_rule_is_configurable_and_can_be_switched_off() -> None:
    monitor = HealthMonitor(HealthRules(max_grad_norm=100.0, max_cpu_utilization=None))
    monitor.observe(StepRecord(0, {"loss": 1.0, "grad_norm": 50.0}))
    assert monitor.evaluate(_resources(cpu=1.0)).names == ()
    monitor = HealthMonitor(HealthRules(max_grad_norm=1.0, nonfinite=False))
    monitor.observe(StepRecord(0, {"loss": 1.0, "grad_norm": 2.0}, nonfinite=True))
    assert monitor.evaluate().names == ("gradient_explosion", "high_error_rate")


def test_status_counts_findings_three_or_more_is_critical() -> None:
    monitor = HealthMonitor(HealthRules(stall_window=None))
    monitor.observe(StepRecord(0, {"loss": 1.0, "grad_norm": 50.0}))
    assert monitor.evaluate().status is HealthStatus.WARNING  # 1
    monitor.observe(StepRecord(1, {"loss": 1.0, "grad_norm": 50.0}))
    assert monitor.evaluate(_resources(cpu=0.95)).status is HealthStatus.WARNING  # 2
    monitor.observe(StepRecord(2, {"loss": 1.0, "grad_norm": 50.0}))
    report = monitor.evaluate(_resources(cpu=0.95, memory=0.95))  # 3
    assert report.status is HealthStatus.CRITICAL
    assert report.names == ("gradient_explosion", "high_memory", "high_cpu")
    assert report.step == 2
    strict = HealthMonitor(HealthRules(critical_findings=1))
    strict.observe(StepRecord(0, {"loss": 1.0, "grad_norm": 50.0}))
    assert strict.evaluate().status is HealthStatus.CRITICAL


def test_loss_stall_compares_the_halves_of_a_full_window() -> None:
    monitor = HealthMonitor(HealthRules(stall_window=10, min_improvement=0.01))
    for i in range(9):  # not full yet: no judgement
        monitor.observe(StepRecord(i, {"loss": 1.0}))
    assert monitor.evaluate().names == ()
    monitor.observe(StepRecord(9, {"loss": 1.0}))
    stalled = monitor.evaluate().findings
    assert [f.name for f in stalled] == ["loss_stalled"]
    assert stalled[0].value == 0.0 and stalled[0].threshold == 0.01
    # Newer half 2% below the older: an improvement above the threshold.
    for i in range(5):
        monitor.observe(StepRecord(10 + i, {"loss": 0.98}))
    assert monitor.evaluate().names == ()


def test_error_rate_uses_the_window_and_counts_unguarded_nonfinite_steps() -> None:
    monitor = HealthMonitor(HealthRules(error_window=200, stall_window=None, nonfinite=False))
    monitor.observe(StepRecord(0, {"loss": 1.0}, nonfinite=True))
    for i in range(1, 200):
        monitor.observe(StepRecord(i, {"loss": 1.0}))
    assert monitor.evaluate().names == ()  # 1 in 200 = 0.5%
    # Step 0 leaves the window as three skipped steps enter: 3 in 200 = 1.5%.
    for i in range(200, 203):
        monitor.observe(StepRecord(i, {"loss": 1.0}, skipped=True))
    report = monitor.evaluate()
    assert report.names == ("high_error_rate",)
    assert report.findings[0].value == pytest.approx(3 / 200)


def test_nonfinite_finding_covers_the_steps_since_the_previous_evaluation() -> None:
    monitor = HealthMonitor(HealthRules(max_error_rate=None))
    monitor.observe(StepRecord(0, {"loss": float("nan")}, nonfinite=True))
    monitor.observe(StepRecord(1, {"loss": 1.0}))
    assert monitor.evaluate().names == ("nonfinite_values",)
    monitor.observe(StepRecord(2, {"loss": 1.0}))
    assert monitor.evaluate().names == ()


def test_memory_rule_uses_device_memory_when_it_is_fuller() -> None:
    device_full = _resources(memory=0.3, device_bytes_in_use=90, device_bytes_limit=100)
    assert device_full.memory_utilization == 0.9
    monitor = HealthMonitor()
    assert monitor.evaluate(device_full).names == ("high_memory",)
    assert _resources(memory=0.3).device_memory_utilization is None


def test_step_reader_derives_events_from_cumulative_guard_counters() -> None:
    reader = StepReader()
    first = reader.read(1, {"loss": 1.0, "skipped_steps": 0, "switches": 0})
    assert not (first.skipped or first.switched or first.error)
    second = reader.read(2, {"loss": 1.0, "skipped_steps": 1, "exploded_steps": 1, "switches": 1})
    assert second.skipped and second.exploded and second.switched and second.error
    third = reader.read(3, {"loss": 1.0, "skipped_steps": 1, "switches": 1})
    assert not (third.skipped or third.switched)
    layered = reader.read(4, {"loss": 1.0, "layer_grad_norm": {"dense": 2.0}})
    assert layered.layers == {"layer_grad_norm": {"dense": 2.0}}
    with pytest.raises(ValueError, match="metric 'loss' must be a scalar"):
        reader.read(5, {"loss": [1.0, 2.0]})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_grad_norm": -1.0}, ValueError, "max_grad_norm must be a finite number >= 0.0"),
        ({"max_cpu_utilization": 1.5}, ValueError, "max_cpu_utilization must be a finite"),
        ({"max_error_rate": "1%"}, TypeError, "max_error_rate must be a number or None"),
        ({"stall_window": 7}, ValueError, "stall_window must be an even integer"),
        ({"error_window": 0}, ValueError, "error_window must be an integer >= 1"),
        ({"nonfinite": 1}, TypeError, "nonfinite must be a bool"),
        ({"critical_findings": 0}, ValueError, "critical_findings must be an integer >= 1"),
    ],
)
def test_health_rules_reject_bad_values(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=f"HealthRules: {match}"):
        HealthRules(**kwargs)


def test_health_monitor_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="HealthMonitor: rules must be a HealthRules"):
        HealthMonitor({"max_grad_norm": 1.0})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="resources must be a ResourceSnapshot"):
        HealthMonitor().evaluate({"cpu": 1.0})  # type: ignore[arg-type]


def test_config_reads_the_environment_and_hides_the_token() -> None:
    env = {
        "SCIRS2_METRICS_PORT": "0",
        "SCIRS2_METRICS_TOKEN": "hunter2",
        "SCIRS2_LOG_LEVEL": "warning",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
    }
    config = MonitorConfig.from_env(env, log_every=5)
    assert config.port == 0 and config.log_every == 5
    assert config.host == "127.0.0.1"
    assert isinstance(config.token, Secret) and config.token.reveal() == "hunter2"
    assert "hunter2" not in repr(config) and "hunter2" not in str(config)
    assert config.otlp_endpoint == "http://127.0.0.1:4318"
    assert logging.getLevelName(config.log_level.upper()) == logging.WARNING
    assert MonitorConfig.from_env({}) == MonitorConfig()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"port": -1}, ValueError, "port must be an integer in \\[0, 65535\\], got -1"),
        ({"port": "9100"}, TypeError, "port must be an integer, got '9100'"),
        ({"token": 1234}, TypeError, "token must be a str, a Secret or None, got int"),
        ({"token": ""}, ValueError, "Secret: value must be a non-empty string"),
        ({"log_level": "LOUD"}, ValueError, "MonitorConfig: log_level must be one of"),
        ({"health_every": 0}, ValueError, "health_every must be an integer >= 1"),
        ({"otlp_endpoint": "127.0.0.1:4318"}, ValueError, "otlp_endpoint must be an http"),
        ({"health_rules": {}}, TypeError, "health_rules must be a HealthRules"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        MonitorConfig(**kwargs)


def test_config_from_env_names_a_bad_port_variable() -> None:
    with pytest.raises(ValueError, match="SCIRS2_METRICS_PORT must be an integer port"):
        MonitorConfig.from_env({"SCIRS2_METRICS_PORT": "ninety"})
