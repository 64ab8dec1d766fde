"""The run's HTTP endpoint: ``/metrics`` for Prometheus and ``/health`` as JSON.

A small WSGI app in front of prometheus_client's own ``make_wsgi_app``, served by the stdlib
``wsgiref`` server (one thread per request) in a daemon thread. It listens on 127.0.0.1
unless told otherwise. With a token configured, every request must carry
``Authorization: Bearer <token>`` (compared in constant time) or is answered 401.

``/health`` answers 200 while the run is Healthy or Warning and 503 when it is Critical, so a
plain HTTP probe (Kubernetes, a load balancer) can act on it; the body is the report as JSON.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from scirs2_optim_jax.monitor.config import Secret
from scirs2_optim_jax.monitor.health import HealthReport, HealthStatus

__all__ = ["MetricsServer"]

_log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]


class _Handler(WSGIRequestHandler):
    """Sends the access log to the package's logger at DEBUG instead of stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("metrics server: " + format, *args)


class _Server(ThreadingWSGIServer):
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def _json(
    start_response: StartResponse,
    status: str,
    body: Any,
    headers: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
            *headers,
        ],
    )
    return [data]


class MetricsServer:
    """Serves ``/metrics`` and ``/health`` over HTTP from a daemon thread.

    Args:
        registry: the Prometheus registry to expose (a
            :class:`~scirs2_optim_jax.monitor.prometheus.PrometheusExporter`'s).
        health: returns the latest :class:`HealthReport` (e.g. ``HealthMonitor.latest``'s
            getter); None always reports Healthy.
        host: interface to listen on; loopback by default.
        port: port to listen on; 0 picks a free one (see :attr:`port`).
        token: when set, both endpoints require it as a bearer token.

    Example:
        >>> import urllib.request
        >>> from prometheus_client import CollectorRegistry
        >>> with MetricsServer(CollectorRegistry(), port=0) as server:
        ...     with urllib.request.urlopen(server.url + "/health") as response:
        ...         response.status, response.read()
        (200, b'{"status": "healthy", "step": null, "findings": []}')
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        health: Callable[[], HealthReport] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: Secret | str | None = None,
    ) -> None:
        fn = "MetricsServer"
        if not isinstance(registry, CollectorRegistry):
            raise TypeError(
                f"{fn}: registry must be a CollectorRegistry, got {type(registry).__name__}"
            )
        if health is not None and not callable(health):
            raise TypeError(f"{fn}: health must be a callable or None, got {health!r}")
        if not isinstance(host, str) or not host:
            raise TypeError(f"{fn}: host must be a non-empty string, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"{fn}: port must be an integer in [0, 65535], got {port!r}")
        if isinstance(token, str):
            token = Secret(token)
        if token is not None and not isinstance(token, Secret):
            raise TypeError(
                f"{fn}: token must be a str, a Secret or None, got {type(token).__name__}"
            )
        self._metrics_app = make_wsgi_app(registry)
        self._health = health if health is not None else lambda: HealthReport(HealthStatus.HEALTHY)
        self._host = host
        self._requested_port = port
        self._expected = None if token is None else f"Bearer {token.reveal()}".encode()
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def _authorized(self, environ: dict[str, Any]) -> bool:
        if self._expected is None:
            return True
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        return hmac.compare_digest(given, self._expected)

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if not self._authorized(environ):
            return _json(
                start_response,
                "401 Unauthorized",
                {"error": "unauthorized: send Authorization: Bearer <token>"},
                [("WWW-Authenticate", 'Bearer realm="scirs2"')],
            )
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/health":
            report = self._health()
            status = (
                "503 Service Unavailable" if report.status is HealthStatus.CRITICAL else "200 OK"
            )
            return _json(start_response, status, report.to_dict())
        return _json(start_response, "404 Not Found", {"error": f"no such path: {path}"})

    def start(self) -> MetricsServer:
        """Binds the socket and starts serving; returns ``self``."""
        if self._server is not None:
            raise RuntimeError("MetricsServer.start: the server is already running")
        server_class = _Server6 if ":" in self._host else _Server
        self._server = make_server(
            self._host,
            self._requested_port,
            self._app,
            server_class=server_class,
            handler_class=_Handler,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"scirs2-metrics-{self.port}",
            daemon=True,
        )
        self._thread.start()
        _log.info("metrics server listening", extra={"url": self.url})
        return self

    def stop(self) -> None:
        """Stops serving and closes the socket (does nothing when not running)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The bound port (the one the system picked when asked for 0)."""
        if self._server is None:
            raise RuntimeError("MetricsServer.port: the server is not running; call start()")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
