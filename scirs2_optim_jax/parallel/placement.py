"""Moving pytrees between the host and a mesh, in one process or many.

Arrays are placed with ``jax.make_array_from_callback``: every process holds the whole host
value and hands each of its devices the slice that device owns, which is how a multi-host
run feeds the same global batch to every process. Arrays come back to the host with
``multihost_utils.process_allgather`` when no single process can address all their shards.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scirs2_optim_jax.engine.memory import to_memory

__all__ = ["put_on_mesh", "to_host"]


def _put_leaf(x: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(x, jax.Array):
        if x.sharding == sharding:
            return x
        if not x.is_fully_addressable:
            return jax.device_put(x, sharding)
    host = to_host(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_on_mesh(tree: Any, mesh: Mesh, specs: Any) -> Any:
    """Places every leaf of ``tree`` on ``mesh`` with the ``PartitionSpec`` at its position.

    Args:
        tree: a pytree of arrays (numpy or jax); in a multi-process run every process passes
            the same global values.
        mesh: the device mesh.
        specs: a ``PartitionSpec`` for all leaves, or a pytree of them matching ``tree``.

    Returns:
        ``tree`` with every leaf a global ``jax.Array`` sharded as asked.

    Example:
        >>> import jax, numpy as np
        >>> from jax.sharding import PartitionSpec as P
        >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        >>> put_on_mesh({"x": np.ones((2, 3))}, mesh, P("data"))["x"].sharding.spec
        P('data',)
    """
    if isinstance(specs, PartitionSpec):
        return jax.tree.map(lambda x: _put_leaf(x, NamedSharding(mesh, specs)), tree)
    return jax.tree.map(
        lambda x, spec: _put_leaf(x, NamedSharding(mesh, spec)),
        tree,
        specs,
        is_leaf=lambda x: x is None,
    )


def to_host(x: Any) -> np.ndarray:
    """Returns the whole logical value of ``x`` as a numpy array on this host.

    Works for arrays sharded across processes (gathered with ``process_allgather``; every
    process must call it), replicated arrays (read from a local copy), and host values.

    Example:
        >>> import jax.numpy as jnp
        >>> to_host(jnp.arange(3)).tolist()
        [0, 1, 2]
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        # The gather is a device program: a state kept in host memory (offload) joins it
        # from device memory.
        x = to_memory(x, "device")
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
