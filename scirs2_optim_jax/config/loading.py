"""Loading a :class:`RunConfig`: production defaults, then a file, then the environment.

Precedence, lowest first: :func:`production_default` (or the ``base`` given), the file
(TOML, YAML or JSON by its suffix; ``SCIRS2_OPTIM_CONFIG`` names it when no path is given),
then environment variables ``SCIRS2_OPTIM_<SECTION>__<FIELD>`` (two underscores between
section and field; ``SCIRS2_OPTIM_<FIELD>`` for the top-level ``NAME``, ``SEED`` and
``BATCH_SIZE``). An error names the field, the value and where it came from::

    ValueError: config: optimizer.learning_rate must be a finite number > 0, got '-1'
    (from environment variable SCIRS2_OPTIM_OPTIMIZER__LEARNING_RATE)

Other ``SCIRS2_OPTIM_*`` variables without ``__`` are left alone (other components use
the prefix too); one with ``__`` that names no field is an error, so a typo cannot pass
unnoticed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scirs2_optim_jax.config.schema import (
    CheckpointConfig,
    ClippingConfig,
    MonitoringConfig,
    OptimizerConfig,
    ResourceConfig,
    RunConfig,
    ScheduleConfig,
)

__all__ = [
    "CONFIG_FILE_VAR",
    "ENV_PREFIX",
    "environment_overrides",
    "load_config",
    "production_default",
    "read_config_file",
]

ENV_PREFIX = "SCIRS2_OPTIM_"
CONFIG_FILE_VAR = "SCIRS2_OPTIM_CONFIG"
_SUFFIXES = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}


def production_default() -> RunConfig:
    """The documented production defaults (``docs/configuration.md``).

    AdamW at a peak learning rate of 3e-4 with weight decay 0.01, warmup (6%) + cosine
    decay to 1% over 100,000 steps, global-norm clipping at 1.0, float32, checkpoints every
    1,000 steps into ``checkpoints/`` (3 kept, written asynchronously), monitoring on
    (JSON logs every 100 steps, Prometheus on port 9100), and resource limits: plan for at
    most 90% of device memory and stop above 90% of host memory.

    Example:
        >>> config = production_default()
        >>> config.optimizer.name, config.optimizer.weight_decay, config.monitoring.enabled
        ('adamw', 0.01, True)
    """
    return RunConfig(
        name="run",
        optimizer=OptimizerConfig(name="adamw", learning_rate=3e-4, weight_decay=0.01),
        schedule=ScheduleConfig(
            name="warmup_cosine", total_steps=100_000, warmup_ratio=0.06, min_lr_ratio=0.01
        ),
        clipping=ClippingConfig(max_global_norm=1.0),
        checkpoint=CheckpointConfig(directory="checkpoints", every_steps=1000, keep=3),
        monitoring=MonitoringConfig(enabled=True, log_every_steps=100, metrics_port=9100),
        resources=ResourceConfig(max_device_memory_fraction=0.9, max_host_memory_fraction=0.9),
    )


def _parse_yaml(text: str) -> Any:
    # Imported here: PyYAML (extra [cli]) is needed only when a YAML file is read.
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(str(err)) from None


_PARSERS = {"toml": tomllib.loads, "yaml": _parse_yaml, "json": json.loads}


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a TOML, YAML or JSON config file (chosen by suffix) into a dict.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: for an unknown suffix, a syntax error, or a top level that is not a
            table/mapping; the message names the file.
    """
    file = Path(path)
    kind = _SUFFIXES.get(file.suffix.lower())
    if kind is None:
        raise ValueError(
            f"config: {file} must end in {', '.join(sorted(_SUFFIXES))}, got {file.suffix!r}"
        )
    if not file.is_file():
        raise FileNotFoundError(f"config: no such file: {file}")
    text = file.read_text(encoding="utf-8")
    try:
        data = _PARSERS[kind](text)
    except ValueError as err:
        raise ValueError(f"config: cannot parse {file} as {kind.upper()}: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(
            f"config: the top level of {file} must be a table/mapping, got {type(data).__name__}"
        )
    return dict(data)


def environment_overrides(environ: Mapping[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """The config overrides found in ``environ``, as ``(variable, nested mapping)`` pairs.

    Raises:
        ValueError: for a ``SCIRS2_OPTIM_<SECTION>__<FIELD>`` variable that names no field.

    Example:
        >>> environment_overrides({"SCIRS2_OPTIM_OPTIMIZER__NAME": "lion", "HOME": "/root"})
        [('SCIRS2_OPTIM_OPTIMIZER__NAME', {'optimizer': {'name': 'lion'}})]
    """
    sections = {f.name: f.type for f in dataclasses.fields(RunConfig) if f.name not in _TOP_LEVEL}
    found = []
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or var == CONFIG_FILE_VAR:
            continue
        rest = var[len(ENV_PREFIX) :]
        value = environ[var]
        if "__" not in rest:
            if rest.lower() in _TOP_LEVEL:
                found.append((var, {rest.lower(): value}))
            continue
        section, _, name = rest.partition("__")
        section, name = section.lower(), name.lower()
        if section not in sections:
            raise ValueError(
                f"config: environment variable {var} names no config section {section!r} "
                f"(known: {', '.join(sorted(sections))})"
            )
        found.append((var, {section: {name: value}}))
    return found


_TOP_LEVEL = ("name", "seed", "batch_size")


def _merge(config: RunConfig, data: Mapping[str, Any], source: str) -> RunConfig:
    try:
        return RunConfig.from_mapping(data, base=config)  # type: ignore[return-value]
    except (ValueError, TypeError) as err:
        raise type(err)(f"{err} ({source})") from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    base: RunConfig | None = None,
) -> RunConfig:
    """Loads the run config: ``base``, then the file, then the environment.

    Args:
        path: a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file; None reads the file named
            by ``SCIRS2_OPTIM_CONFIG``, or no file when that is unset.
        environ: the environment to read overrides from (default: ``os.environ``).
        base: the config the file and environment override (default:
            :func:`production_default`).

    Returns:
        The validated :class:`RunConfig`.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError, TypeError: naming the field, the value and its source.

    Example:
        >>> env = {"SCIRS2_OPTIM_OPTIMIZER__LEARNING_RATE": "1e-4", "SCIRS2_OPTIM_SEED": "7"}
        >>> config = load_config(environ=env)
        >>> config.optimizer.learning_rate, config.seed, config.optimizer.name
        (0.0001, 7, 'adamw')
    """
    env = os.environ if environ is None else environ
    config = production_default() if base is None else base
    if not isinstance(config, RunConfig):
        raise TypeError(f"load_config: base must be a RunConfig or None, got {config!r}")
    if path is None and env.get(CONFIG_FILE_VAR):
        path = env[CONFIG_FILE_VAR]
    if path is not None:
        config = _merge(config, read_config_file(path), f"in {path}")
    for var, data in environment_overrides(env):
        config = _merge(config, data, f"from environment variable {var}")
    return config
