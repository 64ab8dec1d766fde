"""Prometheus: the exporter's scirs2_* metrics, the /metrics and /health endpoint with its
bearer token, the shipped alert rules and scrape config (promtool), and an end-to-end run in
which a real Prometheus server on loopback scrapes a training job."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from flax import nnx
from prometheus_client.parser import text_string_to_metric_families

import scirs2_optim_jax as so
from scirs2_optim_jax.monitor import (
    FINDINGS,
    Finding,
    HealthReport,
    HealthStatus,
    MetricsServer,
    MonitorConfig,
    PrometheusExporter,
    ResourceSnapshot,
    RunMonitor,
    StepRecord,
    step_metrics,
)
from scirs2_optim_jax.resilience import skip_non_finite
from scirs2_optim_jax.training import MLP, iterate_batches, load_digits_split

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
TOKEN = "test-token-9f8e7d"


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), err.read()


def _families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


# --- exporter ---------------------------------------------------------------------------


def test_exporter_updates_every_metric_from_records_readings_and_reports() -> None:
    exporter = PrometheusExporter()
    reg = exporter.registry
    values = {
        "loss": 0.5,
        "grad_norm": 2.0,
        "update_norm": 0.01,
        "param_norm": 30.0,
        "learning_rate": 1e-3,
        "nonfinite": 0.0,
    }
    exporter.record_step(StepRecord(1, values), latency_seconds=0.02, batch_size=64)
    exporter.record_step(
        StepRecord(
            2,
            {**values, "loss": float("nan"), "nonfinite": 3.0, "using_fallback": 1.0},
            layers={"layer_grad_norm": {"hidden/0": 1.5}},
            nonfinite=True,
            skipped=True,
            switched=True,
        ),
        latency_seconds=0.04,
        batch_size=64,
    )
    exporter.record_resources(
        ResourceSnapshot(0.42, 0.3, 1 << 20, device_bytes_in_use=60, device_bytes_limit=100)
    )
    exporter.record_health(
        HealthReport(HealthStatus.WARNING, (Finding("loss_stalled", "flat"),), step=2)
    )

    assert reg.get_sample_value("scirs2_step") == 2
    assert np.isnan(reg.get_sample_value("scirs2_loss"))
    assert reg.get_sample_value("scirs2_gradient_norm") == 2.0
    assert reg.get_sample_value("scirs2_learning_rate") == 1e-3
    assert reg.get_sample_value("scirs2_nonfinite_gradient_values") == 3.0
    assert reg.get_sample_value("scirs2_using_fallback") == 1.0
    assert reg.get_sample_value("scirs2_layer_gradient_norm", {"layer": "hidden/0"}) == 1.5
    assert reg.get_sample_value("scirs2_steps_total") == 2
    assert reg.get_sample_value("scirs2_samples_total") == 128
    assert reg.get_sample_value("scirs2_nonfinite_steps_total") == 1
    assert reg.get_sample_value("scirs2_skipped_steps_total") == 1
    assert reg.get_sample_value("scirs2_fallback_switches_total") == 1
    assert reg.get_sample_value("scirs2_step_latency_seconds_count") == 2
    assert reg.get_sample_value("scirs2_step_latency_seconds_sum") == pytest.approx(0.06)
    assert reg.get_sample_value("scirs2_step_latency_seconds_bucket", {"le": "0.025"}) == 1
    assert reg.get_sample_value("scirs2_throughput_samples_per_second") == 64 / 0.04
    assert reg.get_sample_value("scirs2_cpu_utilization_ratio") == 0.42
    assert reg.get_sample_value("scirs2_memory_utilization_ratio") == 0.6
    assert reg.get_sample_value("scirs2_device_memory_bytes", {"kind": "in_use"}) == 60
    assert reg.get_sample_value("scirs2_health_status") == 1
    for name in FINDINGS:
        expected = 1.0 if name == "loss_stalled" else 0.0
        assert reg.get_sample_value("scirs2_health_finding", {"finding": name}) == expected
    assert reg.get_sample_value("process_resident_memory_bytes") > 0

    own = [m.name for m in reg.collect() if not m.name.startswith("process_")]
    assert own and all(name.startswith("scirs2_") for name in own)


def test_exporters_have_separate_registries() -> None:
    a, b = PrometheusExporter(), PrometheusExporter()
    a.record_step(StepRecord(1, {"loss": 1.0}))
    assert a.registry.get_sample_value("scirs2_steps_total") == 1
    assert b.registry.get_sample_value("scirs2_steps_total") == 0


def test_exporter_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="registry must be a CollectorRegistry"):
        PrometheusExporter(registry={})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="namespace must be an identifier, got 'a-b'"):
        PrometheusExporter(namespace="a-b")
    with pytest.raises(TypeError, match="record must be a StepRecord, got dict"):
        PrometheusExporter().record_step({"loss": 1.0})  # type: ignore[arg-type]


# --- HTTP endpoint ----------------------------------------------------------------------


@pytest.fixture
def exporter() -> PrometheusExporter:
    exporter = PrometheusExporter()
    exporter.record_step(StepRecord(3, {"loss": 0.125}))
    return exporter


def test_metrics_and_health_are_served_on_loopback(exporter: PrometheusExporter) -> None:
    report = [HealthReport(HealthStatus.HEALTHY, (), step=3)]
    with MetricsServer(exporter.registry, lambda: report[0], port=0) as server:
        assert server.url == f"http://127.0.0.1:{server.port}" and server.port > 0
        status, headers, body = _get(server.url + "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        families = _families(body.decode())
        assert families["scirs2_loss"].samples[0].value == 0.125

        status, _, body = _get(server.url + "/health")
        assert status == 200
        assert json.loads(body) == {"status": "healthy", "step": 3, "findings": []}

        report[0] = HealthReport(HealthStatus.WARNING, (Finding("high_cpu", "CPU 95%"),), 4)
        status, _, body = _get(server.url + "/health")
        assert status == 200 and json.loads(body)["findings"][0]["name"] == "high_cpu"

        three = tuple(Finding(n, n) for n in ("high_cpu", "high_memory", "loss_stalled"))
        report[0] = HealthReport(HealthStatus.CRITICAL, three, 5)
        status, _, body = _get(server.url + "/health")
        assert status == 503
        assert json.loads(body)["status"] == "critical"

        status, _, _ = _get(server.url + "/nothing")
        assert status == 404
    assert not server.running


def test_token_is_required_on_both_endpoints(exporter: PrometheusExporter) -> None:
    with MetricsServer(exporter.registry, port=0, token=TOKEN) as server:
        for path in ("/metrics", "/health"):
            status, headers, body = _get(server.url + path)
            assert status == 401, path
            assert headers["WWW-Authenticate"].startswith("Bearer")
            assert b"scirs2_loss" not in body
            assert _get(server.url + path, token="wrong")[0] == 401
            assert _get(server.url + path, token=TOKEN)[0] == 200
        status, _, body = _get(server.url + "/metrics", token=TOKEN)
        assert b"scirs2_loss 0.125" in body


def test_server_rejects_bad_arguments(exporter: PrometheusExporter) -> None:
    with pytest.raises(ValueError, match="MetricsServer: port must be an integer in"):
        MetricsServer(exporter.registry, port=70000)
    with pytest.raises(TypeError, match="MetricsServer: registry must be a CollectorRegistry"):
        MetricsServer(exporter)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="MetricsServer: token must be a str, a Secret or None"):
        MetricsServer(exporter.registry, token=123)  # type: ignore[arg-type]
    server = MetricsServer(exporter.registry)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.port


# --- alert rules and scrape config (promtool) -------------------------------------------


def _promtool(*args: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_alert_rules_pass_promtool_check_and_define_the_required_alerts() -> None:
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {
        "HighMemoryUsage",
        "OptimizationStalled",
        "GradientExplosion",
        "NonFiniteSteps",
    } <= names


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_rule_tests_fail_when_a_rule_is_broken(tmp_path: Path) -> None:
    # The rule tests can fail: raise the memory threshold and they must.
    shutil.copy(DEPLOY / "alerts_test.yml", tmp_path)
    text = (DEPLOY / "alerts.yml").read_text()
    broken = text.replace(
        "scirs2_memory_utilization_ratio > 0.85", "scirs2_memory_utilization_ratio > 0.95"
    )
    assert broken != text
    (tmp_path / "alerts.yml").write_text(broken)
    result = _promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0 and "HighMemoryUsage" in result.stdout + result.stderr


def test_scrape_config_passes_promtool_check(tmp_path: Path) -> None:
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(DEPLOY / name, tmp_path)
    (tmp_path / "scirs2-metrics-token").write_text(TOKEN)
    result = _promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["job_name"] == "scirs2-training" and job["metrics_path"] == "/metrics"


# --- end to end: a real Prometheus scraping a training job ------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _query(base: str, promql: str) -> list[dict[str, Any]]:
    status, _, body = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    if status != 200:
        return []
    answer = json.loads(body)
    return answer["data"]["result"] if answer.get("status") == "success" else []


class _Prometheus:
    """A Prometheus server subprocess on loopback, scraping one target with the shipped
    scrape config (made to scrape every second)."""

    def __init__(self, workdir: Path, target_port: int) -> None:
        config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
        config["global"]["scrape_interval"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        job = config["scrape_configs"][0]
        job["scrape_interval"] = "1s"
        job["scrape_timeout"] = "1s"
        job["static_configs"] = [{"targets": [f"127.0.0.1:{target_port}"]}]
        shutil.copy(DEPLOY / "alerts.yml", workdir)
        (workdir / "scirs2-metrics-token").write_text(TOKEN)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


def _digits_job(batch_size: int) -> tuple[Any, Any, Any, Any]:
    data = load_digits_split(seed=0)
    batches = iterate_batches(data.x_train, data.y_train, batch_size, seed=0)
    model = MLP(64, (32,), 10, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, skip_non_finite(so.adamw(3e-3)), wrt=nnx.Param)

    @nnx.jit
    def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> dict:
        def loss_fn(model: MLP) -> jax.Array:
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return step_metrics(
            loss, grads, opt_state=optimizer.opt_state, learning_rate=jnp.float32(3e-3)
        )

    return model, optimizer, batches, train_step


def test_prometheus_server_scrapes_a_running_training_job(tmp_path: Path) -> None:
    assert shutil.which("prometheus"), "scripts/test-setup.sh installs prometheus"
    batch_size = 64
    model, optimizer, batches, train_step = _digits_job(batch_size)
    config = MonitorConfig(port=0, token=TOKEN, log_every=0, health_every=5)
    monitor = RunMonitor(config, batch_size=batch_size, configure_logs=False).start()
    prometheus = _Prometheus(tmp_path, int(monitor.server.port))  # type: ignore[union-attr]
    found: list[dict[str, Any]] = []
    step = 0
    try:
        deadline = time.monotonic() + 60
        next_query = 0.0
        while time.monotonic() < deadline and not found:
            x, y = next(batches)
            monitor.record(step, train_step(model, optimizer, x, y))
            step += 1
            time.sleep(0.005)  # a job with some host work between steps
            if time.monotonic() >= next_query:
                next_query = time.monotonic() + 0.5
                assert prometheus.proc.poll() is None, (tmp_path / "prometheus.log").read_text()
                found = _query(prometheus.url, "scirs2_loss")
        assert found, "Prometheus returned no scirs2_loss within 60 s"
        # Keep training for two more scrapes, so counters have moved between samples.
        until = time.monotonic() + 2.5
        while time.monotonic() < until:
            x, y = next(batches)
            monitor.record(step, train_step(model, optimizer, x, y))
            step += 1
        monitor.flush()
        time.sleep(1.5)
        [loss] = _query(prometheus.url, 'scirs2_loss{job="scirs2-training"}')
        assert 0.0 < float(loss["value"][1]) < 3.0
        [up] = _query(prometheus.url, 'up{job="scirs2-training"}')
        assert up["value"][1] == "1"  # the scrape authenticated with the token file
        [steps] = _query(prometheus.url, "scirs2_steps_total")
        assert 0 < float(steps["value"][1]) <= step
        [rate] = _query(prometheus.url, "rate(scirs2_steps_total[5s])")
        assert float(rate["value"][1]) > 0
        [latency] = _query(prometheus.url, "scirs2_step_latency_seconds_count")
        assert float(latency["value"][1]) > 0
        [health] = _query(prometheus.url, "scirs2_health_status")
        assert health["value"][1] in {"0", "1", "2"}
        status, _, body = _get(prometheus.url + "/api/v1/rules")
        groups = json.loads(body)["data"]["groups"]
        assert status == 200 and groups[0]["name"] == "scirs2-training"
    finally:
        prometheus.stop()
        monitor.close()
    assert monitor.server is None
