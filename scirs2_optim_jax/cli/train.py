"""``scirs2-optim train``: run the demo training job and report it.

:func:`run` validates everything it can before JAX starts (the settings, the device count,
the accelerator memory settings, the run's arguments), then joins the other processes of a
multi-process run, trains (:func:`~scirs2_optim_jax.training.train_digits`) with a progress
bar or log lines, a metrics endpoint and a preemption guard as asked, and prints the summary
and ``params_sha256: <hex>``. JAX, Flax and rich are imported when it runs.

Exit codes: 0 success; 2 bad usage or an invalid value (one message on stderr, no
traceback); 1 the run itself failed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from scirs2_optim_jax.cli import train_options
from scirs2_optim_jax.cli.train_options import METRICS_HOST, METRICS_HOST_VAR, METRICS_TOKEN_VAR
from scirs2_optim_jax.cli.train_settings import train_settings

__all__ = ["add_parser", "metrics_host", "run", "start_monitor"]

PROG = "scirs2-optim train"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``train`` (:mod:`~scirs2_optim_jax.cli.train_options`) to run :func:`run`."""
    return train_options.add_parser(subparsers, handler=run)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def metrics_host(environ: Mapping[str, str]) -> str:
    """The interface the metrics endpoint listens on: ``$SCIRS2_METRICS_HOST`` or loopback.

    Example:
        >>> metrics_host({}), metrics_host({"SCIRS2_METRICS_HOST": " 0.0.0.0 "})
        ('127.0.0.1', '0.0.0.0')
    """
    return environ.get(METRICS_HOST_VAR, "").strip() or METRICS_HOST


def start_monitor(port: int, batch_size: int, environ: Mapping[str, str]) -> Any:
    """A started RunMonitor serving /metrics and /health on $SCIRS2_METRICS_HOST:port."""
    from scirs2_optim_jax.monitor import MonitorConfig, RunMonitor

    # Only the host and the token come from the environment (the port is an option, and the
    # token never is: it would show in `ps`); the other monitor variables do not apply here.
    env = {
        METRICS_HOST_VAR: metrics_host(environ),
        METRICS_TOKEN_VAR: environ.get(METRICS_TOKEN_VAR, ""),
    }
    config = MonitorConfig.from_env(env, port=port, log_every=0)
    return RunMonitor(config, batch_size=batch_size, configure_logs=False).start()


def run(args: argparse.Namespace) -> int:
    """Runs ``train``; returns the exit code (0 ok, 2 bad usage/config, 1 the run failed)."""
    from scirs2_optim_jax import training
    from scirs2_optim_jax.config import BackendAlreadyInitializedError, apply_memory_settings
    from scirs2_optim_jax.parallel.distributed import distributed_from_env, init_distributed

    try:
        distributed = distributed_from_env(os.environ)
        processes = 1 if distributed is None else distributed.num_processes
        settings = train_settings(args, os.environ, processes)
    except (ValueError, TypeError, FileNotFoundError) as err:
        return _fail(str(err), 2)
    train_args = settings["train"]
    try:
        # Before anything starts JAX's backend: the device count and memory settings are
        # read once, when it starts.
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


def _offload_note(offload: str | None) -> str:
    """The setup line's note of the optimizer-state offload (empty without one).

    Example:
        >>> _offload_note(None), _offload_note("host")
        ('', ', optimizer state offloaded (update on the host)')
    """
    if offload is None:
        return ""
    return f", optimizer state offloaded (update on the {offload})"


def _print_setup(train_args: dict[str, Any], primary: bool) -> None:
    """The run's settings (process 0) and, with several processes, this process's share."""
    import jax

    devices = train_args["devices"]
    if primary:
        print(
            f"train: {train_args['optimizer']}, peak lr {train_args['learning_rate']:.1e} "
            f"({train_args['schedule']}), {train_args['steps']} steps of "
            f"{train_args['batch_size']}, seed {train_args['seed']}, "
            f"devices {'all' if devices is None else devices}, ZeRO stage "
            f"{train_args['zero_stage']}{_offload_note(train_args.get('offload_optimizer'))}",
            flush=True,
        )
    if jax.process_count() > 1:
        print(
            f"distributed: process {jax.process_index()} of {jax.process_count()}, "
            f"{jax.local_device_count()} local of {jax.device_count()} devices",
            flush=True,
        )


def _train_and_report(
    args: argparse.Namespace, settings: dict[str, Any], environ: Mapping[str, str]
) -> int:
    import jax
    from rich.console import Console

    from scirs2_optim_jax import training
    from scirs2_optim_jax.checkpoint import PreemptionGuard
    from scirs2_optim_jax.training.report import ProgressReporter

    train_args = settings["train"]
    # In a multi-process run, process 0 reports; the others print only what is theirs.
    primary = jax.process_index() == 0
    _print_setup(train_args, primary)
    monitor = None
    if settings["metrics_port"] is not None:
        try:
            monitor = start_monitor(settings["metrics_port"], train_args["batch_size"], environ)
        except (OSError, ValueError) as err:
            return _fail(
                f"--metrics-port {settings['metrics_port']}: cannot serve metrics on "
                f"{metrics_host(environ)}: {err}",
                2,
            )
        print(f"metrics: {monitor.url}/metrics and {monitor.url}/health", flush=True)

    console = Console(highlight=False)
    reporter = ProgressReporter(console, train_args["steps"], args.log_every)
    guard = PreemptionGuard() if settings["checkpoint_dir"] is not None else None
    try:
        with contextlib.ExitStack() as stack:
            if guard is not None:
                stack.enter_context(guard)
            if primary:
                stack.enter_context(reporter)
            startup_seconds = _seconds_since_process_start()
            result = training.train_digits(
                **train_args,
                log_every=reporter.refresh_every,
                on_log=reporter if primary else None,
                checkpoint_dir=settings["checkpoint_dir"],
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
    return _report(result, settings["checkpoint_dir"], guard, console, primary, startup_seconds)


def _seconds_since_process_start() -> float | None:
    """Wall time since this process started (Python, imports, argument handling)."""
    try:
        import psutil

        return max(0.0, time.time() - psutil.Process().create_time())
    except (ImportError, OSError):
        return None


def _report(
    result: Any,
    checkpoint_dir: str | None,
    guard: Any,
    console: Any,
    primary: bool,
    startup_seconds: float | None = None,
) -> int:
    """Prints how the run ended, the summary (process 0) and the parameters' hash."""
    from scirs2_optim_jax.training.report import summary_table

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
        console.print(summary_table(result, startup_seconds))
    print(f"params_sha256: {result.params_sha256}", flush=True)
    if not math.isfinite(result.final_loss):
        return _fail(
            f"the run diverged: final loss {result.final_loss}; try a smaller --learning-rate",
            1,
        )
    return 0
