"""ZeRO-1 by the compiler: optimizer-state shardings for a plain ``jax.jit`` step.

For users who write an ordinary jitted step (no ``shard_map``): :func:`zero_gspmd` wraps the
optimizer so that its state takes the ZeRO layout (each moment leaf flat, zero-padded to a
multiple of the data axis size and split over it; the same layout as
:func:`~scirs2_optim_jax.parallel.zero.zero`, so states and checkpoints move between the two)
and places sharding annotations; XLA's SPMD partitioner then has each device update its
slice of the state and inserts the collectives (a reduce-scatter or all-reduce of the
gradients, an all-gather of the updates).

The inner optimizer sees whole (flat, padded) arrays here, so its reductions are global
without any communication written by hand. A transform built with ``axis_name`` works too:
the update runs with that axis bound to a size-1 ``vmap`` axis, where its ``psum`` is an
identity. So the same optimizer object serves ``shard_map`` ZeRO, plain data parallelism
and this path. As with ZeRO, transformations that are not exact on flat padded leaves
(``clip_by_block_rms`` counts padded elements, ``adaptive_grad_clip`` and optax's Muon and
Adafactor need logical shapes) are refused when the update is traced; this package's
``muon`` and ``adafactor`` read the layout and are exact (Muon's matrices are then
orthogonalised by every device: XLA, not the wrapper, places that work).

Both Explicit and Auto mesh axes work: Explicit axes get ``jax.sharding.reshard``, Auto
axes ``jax.lax.with_sharding_constraint``. Call the jitted step inside
``jax.set_mesh(mesh)``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from scirs2_optim_jax.parallel.layout import map_state, padded_size
from scirs2_optim_jax.parallel.shape_check import check_shard_shapes
from scirs2_optim_jax.parallel.unit_axis import with_unit_axis
from scirs2_optim_jax.parallel.zero_layout import ZeroLayout
from scirs2_optim_jax.transforms.shard_layout import use_layout

__all__ = ["constrain", "zero_gspmd", "zero_state_shardings"]


def constrain(x: Any, mesh: Mesh, spec: PartitionSpec) -> Any:
    """Annotates ``x`` (a pytree) with ``NamedSharding(mesh, spec)``, for either axis type.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jax.sharding import PartitionSpec as P
        >>> from scirs2_optim_jax.parallel import make_data_mesh
        >>> mesh = make_data_mesh(1)
        >>> constrain(jnp.ones(4), mesh, P("data")).sharding.spec
        P('data',)
    """
    sharding = NamedSharding(mesh, spec)
    if all(t == AxisType.Explicit for t in mesh.axis_types):
        return jax.tree.map(lambda leaf: jax.sharding.reshard(leaf, sharding), x)
    return jax.tree.map(lambda leaf: jax.lax.with_sharding_constraint(leaf, sharding), x)


def _structs(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), tree)


def _flat_padded(x: jax.Array, n: int) -> jax.Array:
    return jnp.pad(x.reshape(-1), (0, padded_size(x.size, n) - x.size))


def _unflatten(flat: jax.Array, like: Any) -> jax.Array:
    shape = np.shape(like)
    return flat[: math.prod(shape)].reshape(shape)


def zero_state_shardings(state: Any, params_like: Any, mesh: Mesh, axis_name: str = "data") -> Any:
    """``NamedSharding`` tree of a ZeRO-layout state: moments split, everything else replicated.

    Use as ``in_shardings`` / ``out_shardings`` of ``jax.jit`` or with ``jax.device_put``.

    Args:
        state: the state of :func:`zero_gspmd` (arrays or shape/dtype structs).
        params_like: the parameters (arrays or shape/dtype structs).
        mesh: the mesh.
        axis_name: its data axis.

    Returns:
        A pytree of ``NamedSharding`` with the state's structure.

    Example:
        >>> import jax, jax.numpy as jnp, scirs2_optim_jax as so
        >>> from scirs2_optim_jax.parallel import make_data_mesh
        >>> mesh = make_data_mesh(1)
        >>> params = {"w": jnp.ones(5)}
        >>> tx = zero_gspmd(so.adam(0.1), mesh)
        >>> shardings = zero_state_shardings(jax.eval_shape(tx.init, params), params, mesh)
        >>> shardings[0].mu["w"].spec, shardings[0].count.spec
        (P('data',), P())
    """
    return map_state(
        state,
        params_like,
        lambda *_: NamedSharding(mesh, PartitionSpec(axis_name)),
        lambda *_: NamedSharding(mesh, PartitionSpec()),
        single_leaf_is_moment=lambda leaf, _: np.ndim(leaf) == 1,
    )


def zero_gspmd(
    tx: optax.GradientTransformation, mesh: Mesh, axis_name: str = "data", *, check: bool = True
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``tx`` so a ``jax.jit`` step keeps its state in the ZeRO layout on ``mesh``.

    ``init(params)`` returns the state with moment leaves flat, padded to a multiple of the
    data axis size ``N`` and sharded over ``axis_name`` (``ceil(size / N)`` elements per
    device); ``update(grads, state, params)`` takes and returns whole-leaf (logical) trees.
    The parameters and gradients stay whatever sharding the step gives them (replicated for
    data parallelism).

    The inner optimizer runs with the flat leaves' :class:`~scirs2_optim_jax.parallel.
    zero_layout.ZeroLayout` installed, so this package's shape-dependent optimizers
    (``muon``, ``adafactor``) are exact; with ``check`` an optimizer that is not exact on flat
    leaves (optax's ``contrib.muon``, ``adafactor``, ...) raises
    :class:`~scirs2_optim_jax.parallel.shape_check.ShardShapeError` when traced.

    Args:
        tx: any optimizer of this package.
        mesh: the mesh; ``axis_name`` must be one of its axes.
        axis_name: the data axis.
        check: verify, when ``update`` is traced, that ``tx`` is exact on flat leaves
            (:func:`~scirs2_optim_jax.parallel.shape_check.check_shard_shapes`).

    Returns:
        An ``optax.GradientTransformationExtraArgs``.

    Example:
        >>> import jax, jax.numpy as jnp, optax, scirs2_optim_jax as so
        >>> from scirs2_optim_jax.parallel import make_data_mesh
        >>> mesh = make_data_mesh(1)
        >>> tx = zero_gspmd(so.adamw(0.1), mesh)
        >>> params = {"w": jnp.ones(3)}
        >>> @jax.jit
        ... def step(params, state):
        ...     updates, state = tx.update({"w": jnp.ones(3)}, state, params)
        ...     return optax.apply_updates(params, updates), state
        >>> with jax.set_mesh(mesh):
        ...     params, state = step(params, jax.jit(tx.init)(params))
        >>> [round(float(x), 4) for x in params["w"]], state[0].mu["w"].shape
        ([0.9, 0.9, 0.9], (3,))
    """
    fn = "zero_gspmd"
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(f"{fn}: tx must be an optax.GradientTransformation, got {tx!r}")
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{fn}: mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"{fn}: axis_name {axis_name!r} is not an axis of the mesh {mesh.axis_names}"
        )
    n = mesh.shape[axis_name]
    original = tx
    tx = optax.with_extra_args_support(tx)
    split = PartitionSpec(axis_name)

    def to_slices(tree: Any) -> Any:
        return constrain(jax.tree.map(lambda x: _flat_padded(x, n), tree), mesh, split)

    def constrain_state(state: Any, flat_params: Any) -> Any:
        return map_state(
            state,
            flat_params,
            lambda _, leaf, __: constrain(leaf, mesh, split),
            lambda _, leaf: constrain(leaf, mesh, PartitionSpec()),
            single_leaf_is_moment=lambda leaf, _: np.ndim(leaf) == 1,
        )

    def init_fn(params: optax.Params) -> optax.OptState:
        flat = to_slices(params)
        with use_layout(ZeroLayout(_structs(params), axis_name)):
            state = tx.init(flat)
        return constrain_state(state, flat)

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.OptState]:
        flat_grads = to_slices(updates)
        flat_params = None if params is None else to_slices(params)

        if check:
            check_shard_shapes(
                original, updates, 1, axis_name, extra_args=extra_args, pad_to=n, context=fn
            )
        layout = ZeroLayout(
            _structs(updates),
            axis_name,
            whole=lambda x: constrain(x, mesh, PartitionSpec()),
            split=lambda x: constrain(x, mesh, split),
        )

        def inner(g: Any, s: Any, p: Any) -> Any:
            with use_layout(layout):
                return tx.update(g, s, p, **extra_args)

        flat_updates, state = with_unit_axis(inner, axis_name)(flat_grads, state, flat_params)
        # Replicating the flat updates is the all-gather; the padding is dropped after it.
        gathered = constrain(flat_updates, mesh, PartitionSpec())
        whole = jax.tree.map(_unflatten, gathered, updates)
        return whole, constrain_state(state, flat_grads)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
