"""``scirs2-optim bench``: the side-by-side optimizer-step benchmark; with ``--flax`` the
Flax training paths, with ``--checkpoint`` our verified checkpoints against plain Orbax, and
with ``--offload`` the AdamW step with its optimizer state offloaded to host memory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_parser", "main"]

CONFIG_NAMES = ("a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m")


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
            "transformer; i adamw at 1B params (accelerators only); j adopt; k schedule-free AdamW "
            "(200 leaves, against optax.contrib's); l muon (against optax.contrib's); m "
            "adafactor (200 leaves). The persistent compilation "
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
    parser.add_argument(
        "--flax",
        action="store_true",
        help=(
            "instead, time the step where Flax users train: our optimizers through "
            "scirs2_optim_jax.flax.Optimizer (jitted NNX split/merge step) and "
            "flax.TrainState.apply_gradients, against optax's through Flax's own classes "
            "(configs b-e; PyTorch's fused AdamW on b and c)"
        ),
    )
    parser.add_argument(
        "--checkpoint",
        action="store_true",
        help=(
            "instead of the optimizer steps, time checkpoint save and verified restore "
            "against plain Orbax (see --sizes, --rounds)"
        ),
    )
    parser.add_argument(
        "--offload",
        action="store_true",
        help=(
            "instead, time AdamW at the parameter counts of --params five ways, one after "
            "the other in one process: no offload (the one-pass step), offload "
            "compute='device' (state streamed from host memory), offload compute='host' "
            "(update on the host's CPU), and bf16 params with master weights without and "
            "with compute='host'; ms/step, the ratio to no offload, and the bytes moved "
            "between host and device per step with their GB/s"
        ),
    )
    parser.add_argument(
        "--params",
        default=None,
        metavar="COUNTS",
        help=(
            "with --offload: comma-separated parameter counts, e.g. 10M,1B "
            "(default: 10M on the CPU, 1B,4B on accelerators)"
        ),
    )
    parser.add_argument(
        "--sizes",
        default=None,
        metavar="SIZES",
        help="with --checkpoint: comma-separated state sizes (default: 300MB,2GB)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="with --checkpoint: rounds per side, the medians are reported (default: 3)",
    )
    parser.set_defaults(handler=run)
    return parser


def _error(message: str) -> int:
    print(f"scirs2-optim bench: error: {message}", file=sys.stderr)
    return 2


def run_checkpoint(args: argparse.Namespace) -> int:
    """Runs ``bench --checkpoint``: ours against plain Orbax; returns the exit code."""
    if args.configs:
        return _error("--checkpoint takes no configs")
    if args.rounds < 1:
        return _error(f"--rounds must be >= 1, got {args.rounds}")
    from scirs2_optim_jax.bench import checkpoint

    try:
        sizes = [
            checkpoint.parse_size(s) for s in (args.sizes or checkpoint.DEFAULT_SIZES).split(",")
        ]
    except ValueError as err:
        return _error(f"--sizes: {err}")
    from scirs2_optim_jax.bench import report

    info = report.machine_info()
    print(
        f"{info['backend']} ({info['device']}, {info['cpu_count']} cores), jax {info['jax']}, "
        f"orbax-checkpoint {checkpoint.orbax_version()}; {args.rounds} rounds per side",
        flush=True,
    )

    def on_round(size: int, side: str, figures: dict[str, float]) -> None:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in figures.items())
        print(f"  {size / 1e6:.0f} MB {side:>5}: {shown}", flush=True)

    rows = checkpoint.run_checkpoint_bench(
        sizes,
        rounds=args.rounds,
        on_round=on_round,
        on_row=lambda row: print(checkpoint.format_table([row]), flush=True),
    )
    print(checkpoint.format_table(rows), flush=True)
    if args.json:
        args.json.write_text(report.to_json([], {"checkpoint": [r.as_dict() for r in rows]}))
        print(f"wrote {args.json}")
    return 0


def run_flax(args: argparse.Namespace) -> int:
    """Runs ``bench --flax``: the Flax training paths, ours against optax's."""
    from scirs2_optim_jax.bench import flax_paths

    names = tuple(args.configs) or flax_paths.FLAX_CONFIGS
    unknown = [name for name in names if name not in flax_paths.FLAX_CONFIGS]
    if unknown:
        return _error(
            f"--flax runs configs {', '.join(flax_paths.FLAX_CONFIGS)}, not {unknown[0]!r}"
        )
    if args.repeats < 1:
        return _error(f"--repeats must be >= 1, got {args.repeats}")
    from scirs2_optim_jax.bench import report
    from scirs2_optim_jax.compile_cache import enable_compilation_cache

    cache_dir = enable_compilation_cache()
    info = report.machine_info()
    print(
        f"{info['backend']} ({info['device']}, {info['cpu_count']} cores), jax {info['jax']}, "
        f"optax {info['optax']}; compilation cache: {cache_dir or 'off'}",
        flush=True,
    )
    print(flax_paths.header(), flush=True)
    results = flax_paths.run_flax_paths(
        names,
        repeats=args.repeats,
        torch=not args.no_torch,
        report=lambda r: print(flax_paths.format_row(r), flush=True),
    )
    if args.json:
        args.json.write_text(report.to_json([], {"flax": [r.as_dict() for r in results]}))
        print(f"wrote {args.json}")
    return 0


def run_offload(args: argparse.Namespace) -> int:
    """Runs ``bench --offload``: AdamW with and without its state offloaded to the host."""
    if args.configs:
        return _error("--offload takes no configs")
    if args.repeats < 1:
        return _error(f"--repeats must be >= 1, got {args.repeats}")
    from scirs2_optim_jax.bench import offload

    counts = None
    if args.params is not None:
        try:
            counts = [offload.parse_count(c) for c in args.params.split(",")]
        except ValueError as err:
            return _error(f"--params: {err}")
    from scirs2_optim_jax.bench import report

    info = report.machine_info()
    if counts is None:
        on_cpu = info["backend"] == "cpu"
        counts = offload.DEFAULT_CPU_PARAMS if on_cpu else offload.DEFAULT_ACCELERATOR_PARAMS
    print(
        f"{info['backend']} ({info['device']}, {info['cpu_count']} cores), jax {info['jax']}; "
        f"offload rows at {', '.join(offload.format_count(c) for c in counts)} params, "
        f"median of {args.repeats} steps",
        flush=True,
    )
    print(offload.header(), flush=True)
    rows = []
    for count in counts:
        rows += offload.run_offload_rows(
            count,
            repeats=args.repeats,
            on_result=lambda r: print(offload.format_row(r), flush=True),
        )
        if args.json:  # after each size: a run cut short keeps the sizes it finished
            args.json.write_text(report.to_json([], {"offload": [r.as_dict() for r in rows]}))
    if args.json:
        print(f"wrote {args.json}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Runs the benchmark described by parsed ``args``; returns the exit code."""
    modes = [flag for flag in ("checkpoint", "flax", "offload") if getattr(args, flag, False)]
    if len(modes) > 1:
        return _error(f"--{modes[0]} and --{modes[1]} are separate benchmarks: choose one")
    if getattr(args, "params", None) is not None and not getattr(args, "offload", False):
        return _error("--params goes with --offload")
    if getattr(args, "offload", False):
        return run_offload(args)
    if getattr(args, "checkpoint", False):
        return run_checkpoint(args)
    if getattr(args, "flax", False):
        return run_flax(args)
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
