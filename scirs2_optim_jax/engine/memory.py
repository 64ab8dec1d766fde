"""Where arrays live: host memory (``pinned_host``) or device memory, on the same devices.

Used by :func:`~scirs2_optim_jax.engine.offload` and the one-pass step of an offloaded
transformation.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scirs2_optim_jax import validation as v

__all__ = [
    "HOST_MEMORY_KIND",
    "StaticStructs",
    "host_device",
    "host_sharding",
    "is_traced",
    "place_tree",
    "to_memory",
]
HOST_MEMORY_KIND = "pinned_host"


def host_device() -> jax.Device:
    """This process's first CPU device: where ``compute="host"`` keeps the state and runs
    the update (the host's memory and cores, whatever the default backend is)."""
    return jax.local_devices(backend="cpu")[0]


@functools.cache
def host_sharding(axis_name: str = "host") -> NamedSharding:
    """The host device as a one-device mesh whose axis is ``axis_name``: where a host
    program's arrays are placed and the mesh it runs under (a collective over
    ``axis_name`` is then over one device, an identity). A placement on this mesh also
    drops the device mesh's sharding from the arrays' types.
    """
    return NamedSharding(Mesh(np.array([host_device()]), (axis_name,)), PartitionSpec())


def is_traced(tree: Any) -> bool:
    """Whether any leaf of ``tree`` is a tracer (the caller is being traced by ``jit``)."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def _default_kind(sharding: jax.sharding.Sharding) -> str | None:
    device = next(iter(sharding.device_set))
    return device.default_memory().kind


def to_memory(tree: Any, where: Literal["host", "device"]) -> Any:
    """``tree``'s arrays moved to host memory (``pinned_host``) or device memory, on the
    same devices with the same sharding. Works on concrete arrays and inside ``jit`` and
    ``shard_map`` (where it is ``jax.device_put`` to a ``jax.memory.Space``).

    Example:
        >>> import jax.numpy as jnp
        >>> to_memory({"m": jnp.zeros(2)}, "host")["m"].sharding.memory_kind
        'pinned_host'
    """
    v.check_one_of("to_memory", "where", where, ("host", "device"))
    if is_traced(tree):
        space = jax.memory.Space.Host if where == "host" else jax.memory.Space.Device
        return jax.tree.map(lambda x: jax.device_put(x, space), tree)
    tree = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), tree)

    def target(x: jax.Array) -> jax.sharding.Sharding:
        kind = HOST_MEMORY_KIND if where == "host" else _default_kind(x.sharding)
        return x.sharding.with_memory_kind(kind)

    return place_tree(tree, jax.tree.map(target, tree))


def _placed(x: Any, sharding: jax.sharding.Sharding) -> bool:
    """Whether ``x`` already lives where ``sharding`` says: the same sharding, or both whole
    on the same single device in the same memory."""
    current = getattr(x, "sharding", None)
    if current is None:
        return False
    if current == sharding:
        return True
    return (
        current.device_set == sharding.device_set
        and len(current.device_set) == 1
        and current.memory_kind == sharding.memory_kind
        and current.is_fully_replicated
        and sharding.is_fully_replicated
    )


def place_tree(tree: Any, shardings: Any) -> Any:
    """``tree`` with every array placed as ``shardings`` (one sharding, or a tree of them
    matching ``tree``) says, in one batched transfer; arrays already there are passed as
    they are (a per-array ``device_put`` costs tens of microseconds of Python even when
    nothing moves).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = {"w": jnp.ones(2)}
        >>> place_tree(x, host_sharding())["w"] is x["w"]  # already on the host's CPU
        True
    """
    leaves, treedef = jax.tree.flatten(tree)
    if isinstance(shardings, jax.sharding.Sharding):
        targets = [shardings] * len(leaves)
    else:
        targets = treedef.flatten_up_to(shardings)
    todo = [i for i, (x, s) in enumerate(zip(leaves, targets, strict=True)) if not _placed(x, s)]
    if todo:
        moved = jax.device_put([leaves[i] for i in todo], [targets[i] for i in todo])
        for i, x in zip(todo, moved, strict=True):
            leaves[i] = x
    return jax.tree.unflatten(treedef, leaves)


class StaticStructs:
    """A tree's shapes and dtypes (``.tree``, of ``jax.ShapeDtypeStruct``), hashable: a
    static argument of a jitted function that needs only them.

    Example:
        >>> import jax.numpy as jnp
        >>> StaticStructs({"w": jnp.ones(2)}) == StaticStructs({"w": jnp.zeros(2)})
        True
    """

    def __init__(self, tree: Any) -> None:
        self.tree = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), tree
        )
        leaves, treedef = jax.tree.flatten(self.tree)
        self._key = (treedef, tuple((s.shape, str(s.dtype)) for s in leaves))

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StaticStructs) and self._key == other._key
