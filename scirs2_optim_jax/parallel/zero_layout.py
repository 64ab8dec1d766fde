"""The ZeRO slice layout, as the shape-dependent transformations see it.

:class:`ZeroLayout` implements :class:`~scirs2_optim_jax.transforms.shard_layout.
ShardLayout` for the layout of :mod:`scirs2_optim_jax.parallel.layout`: every leaf flat,
zero-padded to ``N * chunk`` and split over the data axis. The ZeRO wrappers install it
(``use_layout``) around the inner optimizer's ``init`` and ``update``, so Muon, Adafactor and
the block-RMS transforms compute on slices what they compute on whole leaves.

Whole-leaf work (:meth:`ZeroLayout.map_whole`, Muon's orthogonalisation) is spread over the
devices: each leaf gets one owner (greedy by cost, largest first, to the least loaded
device); an ``all_to_all`` sends every device's slices of a leaf to its owner, each device
runs only its own leaves (a ``switch`` on the device index, so the others' branches are not
executed), and a second ``all_to_all`` returns the results as slices. Per dtype and step
each of the two all-to-alls has a result of ``N * B`` elements per device, ``B`` being the
largest total slice length one owner receives from one device (:func:`exchange_plan`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scirs2_optim_jax.parallel.layout import zero_chunk_size
from scirs2_optim_jax.transforms.shard_layout import ShardLayout

__all__ = ["ExchangePlan", "ZeroLayout", "exchange_bytes", "exchange_plan"]


@dataclasses.dataclass(frozen=True)
class ExchangePlan:
    """Who computes which whole leaf, and the size of the all-to-all buffers.

    Attributes:
        owners: the device that owns each leaf, in the order given.
        offsets: where each leaf's slice sits in its owner's row of the buffer.
        width: ``B``, the row length: the largest total slice length of one owner's leaves.
    """

    owners: tuple[int, ...]
    offsets: tuple[int, ...]
    width: int

    def members(self, owner: int) -> list[int]:
        """The leaves ``owner`` computes, in order."""
        return [j for j, o in enumerate(self.owners) if o == owner]


def exchange_plan(chunks: Sequence[int], costs: Sequence[float], num_shards: int) -> ExchangePlan:
    """Assigns leaves to devices, largest cost first to the least loaded one.

    Args:
        chunks: each leaf's slice length ``ceil(size / N)``.
        costs: each leaf's work (Muon: ``m * n * min(m, n)`` per matrix).
        num_shards: ``N``.

    Returns:
        An :class:`ExchangePlan`.

    Example:
        >>> plan = exchange_plan([4, 1, 2], [64.0, 1.0, 8.0], 2)
        >>> plan.owners, plan.offsets, plan.width
        ((0, 1, 1), (0, 0, 1), 4)
    """
    load = [0.0] * num_shards
    owners = [0] * len(chunks)
    for j in sorted(range(len(chunks)), key=lambda j: -costs[j]):
        owner = min(range(num_shards), key=lambda o: (load[o], o))
        owners[j] = owner
        load[owner] += costs[j]
    used = [0] * num_shards
    offsets = [0] * len(chunks)
    for j, owner in enumerate(owners):
        offsets[j] = used[owner]
        used[owner] += chunks[j]
    return ExchangePlan(tuple(owners), tuple(offsets), max(1, *used))


class ZeroLayout(ShardLayout):
    """Leaves split over ``axis_name`` as ZeRO lays them out; see the module doc.

    Must be used where ``axis_name`` is bound (inside ``shard_map``, or a ``vmap`` with
    that axis name). The GSPMD path (one flat, padded, compiler-sharded array per leaf under
    a size-1 axis) passes ``whole`` and ``split``: how to replicate an array before it is
    cut to a logical leaf, and how to give a result its sharding back.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jax.sharding import PartitionSpec as P
        >>> from scirs2_optim_jax.transforms.shard_layout import map_whole_leaves, use_layout
        >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        >>> layout = ZeroLayout({"w": jax.ShapeDtypeStruct((2, 2), jnp.float32)}, "data")
        >>> def f(x):
        ...     with use_layout(layout):
        ...         return map_whole_leaves([lambda m: m.T], [x], [(2, 2)])[0]
        >>> jax.shard_map(f, mesh=mesh, in_specs=P("data"), out_specs=P("data"))(
        ...     jnp.arange(4.0)).tolist()
        [0.0, 2.0, 1.0, 3.0]
    """

    def __init__(
        self,
        shapes: Any,
        axis_name: str,
        *,
        whole: Callable[[jax.Array], jax.Array] | None = None,
        split: Callable[[jax.Array], jax.Array] | None = None,
    ) -> None:
        super().__init__(shapes, axis_name)
        self._whole = whole or (lambda x: x)
        self._split = split or (lambda x: x)

    def element_indices(self, x: jax.Array) -> jax.Array:
        chunk = x.shape[0]
        start = jax.lax.axis_index(self.axis_name) * chunk
        return self._split(start + jnp.arange(chunk, dtype=jnp.int32))

    def sum(self, x: Any) -> Any:
        return jax.lax.psum(x, self.axis_name)

    def segment_sum(self, values: jax.Array, segments: jax.Array, num_segments: int) -> jax.Array:
        return super().segment_sum(self._whole(values), self._whole(segments), num_segments)

    def take(self, table: jax.Array, indices: jax.Array) -> jax.Array:
        return self._split(table[self._whole(indices)])

    def map_whole(
        self,
        fns: Sequence[Callable[[jax.Array], jax.Array]],
        slices: Sequence[jax.Array],
        shapes: Sequence[tuple[int, ...]],
        costs: Sequence[float] | None = None,
    ) -> list[jax.Array]:
        n = jax.lax.axis_size(self.axis_name)
        if costs is None:
            costs = [float(math.prod(s)) for s in shapes]
        if n == 1:
            return [
                self._split(_as_slice(fn(self._whole(x)[: math.prod(s)].reshape(s)), x, 1))
                for fn, x, s in zip(fns, slices, shapes, strict=True)
            ]
        groups: dict[Any, list[int]] = {}
        for j, x in enumerate(slices):
            groups.setdefault(jnp.dtype(x.dtype), []).append(j)
        plans = {
            dtype: exchange_plan(
                [slices[j].shape[0] for j in members], [costs[j] for j in members], n
            )
            for dtype, members in groups.items()
        }
        received = []
        for dtype, members in groups.items():
            plan = plans[dtype]
            rows = []
            for owner in range(n):
                pieces = [slices[members[k]] for k in plan.members(owner)]
                rows.append(_padded_row(pieces, plan.width, dtype))
            received.append(jax.lax.all_to_all(jnp.stack(rows), self.axis_name, 0, 0, tiled=True))

        def compute(owner: int, buffers: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
            out = []
            for (dtype, members), buffer in zip(groups.items(), buffers, strict=True):
                plan = plans[dtype]
                blocks = []
                for k in plan.members(owner):
                    j = members[k]
                    chunk, shape = slices[j].shape[0], shapes[j]
                    start = plan.offsets[k]
                    whole = buffer[:, start : start + chunk].reshape(-1)[: math.prod(shape)]
                    result = fns[j](whole.reshape(shape))
                    blocks.append(_as_slice(result, slices[j], n).reshape(n, chunk))
                used = sum(b.shape[1] for b in blocks)
                blocks.append(jnp.zeros((n, plan.width - used), dtype))
                out.append(jnp.concatenate(blocks, axis=1))
            return tuple(out)

        branches = [functools.partial(compute, owner) for owner in range(n)]
        results = jax.lax.switch(jax.lax.axis_index(self.axis_name), branches, tuple(received))
        outputs: list[Any] = [None] * len(slices)
        for (dtype, members), result in zip(groups.items(), results, strict=True):
            plan = plans[dtype]
            back = jax.lax.all_to_all(result, self.axis_name, 0, 0, tiled=True)
            for k, j in enumerate(members):
                start, chunk = plan.offsets[k], slices[j].shape[0]
                outputs[j] = back[plan.owners[k], start : start + chunk]
        return outputs


def _padded_row(pieces: Sequence[jax.Array], width: int, dtype: Any) -> jax.Array:
    used = sum(p.shape[0] for p in pieces)
    return jnp.concatenate([*pieces, jnp.zeros(width - used, dtype)])


def _as_slice(result: jax.Array, like: jax.Array, n: int) -> jax.Array:
    """``result`` (a whole leaf) flattened and zero-padded to ``n`` slices of ``like``'s
    length; with ``n == 1`` this device's (only) slice."""
    chunk = like.shape[0]
    flat = jnp.asarray(result).astype(like.dtype).reshape(-1)
    if flat.size > n * chunk:
        raise ValueError(
            f"ZeroLayout.map_whole: a whole-leaf function returned {flat.size} elements for a "
            f"leaf of {n * chunk} padded elements"
        )
    return jnp.pad(flat, (0, n * chunk - flat.size))


def exchange_bytes(
    shapes: Sequence[tuple[int, ...]],
    dtypes: Sequence[Any],
    costs: Sequence[float],
    num_shards: int,
) -> int:
    """Result bytes per device of the two all-to-alls of one :meth:`ZeroLayout.map_whole`.

    Example:
        >>> import numpy as np
        >>> # slices of 8 and 3 floats, one leaf per device: buffers of 2 x 8 floats, twice
        >>> exchange_bytes([(4, 4), (2, 3)], [np.float32] * 2, [64.0, 12.0], 2)
        128
    """
    if num_shards == 1:
        return 0
    groups: dict[Any, list[int]] = {}
    for j, dtype in enumerate(dtypes):
        groups.setdefault(np.dtype(dtype), []).append(j)
    total = 0
    for dtype, members in groups.items():
        chunks = [zero_chunk_size(math.prod(shapes[j]), num_shards) for j in members]
        plan = exchange_plan(chunks, [costs[j] for j in members], num_shards)
        total += 2 * num_shards * plan.width * dtype.itemsize
    return total
