"""The ``scirs2-optim`` command.

Subcommands:
    train   train the demo MLP on scikit-learn's digits with one of our optimizers.
    bench   time our optimizer steps against optax and the memory-bandwidth bound.
    plan    predict per-device memory for a config or demo model, recommend a batch size.
    ckpt    list and verify checkpoints (ckpt ls DIR, ckpt verify DIR [--step N]).
    kernels build the one-pass CPU kernels ahead of their first use (kernels build).

Each subcommand module has an ``add_parser(subparsers)`` that declares its options and sets
``handler`` to the function that runs it: ``train`` and ``plan`` here
(:mod:`~scirs2_optim_jax.cli.train`, :mod:`~scirs2_optim_jax.cli.plan`), ``bench`` and
``ckpt`` beside their features (:mod:`scirs2_optim_jax.bench.commands`,
:mod:`scirs2_optim_jax.checkpoint.commands`). Building the parser imports only the standard
library and those modules (names from :mod:`scirs2_optim_jax.config.registry`); a handler
imports JAX, Flax and the rest when its subcommand runs, so ``--help`` and usage errors
answer at once.

``train`` options: --optimizer, --learning-rate, --schedule, --steps, --batch-size, --seed,
--devices (N fake CPU devices: ``XLA_FLAGS`` is set before JAX starts; data parallelism over
a ``data`` mesh), --zero-stage {0,1,2}, --config FILE (a RunConfig; options override it),
--checkpoint-dir, --save-every, --resume, --stop-at, --metrics-port (Prometheus /metrics and
/health on ``SCIRS2_METRICS_HOST``, default 127.0.0.1; bearer token from
``SCIRS2_METRICS_TOKEN`` only), --log-every. On a terminal it draws a rich progress bar
(loss, learning rate, samples/s), elsewhere it prints a line every --log-every steps; then a
summary table and, last, ``params_sha256: <hex>``. With a checkpoint directory, SIGTERM
makes a final save and the command exits 0.

Multi-process: with ``SCIRS2_NUM_PROCESSES`` > 1 (and ``SCIRS2_COORDINATOR_ADDRESS``,
``SCIRS2_PROCESS_ID``), the same command started in every process joins one data-parallel
run (``init_distributed`` before JAX starts). --devices then counts the devices of all
processes (default: all of them); process 0 prints the progress and the summary, the others
only their setup lines and the ``params_sha256`` line; every process serves its own metrics.

Exit codes: 0 success; 2 bad usage or an invalid value (one message on stderr, no traceback);
1 the run itself failed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from scirs2_optim_jax.bench import commands as bench
from scirs2_optim_jax.checkpoint import commands as ckpt
from scirs2_optim_jax.cli import kernels, plan, train
from scirs2_optim_jax.cli.arguments import Parser
from scirs2_optim_jax.cli.train_options import (
    COORDINATOR_VAR,
    METRICS_HOST,
    METRICS_HOST_VAR,
    METRICS_TOKEN_VAR,
    NUM_PROCESSES_VAR,
    PROCESS_ID_VAR,
    TRAIN_DEFAULTS,
    TRAIN_MAX_BATCH_SIZE,
    TRAIN_OPTIMIZERS,
    TRAIN_SCHEDULES,
)

__all__ = [
    "COORDINATOR_VAR",
    "METRICS_HOST",
    "METRICS_HOST_VAR",
    "METRICS_TOKEN_VAR",
    "NUM_PROCESSES_VAR",
    "PROCESS_ID_VAR",
    "PROG",
    "TRAIN_DEFAULTS",
    "TRAIN_MAX_BATCH_SIZE",
    "TRAIN_OPTIMIZERS",
    "TRAIN_SCHEDULES",
    "build_parser",
    "main",
]

PROG = "scirs2-optim"


def build_parser() -> argparse.ArgumentParser:
    """Returns the ``scirs2-optim`` argument parser, one subparser per subcommand.

    Example:
        >>> args = build_parser().parse_args(["train", "--steps", "10", "--zero-stage", "2"])
        >>> args.steps, args.zero_stage, args.optimizer  # None: from --config or the default
        (10, 2, None)
    """
    parser = Parser(
        prog=PROG, description="Optax-compatible optimizers for JAX: tools and demo jobs."
    )
    subparsers = parser.add_subparsers(
        title="commands", dest="command", required=True, metavar="COMMAND"
    )
    commands = (train, bench, plan, ckpt, kernels)
    for command in commands:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``scirs2-optim``; returns the exit code instead of exiting.

    Args:
        argv: the arguments after the program name; None reads ``sys.argv[1:]``.

    Returns:
        0 on success, 2 for bad usage or an invalid value, 1 when the run fails.

    Example:
        >>> main(["train", "--steps", "0"])  # the message goes to stderr
        2
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        # argparse exits on --help (0) and on usage errors (2, message already printed).
        if stop.code is None:
            return 0
        return stop.code if isinstance(stop.code, int) else 2
    return args.handler(args)
