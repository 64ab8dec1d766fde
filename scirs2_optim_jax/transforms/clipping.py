"""Gradient clipping: by value, by global norm, per leaf (norm or RMS), and adaptive (AGC).

Every clip that measures a norm takes ``axis_name``: inside ``shard_map``/``pmap`` with
leaves split across that mesh axis, the partial sums of squares are ``psum``-ed so the clip
sees the norm of the whole logical tree or leaf. (``optax.clip_by_global_norm`` there
clips each shard by its own local norm.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.transforms.description import ClipByGlobalNorm, describe
from scirs2_optim_jax.transforms.moments import as_dtype
from scirs2_optim_jax.transforms.norms import AxisName, global_norm, leaf_sum_of_squares

__all__ = [
    "adaptive_grad_clip",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "clip_by_leaf_norm",
    "clip_factor",
    "unitwise_norm",
]


def _stateless(update_fn: Callable[..., Any]) -> optax.GradientTransformation:
    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def clip(max_delta: float) -> optax.GradientTransformation:
    """Clips every update element to ``[-max_delta, max_delta]``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = clip(1.0)
        >>> updates, _ = tx.update({"w": jnp.array([-3.0, 0.5])}, tx.init(None))
        >>> [float(x) for x in updates["w"]]
        [-1.0, 0.5]
    """
    v.check_positive("clip", "max_delta", max_delta)

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params
        return jax.tree.map(
            lambda g: jnp.clip(g, as_dtype(-max_delta, g.dtype), as_dtype(max_delta, g.dtype)),
            updates,
        ), state

    return _stateless(update_fn)


def clip_by_global_norm(
    max_norm: float, *, axis_name: AxisName = None, fused: bool | None = None
) -> optax.GradientTransformation:
    """Rescales the whole update tree so its global L2 norm is at most ``max_norm``.

    Args:
        max_norm: the largest allowed global norm, > 0.
        axis_name: mesh axis over which leaves are sharded; the norm is then that of the
            whole logical tree on every device.
        fused: how the one-pass engine computes the norm when this clip is folded into its
            step (:func:`scirs2_optim_jax.apply_gradients` of ``chain(clip_by_global_norm,
            adamw(...))``): ``None`` (default) reads float32 gradients once on all CPU
            threads with the engine's kernel where the engine's step runs, ``True`` requires
            the kernel, ``False`` keeps XLA's reduction. ``update`` itself always reduces in
            XLA, so tracing it never builds a kernel. The kernel adds float partial sums of
            short blocks in double; on leaves of millions of elements XLA's float32
            reduction can differ from it by about 1e-6 relative.

    Returns:
        An ``optax.GradientTransformation``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = clip_by_global_norm(1.0)
        >>> updates, _ = tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(None))
        >>> round(float(updates["a"][0]), 4), round(float(updates["b"][0]), 4)
        (0.6, 0.8)

    Reference: Pascanu et al., "On the difficulty of training recurrent neural networks",
    2013.
    """
    v.check_positive("clip_by_global_norm", "max_norm", max_norm)
    if fused is not None and not isinstance(fused, bool):
        raise TypeError(f"clip_by_global_norm: fused must be True, False or None, got {fused!r}")
    if fused and axis_name is not None:
        raise ValueError(
            "clip_by_global_norm: fused=True does not support axis_name (sharded leaves); "
            "pass fused=None"
        )

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params
        factor = clip_factor(global_norm(updates, axis_name), max_norm)
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state

    return describe(_stateless(update_fn), ClipByGlobalNorm(max_norm, axis_name, fused))


def clip_factor(norm: jax.Array, max_norm: Any) -> jax.Array:
    """The scalar that takes a tree of global norm ``norm`` to at most ``max_norm``.

    Exactly 1 when no clipping is needed. A scalar factor rather than optax's
    ``g / norm * max_norm``: XLA fuses a multiply by a scalar into every consumer of the
    gradients, whereas the divide is materialised as an extra pass over them; the one-pass
    engine folds the same factor into its step.

    Example:
        >>> import jax.numpy as jnp
        >>> float(clip_factor(jnp.float32(4.0), 1.0)), float(clip_factor(jnp.float32(0.5), 1.0))
        (0.25, 1.0)
    """
    return jnp.where(norm < max_norm, 1.0, max_norm / norm)


def clip_by_leaf_norm(
    max_norm: float, *, axis_name: AxisName = None
) -> optax.GradientTransformation:
    """Rescales each leaf separately so its L2 norm is at most ``max_norm``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = clip_by_leaf_norm(1.0)
        >>> updates, _ = tx.update({"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.5])},
        ...                        tx.init(None))
        >>> [round(float(x), 4) for x in updates["a"]], float(updates["b"][0])
        ([0.6, 0.8], 0.5)
    """
    v.check_positive("clip_by_leaf_norm", "max_norm", max_norm)

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params

        def rescale(g: jax.Array) -> jax.Array:
            norm = jnp.sqrt(leaf_sum_of_squares(g, axis_name))
            factor = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
            return g * factor.astype(g.dtype)

        return jax.tree.map(rescale, updates), state

    return _stateless(update_fn)


def clip_by_block_rms(
    threshold: float, *, axis_name: AxisName = None
) -> optax.GradientTransformation:
    """Rescales each leaf so its root mean square is at most ``threshold``.

    With ``axis_name``, the mean is over the whole logical leaf: both the sum of squares and
    the element count are summed across the axis.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = clip_by_block_rms(1.0)
        >>> updates, _ = tx.update({"w": jnp.array([2.0, -2.0])}, tx.init(None))
        >>> [float(x) for x in updates["w"]]
        [1.0, -1.0]
    """
    v.check_positive("clip_by_block_rms", "threshold", threshold)

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params

        def rescale(g: jax.Array) -> jax.Array:
            count = jnp.asarray(g.size, jnp.float32)
            if axis_name is not None:
                count = jax.lax.psum(count, axis_name)
            rms = jnp.sqrt(leaf_sum_of_squares(g, axis_name) / count)
            factor = 1.0 / jnp.maximum(1.0, rms / threshold)
            return g * factor.astype(g.dtype)

        return jax.tree.map(rescale, updates), state

    return _stateless(update_fn)


def _default_unit_axes(x: jax.Array, sharded: bool) -> tuple[int, ...] | None:
    # A leaf with a single non-trivial axis is one unit. A shard's shape may have size-1
    # axes that the logical leaf does not, so sharded leaves are judged by rank alone.
    if x.ndim <= 1 or (not sharded and sum(d != 1 for d in x.shape) <= 1):
        return None
    if x.ndim in (2, 3):
        return (0,)
    if x.ndim == 4:
        return (0, 1, 2)
    if x.ndim == 5:
        return (0, 1, 2, 3)
    raise ValueError(
        f"adaptive_grad_clip: cannot infer the unit axes of a leaf of shape {x.shape}; "
        "pass axis= to name the axes to reduce over"
    )


def unitwise_norm(
    x: jax.Array, axis: int | tuple[int, ...] | None = None, axis_name: AxisName = None
) -> jax.Array:
    """L2 norm of each unit of ``x`` (an output neuron or filter), broadcast to ``x.shape``.

    Without ``axis``: vectors and scalars (and leaves with one non-trivial axis) are one
    unit; matrices and rank-3 tensors reduce over axis 0 (inputs); HWIO and DHWIO
    convolution kernels over all but the last axis. With ``axis_name`` the choice is made
    from the rank alone, since a shard's shape can have size-1 axes its leaf lacks.

    Example:
        >>> import jax.numpy as jnp
        >>> unitwise_norm(jnp.array([[3.0, 0.0], [4.0, 1.0]])).tolist()
        [[5.0, 1.0], [5.0, 1.0]]
    """
    axes = _default_unit_axes(x, axis_name is not None) if axis is None else axis
    squared = leaf_sum_of_squares(x, axis_name, axis=axes, keepdims=True)
    return jnp.broadcast_to(jnp.sqrt(squared), x.shape)


def adaptive_grad_clip(
    clipping: float,
    eps: float = 1e-3,
    axis: int | tuple[int, ...] | None = None,
    *,
    axis_name: AxisName = None,
) -> optax.GradientTransformation:
    """Adaptive gradient clipping (AGC): clips each unit's gradient norm to
    ``clipping * max(||param unit||, eps)``.

    Args:
        clipping: the largest allowed ratio of gradient norm to parameter norm, > 0.
        eps: lower bound on the parameter norm, so zero-initialised units can move, >= 0.
        axis: axes that make up a unit (default: inferred from the rank, see
            :func:`unitwise_norm`).
        axis_name: mesh axis over which leaves are sharded. The shards must split the leaf
            along the unit's reduced axes (for a matrix, along axis 0), as a row-sharded
            layout does.

    Returns:
        An ``optax.GradientTransformation``; it needs ``params`` in ``update``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = adaptive_grad_clip(0.1)
        >>> params = {"w": jnp.array([3.0, 4.0])}
        >>> updates, _ = tx.update({"w": jnp.array([6.0, 8.0])}, tx.init(params), params)
        >>> [round(float(x), 4) for x in updates["w"]]
        [0.3, 0.4]

    Reference: Brock et al., "High-Performance Large-Scale Image Recognition Without
    Normalization", 2021.
    """
    fn = "adaptive_grad_clip"
    v.check_positive(fn, "clipping", clipping)
    v.check_non_negative(fn, "eps", eps)

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        if params is None:
            raise ValueError(f"{fn}: update needs params (call tx.update(updates, state, params))")
        v.check_tree_matches(fn, updates, params, ref_name="params")

        def clip_leaf(path: tuple, g: jax.Array, p: jax.Array) -> jax.Array:
            if axis is not None:
                axes = (axis,) if isinstance(axis, int) else axis
                if any(not -g.ndim <= a < g.ndim for a in axes):
                    raise ValueError(
                        f"{fn}: axis={axis} is out of range for the leaf at "
                        f"{jax.tree_util.keystr(path) or '<root>'} of shape {g.shape}"
                    )
            g_norm = unitwise_norm(g, axis, axis_name)
            p_norm = unitwise_norm(p, axis, axis_name)
            max_norm = clipping * jnp.maximum(p_norm, eps)
            clipped = g * (max_norm / jnp.maximum(g_norm, 1e-6)).astype(g.dtype)
            return jnp.where(g_norm < max_norm, g, clipped)

        return jax.tree_util.tree_map_with_path(clip_leaf, updates, params), state

    return _stateless(update_fn)
