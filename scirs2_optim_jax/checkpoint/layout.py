"""Moving a train state between its in-memory layout and the canonical one on disk.

A checkpoint always stores the canonical layout: every array at its full logical shape, on
the host, whatever sharding or padding it had in memory, so that it restores onto any sharding,
any number of processes or one device. Plain sharded ``jax.Array`` leaves need nothing more
than a gather, which :func:`to_host` does, across processes too. States that are laid out
differently in memory, such as ZeRO's padded and flattened optimizer shards, pass a
:class:`Layout`: a pair of functions to and from the canonical tree.

Where an array lives in memory is not part of the layout either: an optimizer state kept in
host memory (:func:`~scirs2_optim_jax.offload`: the ``pinned_host`` memory kind, or the
host's CPU device) is stored exactly as the same state in device memory, and a restore
places it where its target (or its optimizer, ``CheckpointManager.restore(optimizer=)``)
keeps it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from scirs2_optim_jax.checkpoint import treespec as ts
from scirs2_optim_jax.engine import to_memory
from scirs2_optim_jax.parallel.placement import to_host as gather_to_host

__all__ = [
    "Layout",
    "as_layout",
    "from_host",
    "host_arrays",
    "in_host_memory",
    "opt_state_layout",
    "to_host",
]


@dataclass(frozen=True)
class Layout:
    """Converts a whole saved state to and from its canonical (logical, unsharded) tree.

    Attributes:
        to_canonical: in-memory state -> canonical state; applied by ``save``.
        from_canonical: canonical state -> in-memory state; applied by ``restore`` after the
            checkpoint has been verified and rebuilt.

    Example:
        >>> import numpy as np
        >>> halve = Layout(lambda s: {"w": s["w"][:2]}, lambda s: {"w": np.pad(s["w"], (0, 2))})
        >>> halve.to_canonical({"w": np.arange(4)})["w"].tolist()
        [0, 1]
    """

    to_canonical: Callable[[Any], Any]
    from_canonical: Callable[[Any], Any]

    def __post_init__(self) -> None:
        for name in ("to_canonical", "from_canonical"):
            if not callable(getattr(self, name)):
                raise TypeError(f"Layout: {name} must be callable, got {getattr(self, name)!r}")


def as_layout(fn: str, layout: Any) -> Layout | None:
    """Accepts None, a :class:`Layout`, or a ``(to_canonical, from_canonical)`` pair."""
    if layout is None or isinstance(layout, Layout):
        return layout
    if isinstance(layout, tuple) and len(layout) == 2:
        return Layout(*layout)
    raise TypeError(
        f"{fn}: layout must be None, a Layout or a (to_canonical, from_canonical) pair, "
        f"got {layout!r}"
    )


def opt_state_layout(
    to_canonical: Callable[[Any], Any], from_canonical: Callable[[Any], Any]
) -> Layout:
    """A :class:`Layout` that converts only the ``opt_state`` field of a ``CheckpointState``.

    For ZeRO, whose optimizer state is sharded and padded in memory while the parameters are
    not, e.g. ``opt_state_layout(lambda s: zero_state_to_canonical(s, params),
    lambda s: zero_state_from_canonical(s, params, mesh))``.

    Args:
        to_canonical: in-memory optimizer state -> canonical optimizer state.
        from_canonical: canonical optimizer state -> in-memory optimizer state.

    Returns:
        A :class:`Layout` over the whole state that leaves the other fields as they are.

    Example:
        >>> from scirs2_optim_jax.checkpoint import CheckpointState
        >>> layout = opt_state_layout(lambda s: s * 2, lambda s: s // 2)
        >>> layout.to_canonical(CheckpointState(params=1, opt_state=5)).opt_state
        10
    """
    for name, value in (("to_canonical", to_canonical), ("from_canonical", from_canonical)):
        if not callable(value):
            raise TypeError(f"opt_state_layout: {name} must be callable, got {value!r}")

    def convert(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def apply(state: Any) -> Any:
            if not hasattr(state, "opt_state") or not hasattr(state, "_replace"):
                raise TypeError(
                    "opt_state_layout: the state must be a CheckpointState (a NamedTuple with "
                    f"an opt_state field), got {type(state).__name__}"
                )
            return state._replace(opt_state=fn(state.opt_state))

        return apply

    return Layout(convert(to_canonical), convert(from_canonical))


def in_host_memory(leaf: Any) -> bool:
    """Whether ``leaf`` is a ``jax.Array`` in a host memory kind of its devices
    (``pinned_host``, ``unpinned_host``), as an offloaded optimizer state is.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jnp.ones(2)
        >>> in_host_memory(x), in_host_memory(jax.device_put(x, x.sharding.with_memory_kind(
        ...     "pinned_host")))
        (False, True)
    """
    if not isinstance(leaf, jax.Array):
        return False
    kind = leaf.sharding.memory_kind
    return kind is not None and kind.endswith("_host")


def to_host(path: str, leaf: Any) -> np.ndarray:
    """Returns the host array of one leaf at its full logical shape (typed keys as key data),
    safe to write while the caller goes on.

    A ``jax.Array`` is immutable: when it already lives in host memory (the CPU backend) the
    result references its buffer, with no copy (JAX then declines to donate that buffer to a
    computation while the reference lives, so donating it stays safe), and an accelerator's
    array is copied to the host. A sharded array is gathered, also from other processes in a
    multi-process run (so every process must call it, in the same order); a replicated one
    is read from a local replica. A numpy array, which the caller may change in place, is
    copied. An array in host memory (an offloaded optimizer state) is read from there; one
    that must be gathered from other processes first is moved to device memory for the
    gather (one leaf at a time), so that the collective runs where collectives run.

    Example:
        >>> import jax.numpy as jnp
        >>> to_host("['w']", jnp.ones(3)).tolist(), to_host("['n']", 7).dtype.name
        ([1.0, 1.0, 1.0], 'int64')
    """
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if not leaf.is_fully_addressable:
            # A multi-process array: a replica is read from this process's devices, a
            # sharded one is gathered from every process (a collective: all of them save).
            if in_host_memory(leaf) and not leaf.sharding.is_fully_replicated:
                leaf = to_memory(leaf, "device")
            return np.asarray(gather_to_host(leaf))
        if len(leaf.sharding.device_set) == 1:
            # A fresh view of the one buffer: a host copy numpy conversion may cache stays
            # with it, not with the caller's array.
            return np.asarray(leaf.addressable_data(0))
        return np.asarray(leaf)
    if isinstance(leaf, np.ndarray):
        return np.array(leaf, copy=True)
    if isinstance(leaf, np.generic):
        return np.asarray(leaf).copy()
    if isinstance(leaf, bool):
        return np.asarray(leaf, dtype=np.bool_)
    if isinstance(leaf, int):
        return np.asarray(leaf, dtype=np.int64)
    if isinstance(leaf, float):
        return np.asarray(leaf, dtype=np.float64)
    raise TypeError(f"cannot checkpoint the leaf at {path}: a {type(leaf).__name__}")


def host_arrays(paths: list[str], leaves: list[Any]) -> list[np.ndarray]:
    """:func:`to_host` of every leaf, with all device-to-host transfers started first.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> [a.tolist() for a in host_arrays(["['a']", "['b']"], [jnp.ones(2), np.zeros(1)])]
        [[1.0, 1.0], [0.0]]
    """
    for leaf in leaves:
        # Arrays in an accelerator's memory; those in its host memory kinds are read in place.
        off_host = (
            isinstance(leaf, jax.Array) and leaf.is_fully_addressable and not in_host_memory(leaf)
        )
        if off_host and any(d.platform != "cpu" for d in leaf.sharding.device_set):
            leaf.copy_to_host_async()
    return [to_host(path, leaf) for path, leaf in zip(paths, leaves, strict=True)]


def _sharding_of(target: Any) -> Any:
    """The target leaf's sharding, if it names real devices (not an abstract mesh)."""
    sharding = getattr(target, "sharding", None)
    if not isinstance(sharding, jax.sharding.Sharding):
        return None
    mesh = getattr(sharding, "mesh", None)
    if isinstance(mesh, jax.sharding.AbstractMesh):
        return None
    return sharding


def _with_memory_kind(where: Any, kind: str | None) -> Any:
    """``where`` (a sharding, a device or None for the default device) in memory ``kind``."""
    if kind is None:
        return where
    if isinstance(where, jax.sharding.Sharding):
        return where if where.memory_kind == kind else where.with_memory_kind(kind)
    device = where if isinstance(where, jax.Device) else jax.local_devices()[0]
    return jax.sharding.SingleDeviceSharding(device, memory_kind=kind)


def from_host(
    value: np.ndarray,
    spec: ts.LeafSpec,
    kind: str,
    target: Any = None,
    placement: Any = None,
    *,
    memory: str | jax.Device | None = None,
) -> Any:
    """Turns a verified host array back into a leaf of ``kind``, placed where asked.

    Args:
        value: the array as read from the checkpoint.
        spec: what the checkpoint recorded about the leaf (its PRNG implementation).
        kind: the kind to return (the saved one, or the target leaf's).
        target: the target leaf, if any; its sharding wins over ``placement`` unless it is
            on an abstract mesh (as ``jax.eval_shape`` gives under explicit axes), and its
            sharding's memory kind (``pinned_host`` for an offloaded optimizer state) is
            kept either way.
        placement: a ``jax.sharding.Sharding`` or ``jax.Device`` for jax leaves; None puts
            them on the default device.
        memory: where an offloaded optimizer keeps the leaf, which wins over the rest: a
            memory kind (``"pinned_host"``) for the sharding chosen as above, or a device
            (the host's CPU device, for ``compute="host"``) instead of it.

    Returns:
        A jax array (or typed key array), numpy array, numpy scalar or Python scalar.

    Example:
        >>> import numpy as np
        >>> spec = ts.LeafSpec("['n']", ts.PY_INT, (), "int64")
        >>> from_host(np.asarray(7), spec, ts.PY_INT)
        7
    """
    if kind in (ts.JAX_ARRAY, ts.PRNG_KEY):
        where = _sharding_of(target) or placement
        target_sharding = getattr(target, "sharding", None)
        if isinstance(memory, jax.Device):
            where = memory
        elif memory is not None:
            where = _with_memory_kind(where, memory)
        elif isinstance(target_sharding, jax.sharding.Sharding):
            where = _with_memory_kind(where, target_sharding.memory_kind)
        if kind == ts.PRNG_KEY:
            impl = spec.key_impl or "threefry2x32"
            key = jax.random.wrap_key_data(value, impl=impl)
            return jax.device_put(key, where)
        return jax.device_put(value, where)
    if kind == ts.NUMPY_ARRAY:
        return value
    if kind == ts.NUMPY_SCALAR:
        return value[()]
    if kind in (ts.PY_BOOL, ts.PY_INT, ts.PY_FLOAT):
        return value.item()
    raise ValueError(f"unknown leaf kind {kind!r} at {spec.path}")
