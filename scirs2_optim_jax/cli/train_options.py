"""The options of ``scirs2-optim train``, in argument groups (standard library only).

The names the options accept come from :mod:`scirs2_optim_jax.config.registry`; the defaults
are :func:`~scirs2_optim_jax.training.train_digits`'s own (``tests/training/test_training.py``
checks they agree, since importing the training job here would start JAX for ``--help``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from scirs2_optim_jax.cli.arguments import int_in_range, positive_float
from scirs2_optim_jax.config.registry import (
    COMMAND_LINE_SCHEDULES,
    OFFLOAD_COMPUTE,
    OPTIMIZERS,
    SCHEDULES,
    normalize_schedule,
)

__all__ = [
    "COORDINATOR_VAR",
    "METRICS_HOST",
    "METRICS_HOST_VAR",
    "METRICS_TOKEN_VAR",
    "NUM_PROCESSES_VAR",
    "PROCESS_ID_VAR",
    "TRAIN_DEFAULTS",
    "TRAIN_MAX_BATCH_SIZE",
    "TRAIN_OFFLOAD",
    "TRAIN_OPTIMIZERS",
    "TRAIN_SCHEDULES",
    "add_parser",
]

TRAIN_OPTIMIZERS: tuple[str, ...] = OPTIMIZERS
TRAIN_SCHEDULES: tuple[str, ...] = COMMAND_LINE_SCHEDULES
TRAIN_MAX_BATCH_SIZE = 1437  # the training-set size
TRAIN_DEFAULTS: dict[str, Any] = {
    "optimizer": "adamw",
    "learning_rate": None,
    "steps": 800,
    "batch_size": 128,
    "seed": 0,
    "log_every": 100,
    "schedule": "warmup-cosine",
    "devices": 1,
    "zero_stage": 0,
    "save_every": 100,
    "offload_optimizer": None,
}
# Where an offloaded optimizer updates its state.
TRAIN_OFFLOAD = OFFLOAD_COMPUTE
METRICS_HOST = "127.0.0.1"
# The monitor's own variable names (monitor.ENV_VARS; tests/project/test_deploy.py checks
# they agree).
METRICS_HOST_VAR = "SCIRS2_METRICS_HOST"
METRICS_TOKEN_VAR = "SCIRS2_METRICS_TOKEN"  # noqa: S105  a variable name, not a secret
# parallel.distributed's names, kept here so that --help needs no JAX import (tests agree).
COORDINATOR_VAR = "SCIRS2_COORDINATOR_ADDRESS"
NUM_PROCESSES_VAR = "SCIRS2_NUM_PROCESSES"
PROCESS_ID_VAR = "SCIRS2_PROCESS_ID"

_DESCRIPTION = (
    "Train a 64-128-128-10 Flax NNX MLP on scikit-learn's handwritten digits (no "
    "network needed), on 1 to N (fake CPU) devices with data parallelism and optional "
    "ZeRO, with checkpoints, resume and a Prometheus endpoint; then report the test "
    "accuracy and a sha256 of the final parameters (same seed, same hash). Settings "
    "come from the built-in defaults, then --config (and SCIRS2_OPTIM_* variables), "
    "then the options given here."
)
_EPILOG = (
    "From a config file the command reads seed, batch_size, [optimizer] (after "
    "[features]), [schedule], clipping.max_global_norm, parallel.num_devices, "
    "zero_stage and offload_optimizer, [checkpoint] and monitoring.enabled/metrics_port; "
    "it refuses "
    "precision.mode other than fp32 and parallel.gradient_checkpointing. "
    f"Multi-process: set {NUM_PROCESSES_VAR} (> 1), {COORDINATOR_VAR} "
    f"(host:port of process 0) and {PROCESS_ID_VAR} (0 .. N-1) and start the same "
    "command in every process: they join one data-parallel run over all their "
    "devices, with the same batches as one process with that many devices; "
    "--checkpoint-dir must then be storage all processes share. Environment: "
    f"{METRICS_HOST_VAR} (interface for --metrics-port, default {METRICS_HOST}; "
    f"0.0.0.0 to be scraped from other hosts), {METRICS_TOKEN_VAR} (bearer token for "
    "/metrics and /health). Exit codes: 0 success (also after SIGTERM with "
    "--checkpoint-dir: a final save, then exit; in a multi-process run a signal to "
    "any process stops all of them at the same step), 2 bad usage or config, 1 the "
    "run failed."
)


def add_parser(
    subparsers: argparse._SubParsersAction, handler: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    """Registers ``train`` with its options on ``subparsers``; ``handler`` runs it.

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser(prog="scirs2-optim")
        >>> _ = add_parser(parser.add_subparsers(dest="command"), handler=print)
        >>> args = parser.parse_args(["train", "--steps", "10", "--schedule", "one-cycle"])
        >>> args.steps, args.schedule, args.optimizer  # None: from --config or the default
        (10, 'one-cycle', None)
    """
    parser = subparsers.add_parser(
        "train",
        help="train the demo MLP on the handwritten digits",
        description=_DESCRIPTION,
        epilog=_EPILOG,
    )
    _add_optimizer_options(parser.add_argument_group("optimizer"))
    _add_run_options(parser.add_argument_group("run"))
    _add_device_options(parser.add_argument_group("devices"))
    _add_config_option(parser.add_argument_group("config"))
    _add_checkpoint_options(parser.add_argument_group("checkpoints"))
    _add_output_options(parser.add_argument_group("output"))
    parser.set_defaults(handler=handler)
    return parser


def _schedule_spelling(text: str) -> str:
    """A schedule name in either spelling (``warmup_cosine``, ``Warmup-Cosine``) as the
    hyphenated choice; anything else unchanged, for argparse to refuse with the choices."""
    key = normalize_schedule(text)
    return key.replace("_", "-") if key in SCHEDULES else text


def _add_optimizer_options(group: argparse._ArgumentGroup) -> None:
    """--optimizer, --learning-rate, --schedule."""
    d = TRAIN_DEFAULTS
    group.add_argument(
        "--optimizer",
        choices=TRAIN_OPTIMIZERS,
        default=None,
        help=f"optimizer (default: {d['optimizer']})",
    )
    group.add_argument(
        "--learning-rate",
        type=positive_float,
        default=None,
        metavar="LR",
        help="peak learning rate (default: the optimizer's own, 3e-3 for adamw)",
    )
    group.add_argument(
        "--schedule",
        type=_schedule_spelling,
        choices=TRAIN_SCHEDULES,
        default=None,
        help=f"learning-rate schedule, underscores accepted too (default: {d['schedule']}, "
        "6%% warmup)",
    )


def _add_run_options(group: argparse._ArgumentGroup) -> None:
    """--steps, --batch-size, --seed."""
    d = TRAIN_DEFAULTS
    group.add_argument(
        "--steps",
        type=int_in_range(1),
        default=None,
        help=f"optimizer steps, also the schedule's length (default: {d['steps']})",
    )
    group.add_argument(
        "--batch-size",
        type=int_in_range(1, TRAIN_MAX_BATCH_SIZE),
        default=None,
        help=f"samples per step, at most {TRAIN_MAX_BATCH_SIZE}, divisible by --devices "
        f"(default: {d['batch_size']})",
    )
    group.add_argument(
        "--seed",
        type=int_in_range(0),
        default=None,
        help=f"seeds the initial parameters and the batch order (default: {d['seed']})",
    )


def _add_device_options(group: argparse._ArgumentGroup) -> None:
    """--devices, --zero-stage, --offload-optimizer."""
    d = TRAIN_DEFAULTS
    group.add_argument(
        "--devices",
        type=int_in_range(1),
        default=None,
        metavar="N",
        help="devices on the data-parallel mesh axis; on CPU the command makes N fake "
        f"devices (XLA_FLAGS) before JAX starts (default: {d['devices']}). In a "
        "multi-process run: devices of all processes together, a multiple of "
        f"${NUM_PROCESSES_VAR}, each process contributing N / processes (default: all)",
    )
    group.add_argument(
        "--zero-stage",
        type=int,
        choices=(0, 1, 2),
        default=None,
        help="0: replicated optimizer state; 1: state sharded over the devices (ZeRO-1); "
        f"2: state and gradients sharded (ZeRO-2) (default: {d['zero_stage']})",
    )
    group.add_argument(
        "--offload-optimizer",
        choices=TRAIN_OFFLOAD,
        default=None,
        help="keep the optimizer state in host memory instead of device memory. device: "
        "the update still runs on the devices, the state streamed there and back each "
        "step (works with any --zero-stage and several processes); host: the update runs "
        "on the host's CPU, only the gradients go down and the new parameters come back "
        "(one process). The same math either way; a run may resume with or without it "
        "(default: the state in device memory)",
    )


def _add_config_option(group: argparse._ArgumentGroup) -> None:
    """--config."""
    group.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML, YAML or JSON run config (default: $SCIRS2_OPTIM_CONFIG if set); the "
        "options given here override it",
    )


def _add_checkpoint_options(group: argparse._ArgumentGroup) -> None:
    """--checkpoint-dir, --save-every, --resume, --stop-at."""
    group.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        default=None,
        help="save checkpoints here (asynchronously) every --save-every steps and at the end",
    )
    group.add_argument(
        "--save-every",
        type=int_in_range(1),
        default=None,
        metavar="K",
        help=f"steps between checkpoints (default: {TRAIN_DEFAULTS['save_every']})",
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest good checkpoint in --checkpoint-dir (the same run "
        "settings are required; devices and ZeRO stage may differ)",
    )
    group.add_argument(
        "--stop-at",
        type=int_in_range(1),
        default=None,
        metavar="STEP",
        help="end after this step with a checkpoint; --resume later continues to --steps",
    )


def _add_output_options(group: argparse._ArgumentGroup) -> None:
    """--metrics-port, --log-every."""
    group.add_argument(
        "--metrics-port",
        type=int_in_range(0, 65535),
        default=None,
        metavar="PORT",
        help=f"serve Prometheus /metrics and /health on ${METRICS_HOST_VAR}:PORT (default "
        f"host {METRICS_HOST}) during the run, one server per process (0: any free port); "
        f"a bearer token is read from ${METRICS_TOKEN_VAR} only",
    )
    group.add_argument(
        "--log-every",
        type=int_in_range(0),
        default=TRAIN_DEFAULTS["log_every"],
        metavar="N",
        help="without a terminal: print a progress line every N steps; 0: only at the end "
        "(default: %(default)s)",
    )
