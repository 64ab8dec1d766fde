"""The ``scirs2-optim ckpt`` command: list and verify a run's checkpoints.

    scirs2-optim ckpt ls DIR                 steps, sizes, metrics, and whether each verifies
    scirs2-optim ckpt verify DIR [--step N]  exit 1 when a checkpoint (or the step) is bad

Exit codes: 0 success; 2 bad usage (one message, no traceback); 1 a bad or missing
checkpoint. The handler imports the manager (and with it JAX and Orbax) itself, so building
the parser stays cheap and does not need Orbax.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scirs2_optim_jax.checkpoint.errors import CheckpointCorruptError

__all__ = ["add_parser"]

PROG = "scirs2-optim ckpt"


def _step(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``ckpt`` with its ``ls`` and ``verify`` subcommands on ``subparsers``.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers`` returned.

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser(prog="scirs2-optim")
        >>> add_parser(parser.add_subparsers(dest="command", required=True))
        >>> args = parser.parse_args(["ckpt", "verify", "/tmp/run", "--step", "12"])
        >>> args.action, args.directory, args.step
        ('verify', '/tmp/run', 12)
    """
    parser = subparsers.add_parser(
        "ckpt",
        help="list and verify checkpoints",
        description="List a run's checkpoints or verify them against their checksums.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = actions.add_parser("ls", help="list steps, sizes, metrics and whether each verifies")
    ls.add_argument("directory", metavar="DIR", help="the checkpoint directory")
    verify = actions.add_parser(
        "verify", help="verify every checkpoint (or one); exit 1 if one is bad"
    )
    verify.add_argument("directory", metavar="DIR", help="the checkpoint directory")
    verify.add_argument("--step", type=_step, default=None, metavar="N", help="verify only step N")
    parser.set_defaults(handler=run)


def _format_metrics(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return "-"
    return " ".join(f"{name}={value:.6g}" for name, value in sorted(metrics.items()))


def run(args: argparse.Namespace) -> int:
    """Runs ``ckpt ls`` or ``ckpt verify``; returns the exit code.

    Example:
        >>> import argparse
        >>> run(argparse.Namespace(action="ls", directory="/nonexistent/run"))
        2
    """
    directory = Path(args.directory)
    if not directory.is_dir():
        print(
            f"{PROG} {args.action}: error: no checkpoint directory at {directory}", file=sys.stderr
        )
        return 2

    # Loads JAX and Orbax, which only running a command needs.
    from scirs2_optim_jax.checkpoint.manager import CheckpointManager

    try:
        manager = CheckpointManager(directory, read_only=True)
    except (OSError, ValueError) as err:
        print(f"{PROG} {args.action}: error: cannot open {directory}: {err}", file=sys.stderr)
        return 1
    try:
        if args.action == "ls":
            infos = manager.info()
            if not infos:
                print(f"no checkpoints in {directory}")
                return 0
            print(f"{'step':>10}  {'bytes':>12}  {'verified':<8}  metrics")
            for info in infos:
                status = "ok" if info.ok else "BAD"
                print(
                    f"{info.step:>10}  {info.size_bytes:>12}  {status:<8}  "
                    f"{_format_metrics(info.metrics)}"
                )
            for info in infos:
                if not info.ok:
                    print(f"step {info.step}: {info.error}", file=sys.stderr)
            return 0

        steps = manager.all_steps() if args.step is None else [args.step]
        if not steps:
            print(f"{PROG} verify: error: no checkpoints in {directory}", file=sys.stderr)
            return 1
        bad = 0
        for step in steps:
            try:
                manager.verify(step)
            except (CheckpointCorruptError, FileNotFoundError, ValueError) as err:
                bad += 1
                print(f"step {step}: BAD: {err}", file=sys.stderr)
            else:
                print(f"step {step}: ok")
        return 1 if bad else 0
    finally:
        manager.close()
