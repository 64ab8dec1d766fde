"""Logs and traces: JSON log lines at the configured level, TensorBoard events for the same
metrics, and OpenTelemetry spans (SDK in-memory exporter, and OTLP/HTTP to a local
collector) for steps, checkpoint saves and restores, and evaluations."""

from __future__ import annotations

import gzip
import http.server
import io
import json
import logging
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import jax.numpy as jnp
import pytest

from scirs2_optim_jax.monitor import (
    JsonFormatter,
    MonitorConfig,
    RunMonitor,
    TensorBoardWriter,
    Tracing,
    configure_logging,
)


def _memory_exporter() -> Any:
    """The SDK's in-memory span exporter (the otel extra is part of the dev extra)."""
    module = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    return module.InMemorySpanExporter()


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    yield stream
    configure_logging("WARNING", stream=sys.stderr)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_standard_and_extra_fields(log_stream: io.StringIO) -> None:
    log = logging.getLogger("scirs2_optim_jax.test")
    log.info("step %d done", 7, extra={"metrics": {"loss": jnp.float32(0.5), "bad": jnp.nan}})
    log.debug("hidden at INFO")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    first, second = _lines(log_stream)
    assert first["message"] == "step 7 done" and first["level"] == "INFO"
    assert first["logger"] == "scirs2_optim_jax.test"
    assert first["time"].endswith("+00:00")
    assert first["metrics"] == {"loss": 0.5, "bad": "nan"}
    assert second["level"] == "ERROR" and "RuntimeError: boom" in second["exception"]


def test_level_comes_from_the_argument_or_the_environment() -> None:
    stream = io.StringIO()
    log = configure_logging(None, stream=stream, environ={"SCIRS2_LOG_LEVEL": "error"})
    assert log.level == logging.ERROR
    log.warning("dropped")
    log.error("kept")
    assert [line["message"] for line in _lines(stream)] == ["kept"]
    assert configure_logging(None, stream=stream, environ={}).level == logging.INFO
    # Reconfiguring replaces the handler: one line per record, not two.
    log = configure_logging("DEBUG", stream=stream)
    log.debug("once")
    assert [line["message"] for line in _lines(stream)].count("once") == 1
    with pytest.raises(ValueError, match="configure_logging: log_level must be one of"):
        configure_logging("chatty")
    configure_logging("WARNING", stream=sys.stderr)


def test_run_monitor_logs_steps_skips_and_health_changes(log_stream: io.StringIO) -> None:
    config = MonitorConfig(log_every=2, health_every=1)
    with RunMonitor(config, configure_logs=False) as monitor:
        monitor.record(0, {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(1.0)})
        monitor.record(1, {"loss": jnp.float32(0.9), "grad_norm": jnp.float32(1.0)})
        bad = {"loss": jnp.float32(jnp.nan), "grad_norm": jnp.float32(50.0), "skipped_steps": 1}
        monitor.record(2, bad)
    lines = _lines(log_stream)
    steps = [line for line in lines if line["message"] == "step"]
    assert [line["step"] for line in steps] == [1]
    assert steps[0]["metrics"]["loss"] == pytest.approx(0.9)
    [skipped] = [line for line in lines if line["message"] == "step skipped by the guard"]
    assert skipped["level"] == "WARNING" and skipped["metrics"]["loss"] == "nan"
    changes = [line for line in lines if line["message"].startswith("health ")]
    assert changes and changes[-1]["message"] in {"health warning", "health critical"}
    names = {f["name"] for f in changes[-1]["health"]["findings"]}
    assert {"gradient_explosion", "nonfinite_values"} <= names


def test_json_formatter_output_is_strict_json() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.value = float("inf")
    record.items = (1, 2.5, jnp.array([1.0, 2.0]))
    fields = json.loads(JsonFormatter().format(record))
    assert fields["value"] == "inf" and fields["items"] == [1, 2.5, [1.0, 2.0]]


# --- TensorBoard --------------------------------------------------------------------------


def _tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Reads every scalar from the TFRecord event files in ``logdir``."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            payload = data[offset + 12 : offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_receives_the_same_metrics(tmp_path: Path) -> None:
    config = MonitorConfig(tensorboard_dir=str(tmp_path), log_every=0, health_every=2)
    with RunMonitor(config, configure_logs=False) as monitor:
        for step in range(4):
            monitor.record(
                step,
                {
                    "loss": jnp.float32(1.0 / (step + 1)),
                    "grad_norm": jnp.float32(2.0),
                    "layer_grad_norm": {"dense": jnp.float32(step)},
                },
            )
    scalars = _tensorboard_scalars(tmp_path)
    assert [step for step, _ in scalars["train/loss"]] == [0, 1, 2, 3]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([1.0, 0.5, 1 / 3, 0.25])
    assert [v for _, v in scalars["layer_grad_norm/dense"]] == [0.0, 1.0, 2.0, 3.0]
    assert [step for step, _ in scalars["health/status"]] == [1, 3]


def test_tensorboard_writer_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TensorBoardWriter: flush_secs must be an integer"):
        TensorBoardWriter(tmp_path, flush_secs=0)
    with pytest.raises(TypeError, match="TensorBoardWriter: logdir must be a path"):
        TensorBoardWriter(3)  # type: ignore[arg-type]


# --- OpenTelemetry ------------------------------------------------------------------------


def test_spans_for_steps_checkpoints_and_evaluations() -> None:
    from opentelemetry.trace import StatusCode

    memory = _memory_exporter()
    tracing = Tracing("unit-test", exporter=memory)
    assert tracing.enabled
    with tracing.step(1):
        pass
    with tracing.checkpoint_save(1, path="/ckpt/1"):
        pass
    with tracing.checkpoint_restore(path="/ckpt/1"):
        pass
    with tracing.evaluation(1, split="test"), tracing.span("inner"):
        pass
    with pytest.raises(ValueError, match="bad batch"), tracing.step(2):
        raise ValueError("bad batch")
    tracing.shutdown()

    spans = memory.get_finished_spans()
    names = [span.name for span in spans]
    assert names == [
        "scirs2.train_step",
        "scirs2.checkpoint.save",
        "scirs2.checkpoint.restore",
        "inner",
        "scirs2.evaluation",
        "scirs2.train_step",
    ]
    by_name = {span.name: span for span in spans}
    assert by_name["scirs2.checkpoint.save"].attributes == {
        "scirs2.step": 1,
        "scirs2.path": "/ckpt/1",
    }
    assert dict(by_name["scirs2.checkpoint.restore"].attributes) == {"scirs2.path": "/ckpt/1"}
    assert by_name["scirs2.evaluation"].attributes["scirs2.split"] == "test"
    assert by_name["inner"].parent.span_id == by_name["scirs2.evaluation"].context.span_id
    assert spans[-1].status.status_code is StatusCode.ERROR
    assert spans[-1].events[0].name == "exception"
    assert spans[0].resource.attributes["service.name"] == "unit-test"


def test_tracing_is_a_no_op_when_not_configured_or_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = _memory_exporter()
    off = Tracing()
    assert not off.enabled
    with off.step(1) as span:
        assert span is None
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    assert not Tracing().enabled
    with pytest.raises(ImportError, match=r"scirs2-optim-jax\[otel\]"):
        Tracing(exporter=exporter)


class _Collector(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        type(self).received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        del format, args


def test_spans_are_exported_over_otlp_http_to_the_configured_endpoint() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    _Collector.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        config = MonitorConfig(otlp_endpoint=endpoint, service_name="otlp-test", log_every=0)
        with RunMonitor(config, configure_logs=False) as monitor:
            with monitor.tracing.step(5):
                monitor.record(5, {"loss": jnp.float32(0.1)})
            with monitor.tracing.checkpoint_save(5):
                pass
        # Closing the monitor shut its tracer down, which flushed the batch.
    finally:
        server.shutdown()
        server.server_close()
    assert _Collector.received, "no OTLP request reached the collector"
    names, services = [], set()
    for path, body in _Collector.received:
        assert path == "/v1/traces"
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
            for scope in resource_spans.scope_spans:
                names += [span.name for span in scope.spans]
    assert names == ["scirs2.train_step", "scirs2.checkpoint.save"]
    assert services == {"otlp-test"}


def test_tracing_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="Tracing: otlp_endpoint must be an http"):
        Tracing(otlp_endpoint="localhost:4318")
    with pytest.raises(TypeError, match="Tracing: exporter must be an OpenTelemetry"):
        Tracing(exporter=object())
