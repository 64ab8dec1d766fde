"""Structured logs: one JSON object per line, through the standard ``logging`` module.

:class:`JsonFormatter` writes ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``,
then every field passed with ``extra={...}`` (numbers from numpy or JAX become plain
numbers; NaN and infinities become the strings ``"nan"``, ``"inf"``, ``"-inf"`` so that
every line is valid JSON), and ``exception`` with the traceback when there is one.
:func:`configure_logging` installs it on the package's logger at the level given, or the one
in ``SCIRS2_LOG_LEVEL``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

import numpy as np

from scirs2_optim_jax.monitor.config import ENV_VARS, parse_log_level

__all__ = ["LOGGER_NAME", "JsonFormatter", "configure_logging"]

LOGGER_NAME = "scirs2_optim_jax"

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}


def _plain(value: Any) -> Any:
    """``value`` made JSON-serialisable: containers recursively, numbers as Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) or (hasattr(value, "shape") and np.ndim(value) == 0):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return str(value)
        if math.isfinite(number):
            return number
        return "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")
    if hasattr(value, "tolist"):
        return _plain(np.asarray(value).tolist())
    return str(value)


class JsonFormatter(logging.Formatter):
    """Formats a log record as one line of JSON.

    Example:
        >>> import logging
        >>> record = logging.LogRecord("job", logging.INFO, __file__, 1, "step %d", (5,), None)
        >>> record.loss = float("nan")
        >>> line = JsonFormatter().format(record)
        >>> import json; fields = json.loads(line)
        >>> fields["message"], fields["level"], fields["loss"]
        ('step 5', 'INFO', 'nan')
    """

    def format(self, record: logging.LogRecord) -> str:
        """Returns the record as a JSON object on one line."""
        fields: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                fields[key] = _plain(value)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        return json.dumps(fields, allow_nan=False)


_HANDLER_MARK = "_scirs2_json_handler"


def configure_logging(
    level: str | int | None = None,
    *,
    stream: IO[str] | None = None,
    logger: str = LOGGER_NAME,
    environ: Mapping[str, str] | None = None,
) -> logging.Logger:
    """Sends ``logger``'s records to ``stream`` as JSON lines, at the given level.

    Calling it again replaces the handler it installed before (no duplicate lines). The
    logger stops propagating to the root logger, so records are written once.

    Args:
        level: a level name or number; None reads ``SCIRS2_LOG_LEVEL`` (default INFO).
        stream: where to write; standard error when None.
        logger: the logger to configure (the package's by default).
        environ: the variables to read the level from; None reads ``os.environ``.

    Returns:
        The configured logger.

    Example:
        >>> import io, json
        >>> out = io.StringIO()
        >>> log = configure_logging("INFO", stream=out, logger="example")
        >>> log.info("evaluated", extra={"accuracy": 0.97})
        >>> json.loads(out.getvalue())["accuracy"]
        0.97
    """
    if level is None:
        environ = os.environ if environ is None else environ
        level = environ.get(ENV_VARS["log_level"], "").strip() or "INFO"
    try:
        numeric = parse_log_level(level)
    except (TypeError, ValueError) as err:
        raise type(err)(f"configure_logging: {err}") from None
    if not isinstance(logger, str):
        raise TypeError(f"configure_logging: logger must be a str, got {logger!r}")
    target = logging.getLogger(logger)
    for handler in list(target.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            target.removeHandler(handler)
            handler.close()
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter())
    setattr(handler, _HANDLER_MARK, True)
    target.addHandler(handler)
    target.setLevel(numeric)
    target.propagate = False
    return target
