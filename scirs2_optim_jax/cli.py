"""The ``scirs2-optim`` command.

Subcommands:
    train   train the demo MLP on scikit-learn's digits with one of our optimizers.
    bench   time our optimizer steps against optax and the memory-bandwidth bound.
    plan    predict per-device memory for a config or demo model, recommend a batch size.
    ckpt    list and verify checkpoints (ckpt ls DIR, ckpt verify DIR [--step N]).

Each subcommand is a ``_add_<name>(subparsers)`` function that declares its options and sets
``handler`` to a ``_run_<name>(args) -> int`` function. Handlers import JAX and the rest of the
package themselves, so building the parser (and ``--help``) stays cheap.

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
import contextlib
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

__all__ = ["main"]

PROG = "scirs2-optim"

# Kept here rather than imported from scirs2_optim_jax.training, which imports JAX and Flax;
# tests/test_training.py checks that both agree.
TRAIN_OPTIMIZERS = ("adamw", "adam", "sgd", "lamb", "lion", "lars", "radam", "rmsprop", "adagrad")
TRAIN_SCHEDULES = ("warmup-cosine", "warmup-constant", "constant", "cosine", "linear", "one-cycle")
TRAIN_MAX_BATCH_SIZE = 1437  # the training-set size
TRAIN_DEFAULTS = {
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
}
# [schedule] name in a RunConfig -> the train command's schedule name.
_CONFIG_SCHEDULES = {
    "warmup_cosine": "warmup-cosine",
    "warmup_constant": "warmup-constant",
    "constant": "constant",
}
METRICS_HOST = "127.0.0.1"
# The monitor's own variable names (monitor.ENV_VARS; tests/test_deploy.py checks they agree).
METRICS_HOST_VAR = "SCIRS2_METRICS_HOST"
METRICS_TOKEN_VAR = "SCIRS2_METRICS_TOKEN"  # noqa: S105  a variable name, not a secret
# parallel.distributed's names, kept here so that --help needs no JAX import (tests agree).
COORDINATOR_VAR = "SCIRS2_COORDINATOR_ADDRESS"
NUM_PROCESSES_VAR = "SCIRS2_NUM_PROCESSES"
PROCESS_ID_VAR = "SCIRS2_PROCESS_ID"


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line and a pointer to ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n(see '{self.prog} --help')\n")


def _number(text: str, kind: Callable[[str], float | int], expected: str) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
    return value


def _positive_float(text: str) -> float:
    expected = "a finite number > 0"
    value = float(_number(text, float, expected))
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
    return value


def _int_in_range(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    expected = f"an integer >= {minimum}"
    if maximum is not None:
        expected = f"an integer in [{minimum}, {maximum}]"

    def parse(text: str) -> int:
        value = int(_number(text, int, expected))
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
        return value

    return parse


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    d = TRAIN_DEFAULTS
    parser = subparsers.add_parser(
        "train",
        help="train the demo MLP on the handwritten digits",
        description=(
            "Train a 64-128-128-10 Flax NNX MLP on scikit-learn's handwritten digits (no "
            "network needed), on 1 to N (fake CPU) devices with data parallelism and optional "
            "ZeRO, with checkpoints, resume and a Prometheus endpoint; then report the test "
            "accuracy and a sha256 of the final parameters (same seed, same hash). Settings "
            "come from the built-in defaults, then --config (and SCIRS2_OPTIM_* variables), "
            "then the options given here."
        ),
        epilog=(
            "From a config file the command reads seed, batch_size, [optimizer] (after "
            "[features]), [schedule], clipping.max_global_norm, parallel.num_devices and "
            "zero_stage, [checkpoint] and monitoring.enabled/metrics_port; it refuses "
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
        ),
    )
    parser.add_argument(
        "--optimizer",
        choices=TRAIN_OPTIMIZERS,
        default=None,
        help=f"optimizer (default: {d['optimizer']})",
    )
    parser.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=None,
        metavar="LR",
        help="peak learning rate (default: the optimizer's own, 3e-3 for adamw)",
    )
    parser.add_argument(
        "--schedule",
        choices=TRAIN_SCHEDULES,
        default=None,
        help=f"learning-rate schedule (default: {d['schedule']}, 6%% warmup)",
    )
    parser.add_argument(
        "--steps",
        type=_int_in_range(1),
        default=None,
        help=f"optimizer steps, also the schedule's length (default: {d['steps']})",
    )
    parser.add_argument(
        "--batch-size",
        type=_int_in_range(1, TRAIN_MAX_BATCH_SIZE),
        default=None,
        help=f"samples per step, at most {TRAIN_MAX_BATCH_SIZE}, divisible by --devices "
        f"(default: {d['batch_size']})",
    )
    parser.add_argument(
        "--seed",
        type=_int_in_range(0),
        default=None,
        help=f"seeds the initial parameters and the batch order (default: {d['seed']})",
    )
    parser.add_argument(
        "--devices",
        type=_int_in_range(1),
        default=None,
        metavar="N",
        help="devices on the data-parallel mesh axis; on CPU the command makes N fake "
        f"devices (XLA_FLAGS) before JAX starts (default: {d['devices']}). In a "
        "multi-process run: devices of all processes together, a multiple of "
        f"${NUM_PROCESSES_VAR}, each process contributing N / processes (default: all)",
    )
    parser.add_argument(
        "--zero-stage",
        type=int,
        choices=(0, 1, 2),
        default=None,
        help="0: replicated optimizer state; 1: state sharded over the devices (ZeRO-1); "
        f"2: state and gradients sharded (ZeRO-2) (default: {d['zero_stage']})",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML, YAML or JSON run config (default: $SCIRS2_OPTIM_CONFIG if set); the "
        "options given here override it",
    )
    parser.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        default=None,
        help="save checkpoints here (asynchronously) every --save-every steps and at the end",
    )
    parser.add_argument(
        "--save-every",
        type=_int_in_range(1),
        default=None,
        metavar="K",
        help=f"steps between checkpoints (default: {d['save_every']})",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest good checkpoint in --checkpoint-dir (the same run "
        "settings are required; devices and ZeRO stage may differ)",
    )
    parser.add_argument(
        "--stop-at",
        type=_int_in_range(1),
        default=None,
        metavar="STEP",
        help="end after this step with a checkpoint; --resume later continues to --steps",
    )
    parser.add_argument(
        "--metrics-port",
        type=_int_in_range(0, 65535),
        default=None,
        metavar="PORT",
        help=f"serve Prometheus /metrics and /health on ${METRICS_HOST_VAR}:PORT (default "
        f"host {METRICS_HOST}) during the run, one server per process (0: any free port); "
        f"a bearer token is read from ${METRICS_TOKEN_VAR} only",
    )
    parser.add_argument(
        "--log-every",
        type=_int_in_range(0),
        default=d["log_every"],
        metavar="N",
        help="without a terminal: print a progress line every N steps; 0: only at the end "
        "(default: %(default)s)",
    )
    parser.set_defaults(handler=_run_train)


def _fail(message: str, code: int) -> int:
    print(f"{PROG} train: error: {message}", file=sys.stderr)
    return code


def _train_base_config(processes: int = 1) -> Any:
    """The train command's defaults as a RunConfig: what a config file overrides.

    A multi-process run uses every device of every process unless told otherwise.
    """
    from scirs2_optim_jax import config as c

    d = TRAIN_DEFAULTS
    return c.RunConfig(
        name="digits",
        seed=d["seed"],
        batch_size=d["batch_size"],
        optimizer=c.OptimizerConfig(name=d["optimizer"], learning_rate=3e-3),
        schedule=c.ScheduleConfig(name="warmup_cosine", total_steps=d["steps"]),
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


def _train_settings(
    args: argparse.Namespace, environ: Mapping[str, str], processes: int = 1
) -> dict[str, Any]:
    """Merges defaults, config file, environment and options into train_digits arguments.

    Args:
        args: the parsed options.
        environ: the environment (config variables, config file path).
        processes: the number of processes of the run (``SCIRS2_NUM_PROCESSES``).

    Raises:
        ValueError, TypeError, FileNotFoundError: naming the invalid option or config field.
    """
    from scirs2_optim_jax import config as c

    path = args.config or environ.get(c.CONFIG_FILE_VAR) or None
    config = c.load_config(path, environ=environ, base=_train_base_config(processes))
    overrides: dict[str, Any] = {}
    options = {
        ("optimizer", "name"): args.optimizer,
        ("optimizer", "learning_rate"): args.learning_rate,
        ("schedule", "total_steps"): args.steps,
        ("batch_size",): args.batch_size,
        ("seed",): args.seed,
        ("parallel", "num_devices"): args.devices,
        ("parallel", "zero_stage"): args.zero_stage,
        ("checkpoint", "directory"): args.checkpoint_dir,
        ("checkpoint", "every_steps"): args.save_every,
    }
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
    try:
        config = c.RunConfig.from_mapping(overrides, base=config)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{err} (from the command line)") from None

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
    optimizer = c.resolve_optimizer(config)
    hyperparameters = c.optimizer_arguments(optimizer)
    lr_given = args.learning_rate is not None or _learning_rate_given(path, environ)
    port = args.metrics_port
    if port is None and config.monitoring.enabled:
        port = config.monitoring.metrics_port
    devices = config.parallel.num_devices
    if processes > 1 and devices is not None and devices % processes:
        raise ValueError(
            f"--devices (or parallel.num_devices) must be a multiple of the {processes} "
            f"processes (${NUM_PROCESSES_VAR}), got {devices}"
        )
    checkpoint = config.checkpoint
    if args.resume and checkpoint.directory is None:
        raise ValueError("--resume needs --checkpoint-dir (or checkpoint.directory in --config)")
    return {
        "config": config,
        "metrics_port": port,
        "train": {
            "optimizer": optimizer.name,
            "learning_rate": optimizer.learning_rate if lr_given else None,
            "steps": config.schedule.total_steps,
            "batch_size": config.batch_size,
            "seed": config.seed,
            "schedule": args.schedule or _CONFIG_SCHEDULES[config.schedule.name],
            "warmup_ratio": config.schedule.warmup_ratio,
            "min_lr_ratio": config.schedule.min_lr_ratio,
            "hyperparameters": hyperparameters,
            "max_global_norm": config.clipping.max_global_norm,
            "devices": config.parallel.num_devices,
            "zero_stage": config.parallel.zero_stage,
            "save_every": checkpoint.every_steps,
            "keep_checkpoints": checkpoint.keep,
            "stop_at": args.stop_at,
        },
        "checkpoint_dir": checkpoint.directory,
        "async_save": checkpoint.async_save,
    }


def _metrics_host(environ: Mapping[str, str]) -> str:
    return environ.get(METRICS_HOST_VAR, "").strip() or METRICS_HOST


def _start_monitor(port: int, batch_size: int, environ: Mapping[str, str]) -> Any:
    """A started RunMonitor serving /metrics and /health on $SCIRS2_METRICS_HOST:port."""
    from scirs2_optim_jax.monitor import MonitorConfig, RunMonitor

    # Only the host and the token come from the environment (the port is an option, and the
    # token never is: it would show in `ps`); the other monitor variables do not apply here.
    env = {
        METRICS_HOST_VAR: _metrics_host(environ),
        METRICS_TOKEN_VAR: environ.get(METRICS_TOKEN_VAR, ""),
    }
    config = MonitorConfig.from_env(env, port=port, log_every=0)
    return RunMonitor(config, batch_size=batch_size, configure_logs=False).start()


def _run_train(args: argparse.Namespace) -> int:
    import os

    from scirs2_optim_jax import training
    from scirs2_optim_jax.parallel.distributed import distributed_from_env, init_distributed

    try:
        distributed = distributed_from_env(os.environ)
        processes = 1 if distributed is None else distributed.num_processes
        settings = _train_settings(args, os.environ, processes)
    except (ValueError, TypeError, FileNotFoundError) as err:
        return _fail(str(err), 2)
    train_args = settings["train"]
    try:
        # Before anything starts JAX's backend: the device count and memory settings are
        # read once, when it starts.
        from scirs2_optim_jax.config import BackendAlreadyInitializedError, apply_memory_settings

        apply_memory_settings(settings["config"])
        if train_args["devices"] is not None:
            training.request_cpu_devices(train_args["devices"] // processes)
        learning_rate = training.check_train_args(**train_args, log_every=args.log_every)
    except (ValueError, TypeError, BackendAlreadyInitializedError) as err:
        return _fail(str(err), 2)
    train_args["learning_rate"] = learning_rate
    if distributed is not None:
        # Validation is done: a usage error never waits for the other processes.
        try:
            init_distributed(
                distributed.coordinator_address,
                distributed.num_processes,
                distributed.process_id,
            )
        except RuntimeError as err:
            return _fail(str(err), 1)

    return _train_and_report(args, settings, os.environ)


def _train_and_report(
    args: argparse.Namespace, settings: dict[str, Any], environ: Mapping[str, str]
) -> int:
    import jax
    from rich.console import Console

    from scirs2_optim_jax import training
    from scirs2_optim_jax.checkpoint import PreemptionGuard
    from scirs2_optim_jax.training.report import ProgressReporter, summary_table

    train_args = settings["train"]
    checkpoint_dir = settings["checkpoint_dir"]
    devices = train_args["devices"]
    # In a multi-process run, process 0 reports; the others print only what is theirs.
    primary = jax.process_index() == 0
    if primary:
        print(
            f"train: {train_args['optimizer']}, peak lr {train_args['learning_rate']:.1e} "
            f"({train_args['schedule']}), {train_args['steps']} steps of "
            f"{train_args['batch_size']}, seed {train_args['seed']}, "
            f"devices {'all' if devices is None else devices}, ZeRO stage "
            f"{train_args['zero_stage']}",
            flush=True,
        )
    if jax.process_count() > 1:
        print(
            f"distributed: process {jax.process_index()} of {jax.process_count()}, "
            f"{jax.local_device_count()} local of {jax.device_count()} devices",
            flush=True,
        )
    monitor = None
    if settings["metrics_port"] is not None:
        try:
            monitor = _start_monitor(settings["metrics_port"], train_args["batch_size"], environ)
        except (OSError, ValueError) as err:
            return _fail(
                f"--metrics-port {settings['metrics_port']}: cannot serve metrics on "
                f"{_metrics_host(environ)}: {err}",
                2,
            )
        print(f"metrics: {monitor.url}/metrics and {monitor.url}/health", flush=True)

    console = Console(highlight=False)
    reporter = ProgressReporter(console, train_args["steps"], args.log_every)
    guard = PreemptionGuard() if checkpoint_dir is not None else None
    try:
        with contextlib.ExitStack() as stack:
            if guard is not None:
                stack.enter_context(guard)
            if primary:
                stack.enter_context(reporter)
            result = training.train_digits(
                **train_args,
                log_every=reporter.refresh_every,
                on_log=reporter if primary else None,
                checkpoint_dir=checkpoint_dir,
                async_save=settings["async_save"],
                resume=args.resume,
                stop_requested=None if guard is None else (lambda: guard.requested),
                monitor=monitor,
            )
    except training.RunSetupError as err:
        return _fail(str(err), 2)
    except Exception as err:
        return _fail(f"the run failed: {type(err).__name__}: {err}", 1)
    finally:
        if monitor is not None:
            monitor.close()

    if primary:
        if result.start_step:
            print(f"resumed from checkpoint step {result.start_step} in {checkpoint_dir}")
        if result.stop_reason == "preempted":
            number = None if guard is None else guard.signal_number
            # In a multi-process run the signal may have reached another process only.
            cause = "a stop signal to another process" if number is None else f"signal {number}"
            print(
                f"preempted ({cause}) after step {result.step}; saved checkpoint step "
                f"{result.checkpoint_step}; rerun with --resume to continue"
            )
        console.print(summary_table(result))
    print(f"params_sha256: {result.params_sha256}", flush=True)
    if not math.isfinite(result.final_loss):
        return _fail(
            f"the run diverged: final loss {result.final_loss}; try a smaller --learning-rate",
            1,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Returns the ``scirs2-optim`` argument parser, one subparser per subcommand.

    Example:
        >>> args = build_parser().parse_args(["train", "--steps", "10", "--zero-stage", "2"])
        >>> args.steps, args.zero_stage, args.optimizer  # None: from --config or the default
        (10, 2, None)
    """
    parser = _Parser(
        prog=PROG, description="Optax-compatible optimizers for JAX: tools and demo jobs."
    )
    subparsers = parser.add_subparsers(
        title="commands", dest="command", required=True, metavar="COMMAND"
    )
    _add_train(subparsers)
    for add_parser in _subcommand_parsers():
        add_parser(subparsers)
    return parser


def _subcommand_parsers() -> list[Callable[[argparse._SubParsersAction], object]]:
    """``add_parser`` functions of the subcommands that live beside their features."""
    from scirs2_optim_jax.bench import commands as bench
    from scirs2_optim_jax.checkpoint import commands as ckpt
    from scirs2_optim_jax.config import commands as plan

    return [bench.add_parser, plan.add_parser, ckpt.add_parser]


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
