"""The grouped state layout of Adam's moments: one flat buffer per group of leaves.

``adam``/``adamw``/``lamb`` with ``state_layout="grouped"`` keep ``mu`` and ``nu`` as one
flat float32 buffer per group of :data:`GROUP_SIZE` leaves (the group's leaves back to back
in ``jax.tree.leaves`` order) instead of one array per leaf: far fewer arrays per step for
trees of many leaves. The canonical layout, which checkpoints store, is the chain's own
``ScaleByAdamState``; :func:`to_canonical` and :func:`from_canonical` convert.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.transforms.adaptive import ScaleByAdamState

__all__ = [
    "GROUP_SIZE",
    "GroupedAdamState",
    "from_canonical",
    "group_bounds",
    "grouped_layout",
    "to_canonical",
]

GROUP_SIZE = 256


class GroupedAdamState(NamedTuple):
    """Adam's state with the moments in the grouped layout (``state_layout="grouped"``)."""

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


def _flat_groups(leaves: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
    return tuple(
        jnp.concatenate([jnp.ravel(x) for x in leaves[start:end]])
        for start, end in group_bounds(len(leaves))
    )


def _split_groups(flats: Sequence[jax.Array], like: Sequence[Any]) -> list[jax.Array]:
    leaves = []
    for (start, end), flat in zip(group_bounds(len(like)), flats, strict=True):
        offset = 0
        for x in like[start:end]:
            size = int(np.prod(jnp.shape(x)))
            leaves.append(flat[offset : offset + size].reshape(jnp.shape(x)))
            offset += size
    return leaves


def to_canonical(state: tuple[Any, ...], params: Any) -> tuple[Any, ...]:
    """The chain's state (``ScaleByAdamState`` first) from a grouped one; others unchanged.

    Example:
        >>> import jax.numpy as jnp
        >>> from scirs2_optim_jax.optimizers import adam
        >>> params = {"a": jnp.ones(2), "b": jnp.ones(3)}
        >>> state = adam(0.1, state_layout="grouped").init(params)
        >>> to_canonical(state, params)[0].mu["b"].shape
        (3,)
    """
    adam_state = state[0]
    if not isinstance(adam_state, GroupedAdamState):
        return state
    leaves, treedef = jax.tree.flatten(params)
    mu = treedef.unflatten(_split_groups(adam_state.mu, leaves))
    nu = treedef.unflatten(_split_groups(adam_state.nu, leaves))
    return (ScaleByAdamState(count=adam_state.count, mu=mu, nu=nu), *state[1:])


def from_canonical(state: tuple[Any, ...], params: Any, name: str = "adam") -> tuple[Any, ...]:
    """The grouped state from the chain's own (``ScaleByAdamState`` first).

    Raises:
        ValueError: the moments do not match ``params`` (naming ``name`` and the tree path).
    """
    adam_state = state[0]
    if isinstance(adam_state, GroupedAdamState):
        return state
    v.check_tree_matches(name, adam_state.mu, params, tree_name="mu", ref_name="params")
    mu = _flat_groups(jax.tree.leaves(adam_state.mu))
    nu = _flat_groups(jax.tree.leaves(adam_state.nu))
    return (GroupedAdamState(count=adam_state.count, mu=mu, nu=nu), *state[1:])


def _all_float32(tree: Any) -> bool:
    return all(jnp.result_type(leaf) == jnp.float32 for leaf in jax.tree.leaves(tree))


def grouped_layout(
    name: str, chain: optax.GradientTransformationExtraArgs
) -> optax.GradientTransformationExtraArgs:
    """``chain`` (whose first part is ``scale_by_adam``) keeping its moments grouped.

    ``update`` converts to the chain's layout, runs it, and converts back: correct anywhere,
    and fast only where the one-pass engine runs the step on the grouped buffers themselves.

    Raises:
        ValueError: at ``init``, parameters that are not all float32; at ``update``, no
            ``params`` (the layout needs their shapes).
    """

    def init(params: optax.Params) -> tuple[Any, ...]:
        if not _all_float32(params):
            raise ValueError(
                f"{name}: state_layout='grouped' needs float32 params; "
                "use state_layout='tree' for other dtypes"
            )
        return from_canonical(chain.init(params), params, name)

    def update(
        grads: optax.Updates, state: tuple[Any, ...], params: optax.Params | None = None, **extra
    ) -> tuple[optax.Updates, tuple[Any, ...]]:
        if params is None:
            raise ValueError(f"{name}: update needs params with state_layout='grouped'")
        updates, canonical = chain.update(grads, to_canonical(state, params), params, **extra)
        return updates, from_canonical(canonical, params, name)

    return optax.GradientTransformationExtraArgs(init, update)
