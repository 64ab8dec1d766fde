"""Argument parsing shared by the subcommands: the parser class and option types.

Standard library only: ``scirs2-optim --help`` builds every subcommand's parser without
importing JAX.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

__all__ = ["Parser", "count", "int_in_range", "positive_float"]


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line and a pointer to ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n(see '{self.prog} --help')\n")


def _number(text: str, kind: Callable[[str], float | int], expected: str) -> float | int:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None


def positive_float(text: str) -> float:
    """Option type: a finite number > 0.

    Example:
        >>> positive_float("3e-3")
        0.003
        >>> positive_float("nan")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: must be a finite number > 0, got nan
    """
    expected = "a finite number > 0"
    value = float(_number(text, float, expected))
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
    return value


def int_in_range(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """Option type: an integer in ``[minimum, maximum]`` (no upper bound for None).

    Example:
        >>> int_in_range(1, 10)("7")
        7
        >>> int_in_range(1)("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: must be an integer >= 1, got 0
    """
    expected = f"an integer >= {minimum}"
    if maximum is not None:
        expected = f"an integer in [{minimum}, {maximum}]"

    def parse(text: str) -> int:
        value = int(_number(text, int, expected))
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
        return value

    return parse


def count(text: str) -> int:
    """Option type: a count >= 1, also written ``7e9`` or ``1_000``.

    Example:
        >>> count("7e9"), count("1_000")
        (7000000000, 1000)
    """
    try:
        value = int(float(text)) if "e" in text.lower() else int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value
