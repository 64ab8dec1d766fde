"""Monitoring settings: the metrics endpoint, its token, logs, TensorBoard, OpenTelemetry.

:class:`MonitorConfig` is validated when it is made. :meth:`MonitorConfig.from_env` reads
the ``SCIRS2_*`` variables (and OpenTelemetry's own ``OTEL_*`` ones) so that a job can be
configured without code. The bearer token is a :class:`Secret`, whose ``repr`` never shows
the value, so it does not leak into logs or tracebacks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from scirs2_optim_jax.monitor.health import HealthRules
from scirs2_optim_jax.validation import check_int

__all__ = ["ENV_VARS", "MonitorConfig", "Secret", "parse_log_level"]

ENV_VARS = {
    "host": "SCIRS2_METRICS_HOST",
    "port": "SCIRS2_METRICS_PORT",
    "token": "SCIRS2_METRICS_TOKEN",
    "log_level": "SCIRS2_LOG_LEVEL",
    "tensorboard_dir": "SCIRS2_TENSORBOARD_DIR",
    "otlp_endpoint": "OTEL_EXPORTER_OTLP_ENDPOINT",
    "service_name": "OTEL_SERVICE_NAME",
}


class Secret:
    """A string that is kept out of ``repr`` and ``str``; read it with :meth:`reveal`.

    Example:
        >>> token = Secret("s3cret")
        >>> token, str(token), token.reveal()
        (Secret('********'), '********', 's3cret')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Secret: value must be a str, got {type(value).__name__}")
        if not value or value.strip() != value:
            raise ValueError(
                "Secret: value must be a non-empty string without surrounding whitespace"
            )
        self._value = value

    def reveal(self) -> str:
        """The secret value itself."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    def __str__(self) -> str:
        return "********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_log_level(value: str | int) -> int:
    """A logging level from a name (any case) or a number.

    Example:
        >>> parse_log_level("debug") == logging.DEBUG
        True
        >>> parse_log_level("loud")
        Traceback (most recent call last):
        ...
        ValueError: log_level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'loud'
    """
    if isinstance(value, bool):
        raise TypeError(f"log_level must be a level name or number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().upper() in _LEVELS:
        return logging.getLevelNamesMapping()[value.strip().upper()]
    raise ValueError(f"log_level must be one of {', '.join(_LEVELS)}, got {value!r}")


def _check_optional_str(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError(f"MonitorConfig: {name} must be a non-empty string or None, got {value!r}")


@dataclass(frozen=True)
class MonitorConfig:
    """Where and how a run reports its health.

    Attributes:
        host: interface the ``/metrics`` and ``/health`` server listens on (loopback by
            default; set ``0.0.0.0`` deliberately to expose it).
        port: its port; 0 picks a free one; None runs no server.
        token: when set, both endpoints require ``Authorization: Bearer <token>``. A plain
            string is wrapped in a :class:`Secret`.
        log_level: level of the package's JSON logs (name or number).
        log_every: log one record every this many steps (0: never).
        health_every: sample resources and evaluate health every this many steps.
        tensorboard_dir: write TensorBoard event files here (needs ``tensorboardX``).
        otlp_endpoint: export OpenTelemetry spans over OTLP/HTTP to this base URL (needs the
            ``otel`` extra).
        service_name: the ``service.name`` of the spans.
        health_rules: thresholds for the health evaluation.

    Example:
        >>> config = MonitorConfig(port=0, token="abc")
        >>> config.token
        Secret('********')
        >>> MonitorConfig(port=70000)
        Traceback (most recent call last):
        ...
        ValueError: MonitorConfig: port must be an integer in [0, 65535], got 70000
    """

    host: str = "127.0.0.1"
    port: int | None = None
    token: Secret | None = None
    log_level: str | int = "INFO"
    log_every: int = 100
    health_every: int = 10
    tensorboard_dir: str | None = None
    otlp_endpoint: str | None = None
    service_name: str = "scirs2-optim"
    health_rules: HealthRules = field(default_factory=HealthRules)

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise TypeError(f"MonitorConfig: host must be a non-empty string, got {self.host!r}")
        if self.port is not None:
            check_int("MonitorConfig", "port", self.port, 0, 65535)
        if isinstance(self.token, str):
            object.__setattr__(self, "token", Secret(self.token))
        elif self.token is not None and not isinstance(self.token, Secret):
            raise TypeError(
                "MonitorConfig: token must be a str, a Secret or None, "
                f"got {type(self.token).__name__}"
            )
        try:
            parse_log_level(self.log_level)
        except (TypeError, ValueError) as err:
            raise type(err)(f"MonitorConfig: {err}") from None
        check_int("MonitorConfig", "log_every", self.log_every, 0)
        check_int("MonitorConfig", "health_every", self.health_every, 1)
        _check_optional_str("tensorboard_dir", self.tensorboard_dir)
        _check_optional_str("otlp_endpoint", self.otlp_endpoint)
        if self.otlp_endpoint is not None and not self.otlp_endpoint.startswith(
            ("http://", "https://")
        ):
            raise ValueError(
                "MonitorConfig: otlp_endpoint must be an http:// or https:// URL, "
                f"got {self.otlp_endpoint!r}"
            )
        _check_optional_str("service_name", self.service_name)
        if not isinstance(self.health_rules, HealthRules):
            raise TypeError(
                "MonitorConfig: health_rules must be a HealthRules, "
                f"got {type(self.health_rules).__name__}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> MonitorConfig:
        """Builds a config from environment variables, then applies ``overrides``.

        Reads ``SCIRS2_METRICS_HOST``, ``SCIRS2_METRICS_PORT``, ``SCIRS2_METRICS_TOKEN``,
        ``SCIRS2_LOG_LEVEL``, ``SCIRS2_TENSORBOARD_DIR``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` and
        ``OTEL_SERVICE_NAME``; unset or empty variables keep the defaults.

        Args:
            environ: the variables; None reads ``os.environ``.
            **overrides: fields that take precedence over the environment.

        Returns:
            A validated :class:`MonitorConfig`.

        Example:
            >>> env = {"SCIRS2_METRICS_PORT": "9100", "SCIRS2_LOG_LEVEL": "debug"}
            >>> config = MonitorConfig.from_env(env)
            >>> config.port, config.log_level
            (9100, 'debug')
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, variable in ENV_VARS.items():
            text = environ.get(variable, "").strip()
            if not text:
                continue
            if name == "port":
                try:
                    values[name] = int(text)
                except ValueError:
                    raise ValueError(
                        f"MonitorConfig: {variable} must be an integer port, got {text!r}"
                    ) from None
            else:
                values[name] = text
        values.update(overrides)
        return cls(**values)

    def with_changes(self, **changes: Any) -> MonitorConfig:
        """A copy with ``changes`` applied (and validated).

        Example:
            >>> MonitorConfig().with_changes(port=0).port
            0
        """
        return replace(self, **changes)
