"""The settings of ``scirs2-optim train``: defaults, then the config, then the options.

:func:`train_settings` merges the command's defaults (:func:`base_config`), the config file
and ``SCIRS2_OPTIM_*`` variables (:func:`~scirs2_optim_jax.config.load_config`) and the
options given, into the arguments of :func:`~scirs2_optim_jax.training.train_digits`.
The config is imported when a command runs, not with this module.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from scirs2_optim_jax.cli.train_options import NUM_PROCESSES_VAR, TRAIN_DEFAULTS

__all__ = ["base_config", "train_settings"]


def base_config(processes: int = 1) -> Any:
    """The train command's defaults as a RunConfig: what a config file overrides.

    A multi-process run uses every device of every process unless told otherwise.

    Example:
        >>> config = base_config()
        >>> config.optimizer.learning_rate, config.schedule.total_steps
        (0.003, 800)
    """
    from scirs2_optim_jax import config as c

    d = TRAIN_DEFAULTS
    return c.RunConfig(
        name="digits",
        seed=d["seed"],
        batch_size=d["batch_size"],
        optimizer=c.OptimizerConfig(name=d["optimizer"], learning_rate=3e-3),
        schedule=c.ScheduleConfig(name=d["schedule"], total_steps=d["steps"]),
        clipping=c.ClippingConfig(max_global_norm=None),
        parallel=c.ParallelConfig(
            num_devices=d["devices"] if processes == 1 else None, zero_stage=d["zero_stage"]
        ),
        checkpoint=c.CheckpointConfig(directory=None, every_steps=d["save_every"]),
        monitoring=c.MonitoringConfig(metrics_port=None),
    )


def _learning_rate_given(path: str | None, environ: Mapping[str, str]) -> bool:
    """Whether the config file or the environment sets optimizer.learning_rate."""
    from scirs2_optim_jax.config import ENV_PREFIX, read_config_file

    if environ.get(f"{ENV_PREFIX}OPTIMIZER__LEARNING_RATE", "").strip():
        return True
    if path is None:
        return False
    section = read_config_file(path).get("optimizer")
    return isinstance(section, Mapping) and "learning_rate" in section


def _option_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, as a nested config mapping."""
    options = {
        ("optimizer", "name"): args.optimizer,
        ("optimizer", "learning_rate"): args.learning_rate,
        ("schedule", "name"): args.schedule,
        ("schedule", "total_steps"): args.steps,
        ("batch_size",): args.batch_size,
        ("seed",): args.seed,
        ("parallel", "num_devices"): args.devices,
        ("parallel", "zero_stage"): args.zero_stage,
        ("parallel", "offload_optimizer"): args.offload_optimizer,
        ("checkpoint", "directory"): args.checkpoint_dir,
        ("checkpoint", "every_steps"): args.save_every,
    }
    overrides: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if len(key) == 1:
            overrides[key[0]] = value
        else:
            overrides.setdefault(key[0], {})[key[1]] = value
    if args.optimizer is not None:
        # The option names the optimizer to run; a variant flag in the config must not win.
        overrides.setdefault("features", {})["optimizer_variant"] = None
    return overrides


def _refuse_unsupported(config: Any) -> None:
    """Refuses what the train command cannot run, naming the setting."""
    if config.precision.mode != "fp32":
        raise ValueError(
            f"config: precision.mode = {config.precision.mode!r} is not supported by "
            "scirs2-optim train, which trains in fp32; set it to 'fp32'"
        )
    if config.parallel.gradient_checkpointing:
        raise ValueError(
            "config: parallel.gradient_checkpointing = true is not supported by "
            "scirs2-optim train (the demo MLP needs no rematerialisation); set it to false"
        )


def _refuse_bad_layout(config: Any, processes: int, resume: bool) -> None:
    """Refuses a device count the processes cannot share, a host update in several
    processes, and a resume with nothing to read."""
    devices = config.parallel.num_devices
    if processes > 1 and devices is not None and devices % processes:
        raise ValueError(
            f"--devices (or parallel.num_devices) must be a multiple of the {processes} "
            f"processes (${NUM_PROCESSES_VAR}), got {devices}"
        )
    if processes > 1 and config.parallel.offload_optimizer == "host":
        raise ValueError(
            f"--offload-optimizer host (or parallel.offload_optimizer) runs in one process; "
            f"this run has {processes} (${NUM_PROCESSES_VAR}): use --offload-optimizer device"
        )
    if resume and config.checkpoint.directory is None:
        raise ValueError("--resume needs --checkpoint-dir (or checkpoint.directory in --config)")


def train_settings(
    args: argparse.Namespace, environ: Mapping[str, str], processes: int = 1
) -> dict[str, Any]:
    """Merges defaults, config file, environment and options into train_digits arguments.

    Args:
        args: the parsed options.
        environ: the environment (config variables, config file path).
        processes: the number of processes of the run (``SCIRS2_NUM_PROCESSES``).

    Returns:
        ``{"config", "metrics_port", "train" (train_digits keywords), "checkpoint_dir",
        "async_save"}``.

    Raises:
        ValueError, TypeError, FileNotFoundError: naming the invalid option or config field.
    """
    from scirs2_optim_jax import config as c
    from scirs2_optim_jax.config.registry import command_line_schedule

    path = args.config or environ.get(c.CONFIG_FILE_VAR) or None
    config = c.load_config(path, environ=environ, base=base_config(processes))
    try:
        config = c.RunConfig.from_mapping(_option_overrides(args), base=config)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{err} (from the command line)") from None
    _refuse_unsupported(config)
    optimizer = c.resolve_optimizer(config)
    hyperparameters = c.optimizer_arguments(optimizer)
    lr_given = args.learning_rate is not None or _learning_rate_given(path, environ)
    port = args.metrics_port
    if port is None and config.monitoring.enabled:
        port = config.monitoring.metrics_port
    _refuse_bad_layout(config, processes, args.resume)
    schedule, checkpoint = config.schedule, config.checkpoint
    train = {
        "optimizer": optimizer.name,
        "learning_rate": optimizer.learning_rate if lr_given else None,
        "steps": schedule.total_steps,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "schedule": command_line_schedule(schedule.name),
        "warmup_ratio": schedule.warmup_ratio,
        "min_lr_ratio": schedule.min_lr_ratio,
        "hyperparameters": hyperparameters,
        "max_global_norm": config.clipping.max_global_norm,
        "devices": config.parallel.num_devices,
        "zero_stage": config.parallel.zero_stage,
        "offload_optimizer": config.parallel.offload_optimizer,
        "save_every": checkpoint.every_steps,
        "keep_checkpoints": checkpoint.keep,
        "stop_at": args.stop_at,
    }
    return {
        "config": config,
        "metrics_port": port,
        "train": train,
        "checkpoint_dir": checkpoint.directory,
        "async_save": checkpoint.async_save,
    }
