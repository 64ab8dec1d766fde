"""``scirs2-optim kernels build``: build the one-pass CPU kernels ahead of their first use.

The engine compiles its C++ kernels with the machine's compiler the first time a one-pass
step is traced (about 10 s, once per machine and jaxlib version; see
:mod:`scirs2_optim_jax.engine.kernels.build`). This command does it now, for images and
job setup scripts, and says where the library is.
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["add_parser", "run_kernels"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``kernels`` on a subparsers object (``handler`` set to :func:`run_kernels`).

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser(prog="scirs2-optim")
        >>> add_parser(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["kernels", "build"])
        >>> args.action, args.handler is run_kernels
        ('build', True)
    """
    parser = subparsers.add_parser(
        "kernels",
        help="build the one-pass CPU kernels ahead of their first use",
        description=(
            "Build (once per machine) and load the C++ kernels of the one-pass optimizer "
            "step, so that the first training step does not wait for the compiler. The "
            "library goes to $SCIRS2_OPTIM_KERNEL_CACHE/kernels, else "
            "~/.cache/scirs2_optim_jax/kernels."
        ),
    )
    parser.add_argument("action", choices=("build",), help="what to do: build")
    parser.set_defaults(handler=run_kernels)


def run_kernels(args: argparse.Namespace) -> int:
    """Builds and loads the kernels; prints where they are. 1 if they cannot be built here."""
    del args
    from scirs2_optim_jax.engine.kernels import build

    start = time.perf_counter()
    library = build.load_kernels()
    seconds = time.perf_counter() - start
    if library is None:
        print(
            "scirs2-optim kernels: the one-pass CPU kernels could not be built here (see the "
            "message above); the optimizers use their XLA path",
            file=sys.stderr,
        )
        return 1
    print(f"kernels ready in {seconds:.1f} s: {library.path}")
    print(f"targets: {', '.join(library.targets)}")
    return 0
