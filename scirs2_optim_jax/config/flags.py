"""Feature flags: choosing an optimizer variant at run start, and recording the choice.

``[features]`` (or ``SCIRS2_OPTIM_FEATURES__*``) switches a run to another optimizer
(``optimizer_variant``) or to bfloat16 first moments (``bf16_momentum``) without editing
``[optimizer]``. :func:`resolve_optimizer` applies them once, at run start; the run is then
built from the result, and :func:`checkpoint_record` stores the config (flags included) with
the resolved optimizer, so a restored run rebuilds the same variant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from scirs2_optim_jax.config.schema import OptimizerConfig, RunConfig

__all__ = ["RECORD_VERSION", "checkpoint_record", "config_from_record", "resolve_optimizer"]

RECORD_VERSION = 1


def resolve_optimizer(config: RunConfig) -> OptimizerConfig:
    """The optimizer section with the feature flags applied.

    ``features.optimizer_variant`` replaces ``optimizer.name``; ``features.bf16_momentum``
    sets ``optimizer.mu_dtype`` to ``"bfloat16"``.

    Args:
        config: the run config.

    Returns:
        The effective :class:`OptimizerConfig`.

    Example:
        >>> from scirs2_optim_jax.config.schema import FeatureFlags
        >>> config = RunConfig(features=FeatureFlags(optimizer_variant="lion"))
        >>> resolve_optimizer(config).name
        'lion'
    """
    if not isinstance(config, RunConfig):
        raise TypeError(f"resolve_optimizer: config must be a RunConfig, got {config!r}")
    flags = config.features
    changes: dict[str, Any] = {}
    if flags.optimizer_variant is not None:
        changes["name"] = flags.optimizer_variant
    if flags.bf16_momentum:
        changes["mu_dtype"] = "bfloat16"
    return dataclasses.replace(config.optimizer, **changes)


def checkpoint_record(config: RunConfig) -> dict[str, Any]:
    """What to store with a checkpoint: the config and the optimizer the flags resolved to.

    Secrets are not stored: they are set to None and listed under ``"secrets_omitted"``
    (a restored run reads them from its environment again).

    Args:
        config: the run config.

    Returns:
        A JSON-ready dict: ``{"version", "config", "resolved_optimizer",
        "secrets_omitted"}``.

    Example:
        >>> from scirs2_optim_jax.config.schema import FeatureFlags
        >>> record = checkpoint_record(RunConfig(features=FeatureFlags(bf16_momentum=True)))
        >>> record["config"]["features"]["bf16_momentum"], record["resolved_optimizer"]["mu_dtype"]
        (True, 'bfloat16')
    """
    data = config.to_dict(redact=False)
    omitted = config.secret_paths()
    for path in omitted:
        section, _, name = path.rpartition(".")
        target = data[section] if section else data
        target[name] = None
    return {
        "version": RECORD_VERSION,
        "config": data,
        "resolved_optimizer": resolve_optimizer(config).to_dict(),
        "secrets_omitted": omitted,
    }


def config_from_record(record: Mapping[str, Any]) -> RunConfig:
    """Rebuilds the :class:`RunConfig` stored by :func:`checkpoint_record`.

    Raises:
        ValueError: if the record is not one, or its resolved optimizer no longer matches
            what its flags resolve to (a record edited by hand).

    Example:
        >>> config = RunConfig(seed=3)
        >>> config_from_record(checkpoint_record(config)) == config
        True
    """
    if not isinstance(record, Mapping) or record.get("version") != RECORD_VERSION:
        raise ValueError(
            f"config_from_record: record must be a checkpoint_record of version "
            f"{RECORD_VERSION}, got {type(record).__name__} with version "
            f"{record.get('version') if isinstance(record, Mapping) else None!r}"
        )
    config = RunConfig.from_mapping(record["config"])
    resolved = resolve_optimizer(config).to_dict()  # type: ignore[arg-type]
    if resolved != record["resolved_optimizer"]:
        raise ValueError(
            "config_from_record: the record's resolved_optimizer "
            f"{record['resolved_optimizer']!r} differs from what its config resolves to "
            f"{resolved!r}"
        )
    return config  # type: ignore[return-value]
