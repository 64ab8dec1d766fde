"""The ZeRO memory layout: every parameter-shaped leaf flat, zero-padded and split N ways.

A leaf of ``size`` elements becomes a vector of ``N * ceil(size / N)`` elements (fewer than
``N`` of them padding zeros at the end) split along the data axis, so each of the ``N``
devices holds ``ceil(size / N)`` elements. Optimizer state keeps its tree structure; only
the leaves inside parameter-shaped subtrees (Adam's ``mu`` and ``nu``, a momentum trace,
...) take this layout. Everything else (step counts, schedule state) stays replicated.

A subtree is parameter-shaped when its tree structure equals the parameters' structure:
this is how optax's own ``tree_map_params`` recognises moments, and it needs no help from
the optimizer. ``optax.MaskedNode()`` may stand in for some of its leaves (the state of a
masked or partitioned transformation, or Adafactor's, keeps no moment there). When the
parameters are a single array, every state leaf with a dimension is taken to be a moment.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from scirs2_optim_jax.transforms.shard_layout import is_masked

__all__ = [
    "is_sharded_leaf_tree",
    "map_state",
    "padded_size",
    "zero_chunk_size",
]


def zero_chunk_size(size: int, num_shards: int) -> int:
    """Elements of one leaf that each of ``num_shards`` devices holds: ``ceil(size / N)``.

    Args:
        size: number of elements of the logical leaf, >= 0.
        num_shards: size of the data axis, >= 1.

    Returns:
        ``ceil(size / num_shards)``; the padding is ``num_shards * chunk - size < num_shards``.

    Example:
        >>> zero_chunk_size(10, 8), zero_chunk_size(16, 8), zero_chunk_size(1, 4)
        (2, 2, 1)
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, (int, np.integer)):
        raise TypeError(f"zero_chunk_size: num_shards must be an integer, got {num_shards!r}")
    if num_shards < 1:
        raise ValueError(f"zero_chunk_size: num_shards must be an integer >= 1, got {num_shards}")
    if size < 0:
        raise ValueError(f"zero_chunk_size: size must be an integer >= 0, got {size}")
    return -(-int(size) // int(num_shards))


def padded_size(size: int, num_shards: int) -> int:
    """Length of the flat, padded vector of one leaf: ``num_shards * ceil(size / N)``.

    Example:
        >>> padded_size(10, 8), padded_size(16, 8)
        (16, 16)
    """
    return num_shards * zero_chunk_size(size, num_shards)


def _leaf_size(leaf: Any) -> int:
    return math.prod(np.shape(leaf))


def is_sharded_leaf_tree(params_like: Any) -> Callable[[Any], bool]:
    """Returns a predicate that tells parameter-shaped subtrees of a state from the rest.

    Used as ``is_leaf`` when walking an optimizer state: a node is a stop point when its
    structure is that of ``params_like``.

    Example:
        >>> import jax.numpy as jnp
        >>> pred = is_sharded_leaf_tree({"w": jnp.zeros(3)})
        >>> pred({"w": jnp.ones(2)}), pred(jnp.zeros([]))
        (True, False)
    """
    treedef = jax.tree.structure(params_like)
    if treedef.num_nodes == 1:
        return lambda node: False

    def is_moments(node: Any) -> bool:
        if isinstance(node, jax.Array | np.ndarray) or is_masked(node):
            return False
        return jax.tree.structure(node, is_leaf=is_masked) == treedef

    return is_moments


def map_state(
    state: Any,
    params_like: Any,
    on_moment: Callable[[str, Any, Any], Any],
    on_other: Callable[[str, Any], Any],
    *,
    single_leaf_is_moment: Callable[[Any, Any], bool] | None = None,
) -> Any:
    """Maps ``on_moment(path, leaf, param)`` over moment leaves, ``on_other(path, leaf)`` elsewhere.

    Args:
        state: an optimizer state (any pytree).
        params_like: the parameters (arrays or shape/dtype structs) the state was built for.
        on_moment: called with the leaf's tree path (a string), a moment leaf and the
            parameter leaf at the same position.
        on_other: called with the tree path and every other leaf (counts, schedule state).
        single_leaf_is_moment: when ``params_like`` is a single array, decides from the
            state leaf and that array whether the leaf is a moment (default: it has a
            dimension).

    Returns:
        The mapped state, same structure.

    Example:
        >>> import jax.numpy as jnp
        >>> state = (jnp.zeros([]), {"w": jnp.ones(3)})
        >>> map_state(state, {"w": jnp.ones(3)}, lambda *a: "moment", lambda *a: "other")
        ('other', {'w': 'moment'})
    """
    keystr = jax.tree_util.keystr
    treedef = jax.tree.structure(params_like)
    if treedef.num_nodes == 1:
        (param,) = jax.tree.leaves(params_like)
        decide = single_leaf_is_moment or (lambda leaf, _: np.ndim(leaf) >= 1)
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: (
                on_moment(keystr(path), leaf, param)
                if decide(leaf, param)
                else on_other(keystr(path), leaf)
            ),
            state,
        )
    is_moments = is_sharded_leaf_tree(params_like)

    def visit(path: tuple, node: Any) -> Any:
        if is_moments(node):
            return jax.tree_util.tree_map_with_path(
                lambda sub, leaf, param: (
                    leaf if is_masked(leaf) else on_moment(keystr(path + sub), leaf, param)
                ),
                node,
                params_like,
                is_leaf=is_masked,
            )
        return on_other(keystr(path), node)

    return jax.tree_util.tree_map_with_path(visit, state, is_leaf=is_moments)
