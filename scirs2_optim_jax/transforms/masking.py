"""Static per-leaf masks: choose, leaf by leaf, between a transformed and an untouched tree.

A mask is ``None`` (everything selected), a bool, a pytree of bools (a prefix of the
parameter tree is enough), or a callable that builds such a tree from the parameters.
The choice is made at trace time, so an unselected leaf costs nothing in the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Mask = bool | Any | Callable[[Any], Any] | None


def select_by_mask(mask: Mask, params: Any, selected: Any, unselected: Any) -> Any:
    """Leaves of ``selected`` where ``mask`` is True, of ``unselected`` elsewhere.

    Example:
        >>> import jax.numpy as jnp
        >>> select_by_mask({"a": True, "b": False}, None, {"a": 1, "b": 2}, {"a": 0, "b": 0})
        {'a': 1, 'b': 0}
    """
    if mask is None or mask is True:
        return selected
    if mask is False:
        return unselected
    mask_tree = mask(params) if callable(mask) else mask
    return jax.tree.map(
        lambda m, new, old: new if m else old,
        mask_tree,
        selected,
        unselected,
        is_leaf=lambda x: x is None,
    )


def mask_leaves(mask: Mask, params: Any, tree: Any) -> list[bool]:
    """The mask as one bool per leaf of ``tree``, in ``jax.tree.leaves`` order.

    Example:
        >>> mask_leaves({"a": True, "b": False}, None, {"a": [1, 2], "b": 3})
        [True, True, False]
    """
    if mask is None or mask is True:
        return [True] * len(jax.tree.leaves(tree))
    if mask is False:
        return [False] * len(jax.tree.leaves(tree))
    mask_tree = mask(params) if callable(mask) else mask
    full = jax.tree.map(
        lambda m, sub: jax.tree.map(lambda _: bool(m), sub),
        mask_tree,
        tree,
        is_leaf=lambda x: x is None,
    )
    return jax.tree.leaves(full)
