"""How an update sees its leaves: whole, or as ZeRO slices of larger logical leaves.

Most transformations are element-wise and need not care. A transformation whose math
depends on a leaf's shape (Muon's orthogonalisation of matrices, Adafactor's row and column
statistics, a root mean square over a leaf) asks :func:`current_layout`. ``None`` means the
leaves are whole. Otherwise a :class:`ShardLayout` describes each leaf as its logical
shape, flattened, zero-padded and split over a mesh axis, of which this device holds one
slice; it tells where that slice lies in the logical leaf, completes a sum over the
slices, and runs a function on whole leaves. The ZeRO wrappers of
:mod:`scirs2_optim_jax.parallel` install one while they initialise or update an optimizer
on slices; nothing else does.

The helpers below (:func:`logical_shapes`, :func:`leaf_sum`, :func:`map_whole_leaves`)
work in both cases, so a transformation written with them is exact on whole leaves and on
ZeRO slices alike.

Example:
    >>> import jax.numpy as jnp
    >>> current_layout() is None
    True
    >>> logical_shapes({"w": jnp.ones((2, 3))})["w"].shape
    (2, 3)
"""

from __future__ import annotations

import abc
import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "ShardLayout",
    "current_layout",
    "is_masked",
    "leaf_sum",
    "logical_mask",
    "logical_shapes",
    "map_whole_leaves",
    "use_layout",
]


def is_masked(x: Any) -> bool:
    """True for optax's ``MaskedNode``: a leaf position a masked transformation skips."""
    return isinstance(x, optax.MaskedNode)


class ShardLayout(abc.ABC):
    """The leaves of an update are slices of logical leaves split over ``axis_name``.

    Each logical leaf of ``size`` elements is flattened, zero-padded to ``N * chunk``
    elements (``chunk = ceil(size / N)``) and split in ``N`` slices; the update sees this
    device's slice, a vector of ``chunk`` elements.

    Attributes:
        shapes: a pytree of ``jax.ShapeDtypeStruct`` with the parameters' structure: the
            logical leaves.
        axis_name: the mesh axis the slices are split over.
    """

    def __init__(self, shapes: Any, axis_name: str) -> None:
        self.shapes = shapes
        self.axis_name = axis_name

    @abc.abstractmethod
    def element_indices(self, x: jax.Array) -> jax.Array:
        """Flat (row-major) indices in the logical leaf of the elements of the slice ``x``;
        indices ``>= size`` are padding."""

    @abc.abstractmethod
    def sum(self, x: Any) -> Any:
        """``x`` (a pytree of per-slice partial sums) summed over all slices."""

    def segment_sum(self, values: jax.Array, segments: jax.Array, num_segments: int) -> jax.Array:
        """Sums ``values`` (a slice) by ``segments`` (their segment ids) over all slices:
        a vector of ``num_segments`` sums, the same on every device."""
        out = jnp.zeros(num_segments, values.dtype).at[segments].add(values, mode="drop")
        return self.sum(out)

    def take(self, table: jax.Array, indices: jax.Array) -> jax.Array:
        """``table[indices]`` for a whole (replicated) ``table`` and per-element ``indices``
        of a slice: a slice."""
        return table[indices]

    @abc.abstractmethod
    def map_whole(
        self,
        fns: Sequence[Callable[[jax.Array], jax.Array]],
        slices: Sequence[jax.Array],
        shapes: Sequence[tuple[int, ...]],
        costs: Sequence[float] | None = None,
    ) -> list[jax.Array]:
        """``fns[i]`` applied to the whole logical leaf of ``slices[i]``, returned as slices.

        Each function runs once over the mesh (not once per device) and must return an
        array of the leaf's shape and dtype. ``costs`` (e.g. flops) balance the work.
        """


_STATE = threading.local()


def current_layout() -> ShardLayout | None:
    """The layout installed by :func:`use_layout` in this thread, or None (whole leaves).

    Example:
        >>> current_layout() is None
        True
    """
    stack = getattr(_STATE, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def use_layout(layout: ShardLayout | None) -> Iterator[None]:
    """Installs ``layout`` while the block runs (None: whole leaves), for this thread.

    Used by the ZeRO wrappers around ``init`` and ``update``; the transformations read it
    when they are traced.

    Example:
        >>> with use_layout(None):
        ...     current_layout() is None
        True
    """
    if layout is not None and not isinstance(layout, ShardLayout):
        raise TypeError(f"use_layout: layout must be a ShardLayout or None, got {layout!r}")
    stack = getattr(_STATE, "stack", None)
    if stack is None:
        stack = _STATE.stack = []
    stack.append(layout)
    try:
        yield
    finally:
        stack.pop()


def logical_shapes(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` of the logical leaf behind each leaf of ``tree``.

    On whole leaves that is the leaf's own shape and dtype; under a :class:`ShardLayout`
    it is the shape of the parameter the slice belongs to (``tree`` must have the
    parameters' structure). ``MaskedNode`` positions (leaves a masked transformation skips)
    stay ``MaskedNode``.

    Example:
        >>> import jax.numpy as jnp
        >>> logical_shapes({"b": jnp.ones(3, jnp.bfloat16)})["b"]
        ShapeDtypeStruct(shape=(3,), dtype=bfloat16)
    """
    layout = current_layout()
    if layout is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), tree)
    try:
        return jax.tree.map(
            lambda x, s: x if is_masked(x) else s, tree, layout.shapes, is_leaf=is_masked
        )
    except ValueError as err:
        raise ValueError(
            "logical_shapes: under a ZeRO layout a shape-dependent transformation must see "
            f"trees with the parameters' structure: {err}"
        ) from None


def logical_mask(mask: Any) -> Any:
    """``mask`` unchanged, or, when it is a callable, one called with :func:`logical_shapes`.

    A mask callable often selects leaves by rank
    (``lambda p: jax.tree.map(lambda x: x.ndim > 1, p)``); under ZeRO the leaves it would be
    given are 1-D slices, so it is given shape/dtype structs of the logical leaves instead.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> mask = logical_mask(lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
        >>> mask({"w": jnp.ones((2, 2)), "b": jnp.ones(2)})
        {'b': False, 'w': True}
    """
    if callable(mask):
        return lambda params: mask(logical_shapes(params))
    return mask


def leaf_sum(x: jax.Array, size: int) -> jax.Array:
    """The sum of all elements of the logical leaf of ``x`` (``size`` elements), as float32.

    On a ZeRO slice the padding is excluded and the partial sums of all slices are added.

    Example:
        >>> import jax.numpy as jnp
        >>> float(leaf_sum(jnp.array([1.0, 2.0, 3.0]), 3))
        6.0
    """
    layout = current_layout()
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if layout is None:
        return jnp.sum(x)
    valid = layout.element_indices(x) < size
    return layout.sum(jnp.sum(jnp.where(valid, x, jnp.zeros_like(x))))


def map_whole_leaves(
    fns: Sequence[Callable[[jax.Array], jax.Array]],
    leaves: Sequence[jax.Array],
    shapes: Sequence[tuple[int, ...]],
    costs: Sequence[float] | None = None,
) -> list[jax.Array]:
    """``fns[i]`` applied to the whole logical leaf of ``leaves[i]`` (of shape ``shapes[i]``).

    On whole leaves this is a plain loop. Under a :class:`ShardLayout` the leaves are
    slices: each is sent to one device, which computes the whole-leaf result once, and the
    result comes back as slices (:meth:`ShardLayout.map_whole`); ``costs`` (e.g. flops,
    default: the sizes) balance the devices' work.

    Example:
        >>> import jax.numpy as jnp
        >>> map_whole_leaves([lambda m: m.T @ m], [jnp.eye(2)], [(2, 2)])[0].tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    if not fns:
        return []
    layout = current_layout()
    if layout is None:
        return [fn(x) for fn, x in zip(fns, leaves, strict=True)]
    for x, shape in zip(leaves, shapes, strict=True):
        if np.ndim(x) != 1:
            raise ValueError(
                f"map_whole_leaves: under a ZeRO layout leaves are 1-D slices, got shape "
                f"{np.shape(x)} for a leaf of logical shape {tuple(shape)}"
            )
    costs = list(costs) if costs is not None else [float(math.prod(s)) for s in shapes]
    return layout.map_whole(list(fns), list(leaves), [tuple(s) for s in shapes], costs)
