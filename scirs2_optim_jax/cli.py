"""The ``scirs2-optim`` command.

Subcommands:
    train   train the demo MLP on scikit-learn's digits with one of our optimizers.
    bench   time our optimizer steps against optax and the memory-bandwidth bound.
    plan    predict per-device memory for a config or demo model, recommend a batch size.
    ckpt    list and verify checkpoints (ckpt ls DIR, ckpt verify DIR [--step N]).

Each subcommand is a ``_add_<name>(subparsers)`` function that declares its options and sets
``handler`` to a ``_run_<name>(args) -> int`` function. Handlers import JAX and the rest of the
package themselves, so building the parser (and ``--help``) stays cheap.

Exit codes: 0 success; 2 bad usage or an invalid value (one message on stderr, no traceback);
1 the run itself failed.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

__all__ = ["main"]

PROG = "scirs2-optim"

# Kept here rather than imported from scirs2_optim_jax.training, which imports JAX and Flax;
# tests/test_training.py checks that both agree.
TRAIN_OPTIMIZERS = ("adamw", "adam", "sgd", "lamb", "lion", "lars", "radam", "rmsprop", "adagrad")
TRAIN_MAX_BATCH_SIZE = 1437  # the training-set size
TRAIN_DEFAULTS = {
    "optimizer": "adamw",
    "learning_rate": None,
    "steps": 800,
    "batch_size": 128,
    "seed": 0,
    "log_every": 100,
}


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
            "Train a 64-128-128-10 MLP on scikit-learn's handwritten digits (no network "
            "needed) with a warmup + cosine learning-rate schedule, then report the test "
            "accuracy and a sha256 of the final parameters (same seed, same hash)."
        ),
    )
    parser.add_argument(
        "--optimizer",
        choices=TRAIN_OPTIMIZERS,
        default=d["optimizer"],
        help="optimizer (default: %(default)s)",
    )
    parser.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=d["learning_rate"],
        metavar="LR",
        help="peak learning rate (default: the optimizer's own, 3e-3 for adamw)",
    )
    parser.add_argument(
        "--steps",
        type=_int_in_range(1),
        default=d["steps"],
        help="optimizer steps (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=_int_in_range(1, TRAIN_MAX_BATCH_SIZE),
        default=d["batch_size"],
        help=f"samples per step, at most {TRAIN_MAX_BATCH_SIZE} (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=_int_in_range(0),
        default=d["seed"],
        help="seeds the initial parameters and the batch order (default: %(default)s)",
    )
    parser.add_argument(
        "--log-every",
        type=_int_in_range(0),
        default=d["log_every"],
        metavar="N",
        help="print the loss every N steps; 0: only at the end (default: %(default)s)",
    )
    parser.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from scirs2_optim_jax.training import TrainLog, check_train_args, train_digits

    config = {
        "optimizer": args.optimizer,
        "learning_rate": args.learning_rate,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "log_every": args.log_every,
    }
    try:
        learning_rate = check_train_args(**config)
    except (ValueError, TypeError) as err:
        print(f"{PROG} train: error: {err}", file=sys.stderr)
        return 2
    config["learning_rate"] = learning_rate

    print(
        f"train: {args.optimizer}, peak lr {learning_rate:.1e} (warmup + cosine), "
        f"{args.steps} steps of {args.batch_size}, seed {args.seed}",
        flush=True,
    )
    width = len(str(args.steps))

    def on_log(log: TrainLog) -> None:
        print(
            f"step {log.step:>{width}}/{log.steps}  loss {log.loss:.4f}  "
            f"lr {log.learning_rate:.1e}",
            flush=True,
        )

    try:
        result = train_digits(**config, on_log=on_log)
    except Exception as err:
        print(f"{PROG} train: error: the run failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1

    print(f"final loss     {result.final_loss:.4f} (whole training set)")
    print(f"test accuracy  {result.test_accuracy:.2%}")
    print(f"steps          {result.steps}")
    print(
        f"seconds        {result.seconds:.1f} (first step, with compilation: "
        f"{result.compile_seconds:.1f})"
    )
    print(f"steps/s        {result.steps_per_second:.0f}")
    print(f"params_sha256: {result.params_sha256}", flush=True)
    if not math.isfinite(result.final_loss):
        print(
            f"{PROG} train: error: the run diverged: final loss {result.final_loss}; "
            "try a smaller --learning-rate",
            file=sys.stderr,
        )
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Returns the ``scirs2-optim`` argument parser, one subparser per subcommand.

    Example:
        >>> args = build_parser().parse_args(["train", "--steps", "10"])
        >>> args.steps, args.optimizer
        (10, 'adamw')
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
