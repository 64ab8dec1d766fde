"""Sharding-aware reductions: tree and leaf norms that stay correct when leaves are shards.

Inside ``jax.shard_map`` (or ``pmap``) a transform that sees only a slice of each leaf
computes a partial sum of squares; with ``axis_name`` set, these functions ``psum`` the
partial sums across that mesh axis, so every device gets the norm of the whole logical
array. With ``axis_name=None`` they are plain local reductions.

Sums of squares are accumulated in float32 (or wider, for float64 leaves) so that bf16
gradients do not lose the norm to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from scirs2_optim_jax.transforms.moments import compute_dtype

AxisName = str | Sequence[str] | None

__all__ = [
    "global_norm",
    "leaf_norm",
    "leaf_sum_of_squares",
    "tree_sum_of_squares",
]


def _accumulation_dtype(x: jax.Array) -> jnp.dtype:
    return compute_dtype(x.dtype, jnp.float32)


def leaf_sum_of_squares(
    x: jax.Array,
    axis_name: AxisName = None,
    axis: int | tuple[int, ...] | None = None,
    keepdims: bool = False,
) -> jax.Array:
    """Sum of ``|x|**2`` over ``axis`` (all axes by default), summed across ``axis_name``.

    Example:
        >>> import jax.numpy as jnp
        >>> float(leaf_sum_of_squares(jnp.array([3.0, 4.0])))
        25.0
    """
    x = x.astype(_accumulation_dtype(x))
    partial = jnp.sum(jnp.real(x * jnp.conj(x)), axis=axis, keepdims=keepdims)
    if axis_name is not None:
        partial = jax.lax.psum(partial, axis_name)
    return partial


def leaf_norm(x: jax.Array, axis_name: AxisName = None) -> jax.Array:
    """L2 norm of one leaf (of the whole logical array when sharded over ``axis_name``).

    Example:
        >>> import jax.numpy as jnp
        >>> float(leaf_norm(jnp.array([3.0, 4.0])))
        5.0
    """
    return jnp.sqrt(leaf_sum_of_squares(x, axis_name))


def tree_sum_of_squares(tree: Any, axis_name: AxisName = None) -> jax.Array:
    """Sum of squares over every leaf of ``tree``, with a single ``psum`` when sharded.

    Example:
        >>> import jax.numpy as jnp
        >>> float(tree_sum_of_squares({"a": jnp.ones(3), "b": 2 * jnp.ones(1)}))
        7.0
    """
    leaves = [leaf for leaf in jax.tree.leaves(tree) if leaf is not None]
    if not leaves:
        return jnp.zeros([], jnp.float32)
    total = sum(leaf_sum_of_squares(leaf) for leaf in leaves)
    if axis_name is not None:
        total = jax.lax.psum(total, axis_name)
    return total


def global_norm(tree: Any, axis_name: AxisName = None) -> jax.Array:
    """L2 norm of a whole tree, equal to the unsharded norm when leaves are shards.

    Example:
        >>> import jax.numpy as jnp
        >>> float(global_norm({"a": jnp.array([3.0]), "b": jnp.array([4.0])}))
        5.0
    """
    return jnp.sqrt(tree_sum_of_squares(tree, axis_name))
