"""ZeRO: optimizer state (stage 1) and gradients (stage 2) partitioned over the data axis.

Inside ``jax.shard_map`` over a mesh whose data axis has ``N`` devices, :func:`zero` wraps
any optimizer so that each device keeps ``ceil(size / N)`` elements of every moment leaf
(the layout of :mod:`scirs2_optim_jax.parallel.layout`) and updates only that slice:

- **stage 1**: the per-device gradients are all-reduced (``pmean``), each device takes its
  slice, updates its state shard, and the update slices are all-gathered;
- **stage 2**: the per-device gradients are reduce-scattered (``psum_scatter``) straight to
  the slices, so no device ever holds the whole mean gradient; then as stage 1.

Each collective is issued once per dtype for the whole tree (leaves are packed into one
buffer), not once per leaf. The update returns whole, replicated updates, so
``optax.apply_updates`` and the rest of a training step stay as they were.

Reductions inside the optimizer see only a slice of each leaf, so every reducing transform
must be built with ``axis_name`` equal to the data axis (``clip_by_global_norm(...,
axis_name="data")``, ``lamb(..., axis_name="data")``, ...). The wrapper checks this when the
update is traced (:func:`~scirs2_optim_jax.parallel.reductions.check_shard_reductions`) and
raises ``ShardReductionError`` naming the offending output otherwise. Padding is zeros, so
sums of squares, moments and trust ratios are unchanged by it.

A transformation whose math depends on a leaf's shape would see 1-D slices. The inner
optimizer's ``init`` and ``update`` therefore run with the slices'
:class:`~scirs2_optim_jax.parallel.zero_layout.ZeroLayout` installed, from which this
package's shape-dependent optimizers work exactly: ``muon`` orthogonalises each matrix
whole on one device (two all-to-alls), ``adafactor`` sums its row and column statistics
over the slices. Any other optimizer is checked when the update is traced
(:func:`~scirs2_optim_jax.parallel.shape_check.check_shard_shapes`: a run on random data,
whole versus sliced): one that is not exact on slices (``optax.contrib.muon``,
``optax.adafactor``, ``adaptive_grad_clip``, ``clip_by_block_rms``, ...) raises
``ShardShapeError`` naming it, instead of training wrongly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scirs2_optim_jax.parallel.layout import map_state, zero_chunk_size
from scirs2_optim_jax.parallel.placement import to_host
from scirs2_optim_jax.parallel.reductions import ShardReductionError, check_shard_reductions
from scirs2_optim_jax.parallel.shape_check import check_shard_shapes, shape_dependent_parts
from scirs2_optim_jax.parallel.zero_layout import ZeroLayout
from scirs2_optim_jax.transforms.shard_layout import use_layout

__all__ = [
    "check_slices",
    "gather_updates",
    "reduce_gradients",
    "shard_params",
    "update_slices",
    "zero",
    "zero_state_from_canonical",
    "zero_state_specs",
    "zero_state_to_canonical",
]

STAGES = (1, 2)


def _check_axis_name(fn: str, axis_name: Any) -> None:
    if not isinstance(axis_name, str) or not axis_name:
        raise TypeError(f"{fn}: axis_name must be a non-empty string, got {axis_name!r}")


def _check_stage(fn: str, stage: Any) -> None:
    if isinstance(stage, bool) or stage not in STAGES:
        raise ValueError(f"{fn}: stage must be 1 or 2, got {stage!r}")


def _structs(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), tree)


def _slice(x: jax.Array, n: int, index: jax.Array) -> jax.Array:
    chunk = zero_chunk_size(x.size, n)
    flat = jnp.pad(x.reshape(-1), (0, n * chunk - x.size))
    return jax.lax.dynamic_slice_in_dim(flat, index * chunk, chunk)


def shard_params(params: Any, axis_name: str = "data") -> Any:
    """This device's slice of every leaf: flattened, zero-padded, ``ceil(size / N)`` long.

    Call inside ``shard_map`` with ``params`` replicated.

    Args:
        params: a pytree of whole arrays.
        axis_name: the data axis.

    Returns:
        A pytree of the same structure with 1-D leaves of ``ceil(size / N)`` elements.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jax.sharding import PartitionSpec as P
        >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        >>> f = jax.shard_map(shard_params, mesh=mesh, in_specs=P(), out_specs=P("data"))
        >>> f({"w": jnp.ones((2, 3))})["w"].shape
        (6,)
    """
    n = jax.lax.axis_size(axis_name)
    index = jax.lax.axis_index(axis_name)
    return jax.tree.map(lambda x: _slice(x, n, index), params)


def _buckets(leaves: Sequence[jax.Array]) -> dict[Any, list[int]]:
    groups: dict[Any, list[int]] = {}
    for i, leaf in enumerate(leaves):
        groups.setdefault(jnp.dtype(leaf.dtype), []).append(i)
    return groups


def reduce_gradients(grads: Any, axis_name: str = "data", stage: int = 2) -> Any:
    """Mean gradient over the data axis, delivered as this device's ZeRO slice of each leaf.

    Stage 1 all-reduces the whole gradients and slices them; stage 2 reduce-scatters them,
    one ``psum_scatter`` per dtype over a packed ``[N, total slice]`` buffer.

    Args:
        grads: this device's gradients (whole leaves, mean over its own batch).
        axis_name: the data axis.
        stage: 1 or 2.

    Returns:
        The slices, as :func:`shard_params` lays them out.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jax.sharding import PartitionSpec as P
        >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        >>> f = jax.shard_map(reduce_gradients, mesh=mesh, in_specs=P(), out_specs=P("data"))
        >>> f({"w": jnp.ones((2, 3))})["w"].tolist()
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    _check_stage("reduce_gradients", stage)
    n = jax.lax.axis_size(axis_name)
    if stage == 1:
        return shard_params(jax.lax.pmean(grads, axis_name), axis_name)
    leaves, treedef = jax.tree.flatten(grads)
    out: list[Any] = [None] * len(leaves)
    for indices in _buckets(leaves).values():
        chunks = [zero_chunk_size(leaves[i].size, n) for i in indices]
        rows = [
            jnp.pad(leaves[i].reshape(-1), (0, n * c - leaves[i].size)).reshape(n, c)
            for i, c in zip(indices, chunks, strict=True)
        ]
        packed = jnp.concatenate(rows, axis=1)
        mine = jax.lax.psum_scatter(packed, axis_name, scatter_dimension=0, tiled=True)[0] / n
        for i, piece in zip(indices, jnp.split(mine, np.cumsum(chunks)[:-1]), strict=True):
            out[i] = piece
    return jax.tree.unflatten(treedef, out)


def gather_updates(update_slices: Any, params_like: Any, axis_name: str = "data") -> Any:
    """All-gathers ZeRO slices back into whole leaves shaped like ``params_like``.

    One tiled ``all_gather`` per dtype over the packed slices; padding is dropped.

    Args:
        update_slices: this device's slices (as :func:`shard_params` lays them out).
        params_like: whole-leaf arrays or shape/dtype structs giving the logical shapes.
        axis_name: the data axis.

    Returns:
        Whole leaves, the same on every device.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jax.sharding import PartitionSpec as P
        >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        >>> shape = {"w": jax.ShapeDtypeStruct((2, 3), jnp.float32)}
        >>> f = jax.shard_map(lambda s: gather_updates(s, shape), mesh=mesh,
        ...                   in_specs=P("data"), out_specs=P(), check_vma=False)
        >>> f({"w": jnp.arange(6.0)})["w"].tolist()
        [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    """
    n = jax.lax.axis_size(axis_name)
    leaves, treedef = jax.tree.flatten(update_slices)
    shapes = treedef.flatten_up_to(params_like)
    out: list[Any] = [None] * len(leaves)
    for indices in _buckets(leaves).values():
        chunks = [leaves[i].shape[0] for i in indices]
        packed = jnp.concatenate([leaves[i] for i in indices])
        whole = jax.lax.all_gather(packed, axis_name, tiled=True).reshape(n, -1)
        for i, block in zip(indices, jnp.split(whole, np.cumsum(chunks)[:-1], axis=1), strict=True):
            shape = np.shape(shapes[i])
            out[i] = block.reshape(-1)[: math.prod(shape)].reshape(shape)
    return jax.tree.unflatten(treedef, out)


def _sharded_marks(state: Any, params_like: Any) -> Any:
    return map_state(state, params_like, lambda *_: True, lambda *_: False)


def update_slices(
    tx: optax.GradientTransformation,
    grad_slices: Any,
    state: Any,
    params: Any,
    axis_name: str = "data",
    *,
    check: bool = True,
    params_like: Any = None,
    **extra_args: Any,
) -> tuple[Any, Any]:
    """Runs ``tx.update`` on this device's slices (after :func:`reduce_gradients`).

    The update runs with the :class:`~scirs2_optim_jax.parallel.zero_layout.ZeroLayout` of
    the leaves installed, so shape-dependent transformations of this package (``muon``,
    ``adafactor``) compute what they compute on whole leaves.

    Args:
        tx: the inner optimizer.
        grad_slices: the reduced gradient slices.
        state: this device's state shard.
        params: whole parameters (replicated), or None.
        axis_name: the data axis.
        check: verify at trace time that reductions are completed over ``axis_name``
            (:func:`~scirs2_optim_jax.parallel.reductions.check_shard_reductions`) and that
            the optimizer is exact on slices
            (:func:`~scirs2_optim_jax.parallel.shape_check.check_shard_shapes`).
        params_like: the whole leaves' shapes (arrays or shape/dtype structs), when
            ``params`` is None.
        **extra_args: passed on to ``tx.update``.

    Returns:
        ``(update slices, new state shard)``.

    Example:
        >>> import jax, jax.numpy as jnp, scirs2_optim_jax as so
        >>> from jax.sharding import PartitionSpec as P
        >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        >>> tx = so.sgd(0.5)
        >>> def f(g):
        ...     u, _ = update_slices(tx, reduce_gradients(g), tx.init(g), None, params_like=g)
        ...     return u
        >>> jax.shard_map(f, mesh=mesh, in_specs=P(), out_specs=P("data"))(
        ...     {"w": jnp.ones(2)})["w"].tolist()
        [-0.5, -0.5]
    """
    layout = _slice_layout(params, params_like, axis_name, "update_slices")
    inner = optax.with_extra_args_support(tx)
    param_slices = None if params is None else shard_params(params, axis_name)
    update = functools.partial(inner.update, **extra_args)
    if check:
        check_slices(
            tx, grad_slices, state, params, axis_name, params_like=params_like, **extra_args
        )
    with use_layout(layout):
        return update(grad_slices, state, param_slices)


def _slice_layout(params: Any, params_like: Any, axis_name: str, fn: str) -> ZeroLayout:
    logical = params if params_like is None else params_like
    if logical is None:
        raise ValueError(
            f"{fn}: pass params or params_like: the logical (whole) leaf shapes, which "
            "shape-dependent transformations need and the check probes with"
        )
    return ZeroLayout(_structs(logical), axis_name)


def check_slices(
    tx: optax.GradientTransformation,
    grad_slices: Any,
    state: Any,
    params: Any,
    axis_name: str = "data",
    *,
    params_like: Any = None,
    **extra_args: Any,
) -> None:
    """Raises unless ``tx`` is exact on this device's ZeRO slices (at trace time).

    The checks :func:`update_slices` runs with ``check=True``: every reduction is completed
    over ``axis_name`` (``ShardReductionError``) and the optimizer does not depend on the
    leaves' shapes (``ShardShapeError``). Nothing is added to the traced computation.

    Example:
        >>> import jax, jax.numpy as jnp, scirs2_optim_jax as so
        >>> from jax.sharding import PartitionSpec as P
        >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        >>> tx = so.adamw(0.1)
        >>> def f(g):
        ...     check_slices(tx, reduce_gradients(g), tx.init(shard_params(g)), g)
        ...     return g
        >>> jax.shard_map(f, mesh=mesh, in_specs=P(), out_specs=P())({"w": jnp.ones(2)})["w"].shape
        (2,)
    """
    layout = _slice_layout(params, params_like, axis_name, "check_slices")
    logical = params if params_like is None else params_like
    update = functools.partial(optax.with_extra_args_support(tx).update, **extra_args)
    param_slices = None if params is None else shard_params(params, axis_name)
    n = jax.lax.axis_size(axis_name)
    if n > 1:  # on one device a slice is the whole (flat) leaf: nothing to complete
        marks = (
            jax.tree.map(lambda _: True, grad_slices),
            _sharded_marks(state, grad_slices),
            None if params is None else jax.tree.map(lambda _: True, param_slices),
        )
        try:
            with use_layout(layout):
                check_shard_reductions(
                    update, (grad_slices, state, param_slices), marks, axis_name, context="zero"
                )
        except ShardReductionError as err:
            parts = shape_dependent_parts(tx)
            if not parts:
                raise
            raise ShardReductionError(
                f"{err}. The optimizer also contains {', '.join(parts)}, which depends on "
                "the leaves' shapes and cannot run on ZeRO's flat slices (this package's "
                "muon and adafactor can)"
            ) from None
    check_shard_shapes(tx, logical, n, axis_name, extra_args=extra_args, context="zero")


def zero(
    tx: optax.GradientTransformation, axis_name: str = "data", stage: int = 1, *, check: bool = True
) -> optax.GradientTransformationExtraArgs:
    """Partitions ``tx``'s state (stage 1) and the gradients (stage 2) over ``axis_name``.

    Use inside ``jax.shard_map`` over a mesh with that axis, with replicated parameters and
    *per-device* gradients (not yet averaged: the wrapper does the reduction). ``init``
    takes the whole parameters and returns this device's state shard (same tree structure
    as ``tx.init(params)``; moment leaves are 1-D slices of ``ceil(size / N)`` elements,
    scalars such as step counts replicated); ``update`` returns whole updates.

    Build every reducing transform inside ``tx`` with ``axis_name`` set to the same axis;
    ``update`` verifies this when traced (``check=True``) and raises
    ``ShardReductionError`` otherwise. It also raises ``ShardShapeError`` for an optimizer
    that is not exact on flat slices (see the module doc).

    Args:
        tx: any optimizer of this package (or an element-wise optax one).
        axis_name: the data axis of the mesh.
        stage: 1 (all-reduce gradients, shard the state) or 2 (reduce-scatter gradients).
        check: verify the inner optimizer's reductions, and that it is exact on slices,
            when ``update`` is traced.

    Returns:
        An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

    Example:
        >>> import jax, jax.numpy as jnp, optax, scirs2_optim_jax as so
        >>> from jax.sharding import PartitionSpec as P
        >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        >>> tx = zero(so.adamw(0.1), stage=2)
        >>> def step(params, grads):
        ...     updates, _ = tx.update(grads, tx.init(params), params)
        ...     return optax.apply_updates(params, updates)
        >>> step = jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data")),
        ...                      out_specs=P(), check_vma=False)
        >>> [round(float(x), 4) for x in step({"w": jnp.ones(3)}, {"w": jnp.ones(3)})["w"]]
        [0.9, 0.9, 0.9]

    Reference: Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion
    Parameter Models", 2020.
    """
    fn = "zero"
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(f"{fn}: tx must be an optax.GradientTransformation, got {tx!r}")
    _check_axis_name(fn, axis_name)
    _check_stage(fn, stage)

    def init_fn(params: optax.Params) -> optax.OptState:
        with use_layout(ZeroLayout(_structs(params), axis_name)):
            return tx.init(shard_params(params, axis_name))

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.OptState]:
        grad_slices = reduce_gradients(updates, axis_name, stage)
        slices, state = update_slices(
            tx,
            grad_slices,
            state,
            params,
            axis_name,
            check=check,
            params_like=updates,
            **extra_args,
        )
        return gather_updates(slices, updates, axis_name), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def zero_state_specs(
    tx: optax.GradientTransformation, params_like: Any, num_shards: int, axis_name: str = "data"
) -> Any:
    """``PartitionSpec`` tree of ``zero(tx)``'s state: ``P(axis)`` for moments, ``P()`` else.

    Args:
        tx: the inner optimizer.
        params_like: the whole parameters (arrays or shape/dtype structs).
        num_shards: the size of the data axis.
        axis_name: the data axis.

    Returns:
        A pytree of ``PartitionSpec`` with the state's structure, for ``shard_map`` specs.

    Example:
        >>> import jax.numpy as jnp, scirs2_optim_jax as so
        >>> specs = zero_state_specs(so.adam(0.1), {"w": jnp.ones(3)}, 8)
        >>> specs[0].count, specs[0].mu
        (P(), {'w': P('data',)})
    """
    _check_axis_name("zero_state_specs", axis_name)
    slices = jax.tree.map(
        lambda p: jax.ShapeDtypeStruct(
            (zero_chunk_size(math.prod(np.shape(p)), num_shards),), jnp.result_type(p)
        ),
        params_like,
    )
    with use_layout(ZeroLayout(_structs(params_like), axis_name)):
        state = jax.eval_shape(tx.init, slices)
    return map_state(
        state,
        slices,
        lambda *_: PartitionSpec(axis_name),
        lambda *_: PartitionSpec(),
        single_leaf_is_moment=lambda leaf, param: np.shape(leaf) == np.shape(param),
    )


def _check_params_like(fn: str, params_like: Any) -> None:
    if not jax.tree.leaves(params_like):
        raise ValueError(f"{fn}: params_like has no array leaves")


def zero_state_to_canonical(state: Any, params_like: Any) -> Any:
    """Returns a ZeRO state in its canonical layout: whole, unpadded, logically shaped.

    Every moment leaf (flat, padded, possibly sharded over devices or processes) is gathered
    to the host, its padding dropped and reshaped to its parameter's shape; other leaves are
    copied as they are. NamedTuples and other containers are preserved; the leaves are plain
    ``jax.Array`` on the default device. In a multi-process run every process must call it.

    Args:
        state: the state of :func:`zero` (or of
            :func:`~scirs2_optim_jax.parallel.gspmd.zero_gspmd`), as global arrays.
        params_like: the parameters (arrays or shape/dtype structs) giving logical shapes.

    Returns:
        The state as ``tx.init(params)`` would lay it out.

    Raises:
        ValueError: naming the state path whose leaf is too short for its parameter.

    Example:
        >>> import jax, jax.numpy as jnp, scirs2_optim_jax as so
        >>> from scirs2_optim_jax.parallel import make_data_mesh
        >>> params = {"w": jnp.ones((3, 3))}
        >>> state = so.adam(0.1).init(params)
        >>> sharded = zero_state_from_canonical(state, params, make_data_mesh(1))
        >>> sharded[0].mu["w"].shape
        (9,)
        >>> zero_state_to_canonical(sharded, params)[0].mu["w"].shape
        (3, 3)
    """
    fn = "zero_state_to_canonical"
    _check_params_like(fn, params_like)

    def moment(path: str, leaf: Any, param: Any) -> jax.Array:
        shape = np.shape(param)
        size = math.prod(shape)
        if np.ndim(leaf) != 1 or np.size(leaf) < size:
            raise ValueError(
                f"{fn}: the state leaf at {path or '<root>'} has shape {np.shape(leaf)}, "
                f"expected a flat padded vector of at least {size} elements for a parameter "
                f"of shape {shape}"
            )
        return jnp.asarray(to_host(leaf)[:size].reshape(shape))

    return map_state(
        state,
        params_like,
        moment,
        lambda path, leaf: jnp.asarray(to_host(leaf)),
        single_leaf_is_moment=lambda leaf, _: np.ndim(leaf) == 1,
    )


def zero_state_from_canonical(
    canonical_state: Any, params_like: Any, mesh: Mesh, axis_name: str = "data"
) -> Any:
    """Lays a canonical optimizer state out for ZeRO on ``mesh``: flat, padded, sharded.

    Each moment leaf is flattened, zero-padded to a multiple of the data axis size ``N`` and
    split over ``axis_name`` (``ceil(size / N)`` elements per device); other leaves are
    replicated. Works for any ``N`` and for multi-process meshes (every process passes the
    same canonical values).

    Args:
        canonical_state: a state as ``tx.init(params)`` lays it out (host or device arrays).
        params_like: the parameters (arrays or shape/dtype structs).
        mesh: the target mesh; ``axis_name`` must be one of its axes.
        axis_name: the data axis.

    Returns:
        The state as global ``jax.Array``, ready for a :func:`zero` step on ``mesh``.

    Raises:
        ValueError: naming the state path whose leaf does not have its parameter's shape.

    Example:
        >>> import jax.numpy as jnp, scirs2_optim_jax as so
        >>> from scirs2_optim_jax.parallel import make_data_mesh
        >>> params = {"w": jnp.ones(5)}
        >>> state = zero_state_from_canonical(so.adam(0.1).init(params), params,
        ...                                   make_data_mesh(1))
        >>> state[0].mu["w"].sharding.spec
        P('data',)
    """
    fn = "zero_state_from_canonical"
    _check_axis_name(fn, axis_name)
    _check_params_like(fn, params_like)
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{fn}: mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"{fn}: axis_name {axis_name!r} is not an axis of the mesh {mesh.axis_names}"
        )
    if (
        jax.tree.structure(params_like).num_nodes == 1
        and np.ndim(jax.tree.leaves(params_like)[0]) == 0
    ):
        raise ValueError(
            f"{fn}: params_like is a lone scalar, whose moments cannot be told from step "
            "counts; wrap it in a dict"
        )
    n = mesh.shape[axis_name]
    sharded = NamedSharding(mesh, PartitionSpec(axis_name))
    replicated = NamedSharding(mesh, PartitionSpec())

    def moment(path: str, leaf: Any, param: Any) -> jax.Array:
        if np.shape(leaf) != np.shape(param):
            raise ValueError(
                f"{fn}: the state leaf at {path or '<root>'} has shape {np.shape(leaf)}, "
                f"expected its parameter's shape {np.shape(param)}"
            )
        host = to_host(leaf).reshape(-1)
        size = host.size
        flat = np.pad(host, (0, n * zero_chunk_size(size, n) - size))
        return jax.make_array_from_callback(flat.shape, sharded, lambda index: flat[index])

    def other(path: str, leaf: Any) -> jax.Array:
        del path
        host = to_host(leaf)
        return jax.make_array_from_callback(host.shape, replicated, lambda index: host[index])

    return map_state(
        canonical_state,
        params_like,
        moment,
        other,
        single_leaf_is_moment=lambda leaf, param: np.shape(leaf) == np.shape(param),
    )
