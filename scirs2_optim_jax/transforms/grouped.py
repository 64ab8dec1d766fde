"""Groups of leaves for the one-pass kernels: one kernel call per :data:`GROUP_SIZE` leaves.

XLA's compile time grows faster than linearly with the operand count of one call, so the
engine passes leaves to its kernels in groups (:func:`group_bounds`). ``GroupedAdamState``
is the state of the former ``state_layout="grouped"`` option (moments as one flat buffer
per group), kept importable for old code; the aliases no longer build it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

__all__ = ["GROUP_SIZE", "GroupedAdamState", "group_bounds"]

GROUP_SIZE = 256


class GroupedAdamState(NamedTuple):
    """Adam's state with the moments as one flat float32 buffer per group of leaves."""

    count: jax.Array
    mu: tuple[jax.Array, ...]
    nu: tuple[jax.Array, ...]


def group_bounds(num_leaves: int) -> list[tuple[int, int]]:
    """``[start, end)`` leaf ranges of the groups, in ``jax.tree.leaves`` order.

    Example:
        >>> group_bounds(520)
        [(0, 256), (256, 512), (512, 520)]
    """
    return [(s, min(s + GROUP_SIZE, num_leaves)) for s in range(0, num_leaves, GROUP_SIZE)]
