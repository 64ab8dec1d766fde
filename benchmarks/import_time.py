"""``python -m benchmarks.import_time [--rounds N]``: what importing the package costs.

Each round starts fresh interpreters, in turn, for ``import optax``, ``import
scirs2_optim_jax`` (then ``so.adamw(1e-3)``), ``scirs2-optim --help`` and ``scirs2-optim
train --steps x`` (a bad argument, rejected by argparse); the order rotates every round so
that no command always runs first on a cold file cache. Prints the median wall time of each
and the ratios to ``import optax``, all from the same run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "import optax": [sys.executable, "-c", "import optax"],
    "import scirs2_optim_jax; so.adamw(1e-3)": [
        sys.executable,
        "-c",
        "import scirs2_optim_jax as so; so.adamw(1e-3)",
    ],
    "scirs2-optim --help": [sys.executable, "-m", "scirs2_optim_jax", "--help"],
    "scirs2-optim train --steps x": [
        sys.executable,
        "-m",
        "scirs2_optim_jax",
        "train",
        "--steps",
        "x",
    ],
}


def _time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, check=False)  # noqa: S603  fixed argv
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    names = list(COMMANDS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(2):  # warm the file cache once for every command
        for name in names:
            _time(COMMANDS[name])
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(_time(COMMANDS[name]))
    base = statistics.median(times["import optax"])
    print(f"{'command':42s} {'median s':>9s} {'/ optax':>8s}   ({args.rounds} rounds)")
    for name in names:
        median = statistics.median(times[name])
        print(f"{name:42s} {median:9.3f} {median / base:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
