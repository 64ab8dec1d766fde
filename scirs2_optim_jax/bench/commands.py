"""``scirs2-optim bench``: the side-by-side optimizer-step benchmark."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_parser", "main"]

CONFIG_NAMES = ("a", "b", "c", "d", "e", "f", "g", "h", "i")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``bench`` on a subparsers object; returns its parser."""
    parser = subparsers.add_parser(
        "bench",
        help="time our optimizer steps against optax and the memory-bandwidth bound",
        description=(
            "Times, in one process, our jitted optimizer step (update + apply_updates, buffers "
            "donated), optax's step for the same optimizer and hyperparameters, and the bound: "
            "the bytes the step must move divided by the memory bandwidth measured in the same "
            "run by a donated streaming kernel. Median of --repeats timed steps after a "
            "warm-up; compile time measured separately. Configs: a-c adamw 10M params in "
            "20/200/2,000 leaves; d clip+adamw+warmup-cosine; e lamb; f clip+lamb+warmup-cosine "
            "(2,000 leaves); g bf16 params with fp32 master weights; h a 12-layer Flax "
            "transformer; i adamw at 1B params (accelerators only). The persistent compilation "
            "cache is on (see SCIRS2_OPTIM_COMPILATION_CACHE)."
        ),
    )
    parser.add_argument(
        "configs",
        nargs="*",
        metavar="CONFIG",
        help=f"configs to run, of {', '.join(CONFIG_NAMES)} (default: all that fit this backend)",
    )
    parser.add_argument(
        "--repeats", type=int, default=7, help="timed steps per measurement (default: 7)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    parser.add_argument(
        "--no-torch", action="store_true", help="skip PyTorch's fused AdamW even if installed"
    )
    parser.add_argument(
        "--cache-check",
        action="store_true",
        help="also show that a second process reuses the persistent compilation cache",
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Runs the benchmark described by parsed ``args``; returns the exit code."""
    unknown = [name for name in args.configs if name not in CONFIG_NAMES]
    if unknown:
        print(
            f"scirs2-optim bench: error: unknown config {unknown[0]!r}; "
            f"expected one of {', '.join(CONFIG_NAMES)}",
            file=sys.stderr,
        )
        return 2
    if args.repeats < 1:
        print(
            f"scirs2-optim bench: error: --repeats must be >= 1, got {args.repeats}",
            file=sys.stderr,
        )
        return 2
    from scirs2_optim_jax.compile_cache import enable_compilation_cache

    cache_dir = enable_compilation_cache()
    from scirs2_optim_jax.bench import cache_check, harness, report

    info = report.machine_info()
    print(
        f"{info['backend']} ({info['device']}, {info['cpu_count']} cores), jax {info['jax']}, "
        f"optax {info['optax']}; compilation cache: {cache_dir or 'off'}",
        flush=True,
    )
    print(report.HEADER, flush=True)
    results = harness.run_configs(
        args.configs or None,
        repeats=args.repeats,
        torch=not args.no_torch,
        on_result=lambda r: print(report.format_row(r), flush=True),
    )
    extra = {}
    if args.cache_check:
        first, second = cache_check.compile_twice("b")
        print(
            f"compilation cache: config b compiles in {first:.2f} s in a fresh process with an "
            f"empty cache, {second:.2f} s in a second process",
            flush=True,
        )
        extra["compilation_cache"] = {"first_s": first, "second_s": second}
    if args.json:
        args.json.write_text(report.to_json(results, extra))
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.run``: the same as ``scirs2-optim bench``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return args.handler(args)
