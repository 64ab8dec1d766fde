"""OpenTelemetry spans for training steps, checkpoint saves and restores, and evaluations.

Optional: with ``opentelemetry-sdk`` installed (the ``otel`` extra), :class:`Tracing` makes
spans and hands them to an exporter: OTLP over HTTP when an endpoint is configured, or any
``SpanExporter`` given (the tests use the SDK's in-memory one). Without the SDK, or with
nothing to export to, every span is a no-op context manager, so the training loop carries the
same code either way. The tracer provider is private to the :class:`Tracing` object unless
``use_global=True`` asks for the application's global one.

Span names: ``scirs2.train_step``, ``scirs2.checkpoint.save``, ``scirs2.checkpoint.restore``,
``scirs2.evaluation``; attributes are prefixed ``scirs2.`` (``scirs2.step``, ...).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["Tracing", "otel_available"]

_INSTALL_HINT = "pip install 'scirs2-optim-jax[otel]'"


def otel_available() -> bool:
    """Whether ``opentelemetry-sdk`` can be imported.

    Example:
        >>> isinstance(otel_available(), bool)
        True
    """
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


def _traces_url(endpoint: str) -> str:
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


class Tracing:
    """Makes the run's spans, or does nothing when tracing is not set up.

    Args:
        service_name: the ``service.name`` resource attribute.
        otlp_endpoint: base URL of an OTLP/HTTP collector (``/v1/traces`` is appended), e.g.
            ``http://127.0.0.1:4318``; needs ``opentelemetry-exporter-otlp-proto-http``.
        exporter: an OpenTelemetry ``SpanExporter`` to send spans to (each span is exported
            as it ends).
        use_global: use the globally configured tracer provider instead of a private one.

    Example:
        >>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        ...     InMemorySpanExporter)
        >>> memory = InMemorySpanExporter()
        >>> tracing = Tracing(exporter=memory)
        >>> with tracing.step(3):
        ...     pass
        >>> [(s.name, s.attributes["scirs2.step"]) for s in memory.get_finished_spans()]
        [('scirs2.train_step', 3)]
        >>> tracing.shutdown()
    """

    def __init__(
        self,
        service_name: str = "scirs2-optim",
        *,
        otlp_endpoint: str | None = None,
        exporter: Any = None,
        use_global: bool = False,
    ) -> None:
        fn = "Tracing"
        if not isinstance(service_name, str) or not service_name:
            raise TypeError(f"{fn}: service_name must be a non-empty string, got {service_name!r}")
        if otlp_endpoint is not None and (
            not isinstance(otlp_endpoint, str)
            or not otlp_endpoint.startswith(("http://", "https://"))
        ):
            raise ValueError(
                f"{fn}: otlp_endpoint must be an http:// or https:// URL, got {otlp_endpoint!r}"
            )
        if not isinstance(use_global, bool):
            raise TypeError(f"{fn}: use_global must be a bool, got {use_global!r}")
        self._provider: Any = None
        self._tracer: Any = None
        if use_global:
            try:
                from opentelemetry import trace
            except ImportError as err:
                raise ImportError(f"{fn}: use_global needs OpenTelemetry: {_INSTALL_HINT}") from err
            self._tracer = trace.get_tracer("scirs2_optim_jax")
            return
        if otlp_endpoint is None and exporter is None:
            return
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        except ImportError as err:
            raise ImportError(f"{fn}: tracing needs opentelemetry-sdk: {_INSTALL_HINT}") from err
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        if exporter is not None:
            if not callable(getattr(exporter, "export", None)):
                raise TypeError(
                    f"{fn}: exporter must be an OpenTelemetry SpanExporter, "
                    f"got {type(exporter).__name__}"
                )
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        if otlp_endpoint is not None:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError as err:
                raise ImportError(
                    f"{fn}: otlp_endpoint needs opentelemetry-exporter-otlp-proto-http: "
                    f"{_INSTALL_HINT}"
                ) from err
            otlp = OTLPSpanExporter(endpoint=_traces_url(otlp_endpoint))
            provider.add_span_processor(BatchSpanProcessor(otlp))
        self._provider = provider
        self._tracer = provider.get_tracer("scirs2_optim_jax")

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded (False: every span is a no-op)."""
        return self._tracer is not None

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Any]:
        """A span named ``name`` around the block, with ``scirs2.``-prefixed attributes.

        Yields the OpenTelemetry span, or None when tracing is off. An exception raised in
        the block is recorded on the span and marks it as an error.
        """
        if self._tracer is None:
            yield None
            return
        attrs = {f"scirs2.{k}": v for k, v in attributes.items() if v is not None}
        with self._tracer.start_as_current_span(name, attributes=attrs) as span:
            yield span

    def step(self, step: int) -> contextlib.AbstractContextManager[Any]:
        """A ``scirs2.train_step`` span for one training step."""
        return self.span("scirs2.train_step", step=int(step))

    def checkpoint_save(
        self, step: int, path: str | None = None
    ) -> contextlib.AbstractContextManager[Any]:
        """A ``scirs2.checkpoint.save`` span around saving the checkpoint of ``step``."""
        return self.span("scirs2.checkpoint.save", step=int(step), path=path)

    def checkpoint_restore(
        self, step: int | None = None, path: str | None = None
    ) -> contextlib.AbstractContextManager[Any]:
        """A ``scirs2.checkpoint.restore`` span around restoring a checkpoint."""
        return self.span(
            "scirs2.checkpoint.restore", step=None if step is None else int(step), path=path
        )

    def evaluation(
        self, step: int, split: str | None = None
    ) -> contextlib.AbstractContextManager[Any]:
        """A ``scirs2.evaluation`` span around evaluating the model at ``step``."""
        return self.span("scirs2.evaluation", step=int(step), split=split)

    def shutdown(self) -> None:
        """Exports what is pending and stops the private provider (no-op otherwise)."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None
            self._tracer = None
