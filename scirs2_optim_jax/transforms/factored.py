"""Adafactor: updates scaled by a factored (row x column) estimate of the gradients' RMS.

For a leaf with two axes of at least ``min_dim_size_to_factor`` elements, Adafactor keeps
the moving averages of the squared gradient's means over its largest axis (``v_row``) and
over its second largest (``v_col``) instead of a full second moment: ``rows + cols``
numbers instead of ``rows * cols``. Smaller leaves keep a full second moment ``v``.

The pieces follow optax 0.2.8 (``scale_by_factored_rms``, ``clip_by_block_rms``,
``scale_by_param_block_rms``, ``ema`` and the ``adafactor`` alias): same arguments and
defaults, same results. They are written with
:mod:`~scirs2_optim_jax.transforms.shard_layout`, so they are exact under ZeRO too: the
row and column statistics of a sharded leaf are summed over its slices (an all-reduce of
``rows + cols`` numbers per factored leaf, and of one number per leaf for each block RMS)
and kept whole and replicated; ``v`` stays sharded like any moment.

Reference: Shazeer and Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory
Cost", 2018.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.transforms.learning_rate import scale, scale_by_learning_rate
from scirs2_optim_jax.transforms.masking import Mask
from scirs2_optim_jax.transforms.moments import as_dtype, compute_dtype, safe_increment
from scirs2_optim_jax.transforms.shard_layout import (
    current_layout,
    is_masked,
    leaf_sum,
    logical_mask,
    logical_shapes,
)
from scirs2_optim_jax.transforms.weight_decay import add_decayed_weights

__all__ = [
    "FactoredMoments",
    "FactoredState",
    "adafactor",
    "factored_dims",
    "scale_by_factored_rms",
    "scale_by_param_block_rms",
]


def decay_rate_pow(step: jax.Array, exponent: Any = 0.8) -> jax.Array:
    """Adafactor's second-moment decay at 0-based ``step``: ``1 - (step + 1) ** -exponent``.

    Example:
        >>> import jax.numpy as jnp
        >>> round(float(decay_rate_pow(jnp.asarray(3), 0.5)), 4)
        0.5
    """
    t = (jnp.asarray(step) + 1).astype(jnp.float32)
    return 1.0 - t ** jnp.asarray(-exponent, jnp.float32)


def factored_dims(
    shape: tuple[int, ...], factored: bool = True, min_dim_size_to_factor: int = 128
) -> tuple[int, int] | None:
    """``(second largest axis, largest axis)`` of a leaf Adafactor factors, or None.

    A leaf is factored when ``factored`` and its two largest axes have at least
    ``min_dim_size_to_factor`` elements (ties: the later axis counts as larger).

    Example:
        >>> factored_dims((256, 512)), factored_dims((100, 512)), factored_dims((512,))
        ((0, 1), None, None)
    """
    if not factored or len(shape) < 2:
        return None
    order = np.argsort(shape)
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return int(order[-2]), int(order[-1])


class FactoredMoments(NamedTuple):
    """The factored second moment of one leaf: means over its largest axis (``v_row``) and
    over its second largest axis (``v_col``), each a moving average."""

    v_row: jax.Array
    v_col: jax.Array


class FactoredState(NamedTuple):
    """State of :func:`scale_by_factored_rms`.

    ``factored`` has a :class:`FactoredMoments` at every factored leaf and ``v`` a full
    second moment at every other leaf; each tree has ``optax.MaskedNode()`` where the other
    holds the leaf. ``v`` is parameter-shaped (sharded under ZeRO); the factored moments
    are small and stay whole.
    """

    count: jax.Array
    factored: Any
    v: Any


def _without(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return shape[:axis] + shape[axis + 1 :]


def _strides(shape: tuple[int, ...]) -> list[int]:
    return [math.prod(shape[k + 1 :]) for k in range(len(shape))]


def _reduced_index(index: jax.Array, shape: tuple[int, ...], axis: int) -> jax.Array:
    """Flat index into ``shape`` without ``axis`` of the element at flat ``index``."""
    kept = _without(shape, axis)
    out = jnp.zeros_like(index)
    for k, (stride, size) in enumerate(zip(_strides(shape), shape, strict=True)):
        if k == axis:
            continue
        position = k if k < axis else k - 1
        coordinate = (index // stride) % size
        out = out + coordinate * math.prod(kept[position + 1 :])
    return out


def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: float = 0.8,
    step_offset: int = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: float = 1e-30,
    decay_rate_fn: Callable[[jax.Array, Any], jax.Array] = decay_rate_pow,
) -> optax.GradientTransformation:
    """Divides updates by a (factored) moving RMS of the gradients, as Adafactor does.

    For a factored leaf (:func:`factored_dims`) with moving averages ``R`` (over its largest
    axis) and ``C`` (over its second largest) of ``g**2 + epsilon``, the update is
    ``g / sqrt(R * C / mean(R))``; for any other leaf ``g / sqrt(v)`` with ``v`` the full
    moving average. The decay at step ``t`` is ``decay_rate_fn(t - step_offset,
    decay_rate)``.

    Args:
        factored: factor the second moment of leaves with two large axes.
        decay_rate: the exponent of the default decay schedule.
        step_offset: subtracted from the step count (for fine-tuning), an integer.
        min_dim_size_to_factor: the two largest axes must have at least this many
            elements for the leaf to be factored.
        epsilon: added to the squared gradients, >= 0.
        decay_rate_fn: ``(step, decay_rate) -> decay`` (default: ``1 - (step + 1) **
            -decay_rate``).

    Returns:
        An ``optax.GradientTransformation`` with state :class:`FactoredState`; ``update``
        needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = scale_by_factored_rms(min_dim_size_to_factor=2)
        >>> params = {"w": jnp.ones((2, 3))}
        >>> state = tx.init(params)
        >>> state.factored["w"].v_row.shape, state.factored["w"].v_col.shape
        ((2,), (3,))
        >>> u, _ = tx.update({"w": jnp.full((2, 3), 2.0)}, state, params)
        >>> round(float(u["w"][0, 0]), 4)
        1.0
    """
    fn = "scale_by_factored_rms"
    v.check_bool(fn, "factored", factored)
    v.check_in_range(fn, "decay_rate", decay_rate, float("-inf"), float("inf"))
    offset = v.check_int(fn, "step_offset", step_offset, 0)
    min_dim = v.check_int(fn, "min_dim_size_to_factor", min_dim_size_to_factor, 0)
    v.check_non_negative(fn, "epsilon", epsilon)
    v.check_callable(fn, "decay_rate_fn", decay_rate_fn)

    def dims_of(shape: tuple[int, ...]) -> tuple[int, int] | None:
        return factored_dims(shape, factored, min_dim)

    def init_fn(params: optax.Params) -> FactoredState:
        shapes = logical_shapes(params)

        def moments(p: Any, s: Any) -> Any:
            dims = dims_of(s.shape)
            if dims is None:
                return optax.MaskedNode()
            d1, d0 = dims
            dtype = jnp.result_type(p)
            return FactoredMoments(
                jnp.zeros(_without(s.shape, d0), dtype), jnp.zeros(_without(s.shape, d1), dtype)
            )

        def full(p: Any, s: Any) -> Any:
            if dims_of(s.shape) is not None:
                return optax.MaskedNode()
            return jnp.zeros(jnp.shape(p), jnp.result_type(p))

        return FactoredState(
            count=jnp.zeros([], jnp.int32),
            factored=jax.tree.map(moments, params, shapes),
            v=jax.tree.map(full, params, shapes),
        )

    def update_fn(
        updates: optax.Updates, state: FactoredState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, FactoredState]:
        if params is None:
            raise ValueError(f"{fn}: update needs params (call tx.update(updates, state, params))")
        layout = current_layout()
        decay = jnp.asarray(decay_rate_fn(state.count - offset, decay_rate))
        shapes = logical_shapes(params)
        is_factored_leaf = lambda x: isinstance(x, FactoredMoments) or is_masked(x)
        stats = jax.tree.leaves(state.factored, is_leaf=is_factored_leaf)
        full = jax.tree.leaves(state.v, is_leaf=is_masked)
        grads, treedef = jax.tree.flatten(updates)
        logical = treedef.flatten_up_to(shapes)
        dtypes = [jnp.result_type(p) for p in treedef.flatten_up_to(params)]
        new_updates, new_stats, new_full = [], [], []
        for g, s, dtype, st, vv in zip(grads, logical, dtypes, stats, full, strict=True):
            dims = dims_of(s.shape)
            work = compute_dtype(g.dtype, dtype)
            rate = decay.astype(work)
            g_sq = jnp.real(g * jnp.conj(g)).astype(work) + jnp.asarray(epsilon, work)
            if dims is None:
                new_v = (rate * vv.astype(work) + (1 - rate) * g_sq).astype(dtype)
                new_updates.append(g * new_v**-0.5)
                new_stats.append(optax.MaskedNode())
                new_full.append(new_v)
                continue
            d1, d0 = dims
            if layout is None:
                row_mean, col_mean = jnp.mean(g_sq, axis=d0), jnp.mean(g_sq, axis=d1)
            else:
                index = layout.element_indices(g)
                g_sq = jnp.where(index < math.prod(s.shape), g_sq, jnp.zeros_like(g_sq))
                row_index = _reduced_index(index, s.shape, d0)
                col_index = _reduced_index(index, s.shape, d1)
                rows, cols = _without(s.shape, d0), _without(s.shape, d1)
                row_sum = layout.segment_sum(g_sq, row_index, math.prod(rows))
                col_sum = layout.segment_sum(g_sq, col_index, math.prod(cols))
                row_mean = row_sum.reshape(rows) / s.shape[d0]
                col_mean = col_sum.reshape(cols) / s.shape[d1]
            v_row = (rate * st.v_row.astype(work) + (1 - rate) * row_mean).astype(dtype)
            v_col = (rate * st.v_col.astype(work) + (1 - rate) * col_mean).astype(dtype)
            reduced_d1 = d1 - 1 if d1 > d0 else d1
            row_factor = (v_row / jnp.mean(v_row, axis=reduced_d1, keepdims=True)) ** -0.5
            col_factor = v_col**-0.5
            if layout is None:
                update = g * jnp.expand_dims(row_factor, d0) * jnp.expand_dims(col_factor, d1)
            else:
                update = (
                    g
                    * layout.take(row_factor.reshape(-1), row_index % row_factor.size)
                    * layout.take(col_factor.reshape(-1), col_index % col_factor.size)
                )
            new_updates.append(update)
            new_stats.append(FactoredMoments(v_row, v_col))
            new_full.append(optax.MaskedNode())
        factored_tree = jax.tree.unflatten(treedef, new_stats)
        full_tree = jax.tree.unflatten(treedef, new_full)
        return jax.tree.unflatten(treedef, new_updates), FactoredState(
            count=safe_increment(state.count), factored=factored_tree, v=full_tree
        )

    return optax.GradientTransformation(init_fn, update_fn)


def _block_rms(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Root mean square over the logical leaf of ``x`` (of ``shape``), in float32 or wider."""
    size = math.prod(shape)
    return jnp.sqrt(leaf_sum(jnp.real(x * jnp.conj(x)), size) / max(size, 1))


def _clip_by_block_rms(threshold: Any) -> optax.GradientTransformation:
    """Divides each leaf by ``max(1, rms / threshold)``, the RMS over the logical leaf."""

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params

        def clip(u: jax.Array, s: Any) -> jax.Array:
            denominator = jnp.maximum(1.0, _block_rms(u, s.shape) / threshold)
            return u / denominator.astype(u.dtype)

        return jax.tree.map(clip, updates, logical_shapes(updates)), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def scale_by_param_block_rms(min_scale: float = 1e-3) -> optax.GradientTransformation:
    """Multiplies each leaf's update by its parameter's RMS (at least ``min_scale``).

    The RMS is over the whole logical leaf, also under ZeRO.

    Args:
        min_scale: the smallest factor, a finite number >= 0.

    Returns:
        A stateless ``optax.GradientTransformation``; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = scale_by_param_block_rms()
        >>> params = {"w": jnp.array([3.0, 4.0, 0.0, 0.0])}
        >>> u, _ = tx.update({"w": jnp.ones(4)}, tx.init(params), params)
        >>> float(u["w"][0])
        2.5
    """
    fn = "scale_by_param_block_rms"
    v.check_non_negative(fn, "min_scale", min_scale)

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        if params is None:
            raise ValueError(f"{fn}: update needs params (call tx.update(updates, state, params))")

        def rescale(u: jax.Array, p: jax.Array, s: Any) -> jax.Array:
            rms = _block_rms(p, s.shape)
            factor = jnp.where(rms <= min_scale, jnp.asarray(min_scale, rms.dtype), rms)
            return u * factor.astype(u.dtype)

        return jax.tree.map(rescale, updates, params, logical_shapes(params)), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _ema(decay: Any, accumulator_dtype: Any) -> optax.GradientTransformation:
    """Moving average of the updates without bias correction (optax's ``ema(debias=False)``)."""

    def init_fn(params: optax.Params) -> optax.EmaState:
        ema = jax.tree.map(
            lambda p: jnp.zeros(jnp.shape(p), accumulator_dtype or jnp.result_type(p)), params
        )
        return optax.EmaState(count=jnp.zeros([], jnp.int32), ema=ema)

    def update_fn(
        updates: optax.Updates, state: optax.EmaState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmaState]:
        del params

        def average(u: jax.Array, m: jax.Array) -> jax.Array:
            dtype = compute_dtype(u.dtype, m.dtype)
            # The decay multiplies the stored average in its own dtype, as optax's does.
            return (1 - decay) * u.astype(dtype) + (as_dtype(decay, m.dtype) * m).astype(dtype)

        new = jax.tree.map(average, updates, state.ema)
        stored = jax.tree.map(lambda n, m: n.astype(m.dtype), new, state.ema)
        return new, optax.EmaState(count=safe_increment(state.count), ema=stored)

    return optax.GradientTransformation(init_fn, update_fn)


def adafactor(
    learning_rate: Any = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    dtype_momentum: Any = jnp.float32,
    weight_decay_rate: Any = None,
    eps: float = 1e-30,
    factored: bool = True,
    weight_decay_mask: Mask = None,
) -> optax.GradientTransformationExtraArgs:
    """Adafactor, with the arguments and defaults of ``optax.adafactor``.

    The chain: :func:`scale_by_factored_rms`, update clipping by block RMS
    (``clipping_threshold``), the learning rate (if given), the parameter-scale factor
    (:func:`scale_by_param_block_rms`), momentum (if given; an exponential moving average
    without bias correction, stored in ``dtype_momentum``), decoupled weight decay (if
    ``weight_decay_rate``), and the sign flip of a descent step.

    Exact under ZeRO (``scirs2_optim_jax.parallel``): factored leaves keep their row and
    column statistics whole (the sums over slices are all-reduced); no ``axis_name`` is
    needed, the ZeRO wrapper provides the layout.

    Args:
        learning_rate: None (the step size is then the parameter scale alone), a
            finite number >= 0, or a schedule.
        min_dim_size_to_factor: factor a leaf when its two largest axes have at least this
            many elements, an integer >= 0.
        decay_rate: exponent of the second-moment decay ``1 - (t + 1) ** -decay_rate``.
        decay_offset: an integer >= 0 subtracted from the step count (fine-tuning).
        multiply_by_parameter_scale: scale updates by each parameter's RMS.
        clipping_threshold: None or a number > 0: clip each leaf's update RMS to it.
        momentum: None or a decay in [0, 1] for a momentum of the updates.
        dtype_momentum: dtype of the momentum.
        weight_decay_rate: None, a number >= 0 or a schedule.
        eps: added to the squared gradients, >= 0.
        factored: use factored second moments at all.
        weight_decay_mask: which leaves decay: None (all), a pytree of bools or a callable
            (given shape/dtype structs of the parameters under ZeRO).

    Returns:
        An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> tx = adafactor(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(50):
        ...     grads = jax.grad(lambda p: jnp.sum(p**2))(params)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> bool(jnp.sum(params**2) < 1.0)
        True

    Reference: Shazeer and Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory
    Cost", 2018.
    """
    fn = "adafactor"
    with v.reraise_with_context(fn):
        if learning_rate is not None:
            v.check_learning_rate(fn, "learning_rate", learning_rate)
        v.check_bool(fn, "multiply_by_parameter_scale", multiply_by_parameter_scale)
        if clipping_threshold is not None:
            v.check_positive(fn, "clipping_threshold", clipping_threshold)
        if momentum is not None:
            v.check_in_range(fn, "momentum", momentum, 0.0, 1.0, include_high=True)
        accumulator = v.check_dtype(fn, "dtype_momentum", dtype_momentum)
        if weight_decay_rate is not None:
            v.check_schedule_or_non_negative(fn, "weight_decay_rate", weight_decay_rate)
        v.check_mask(fn, "weight_decay_mask", weight_decay_mask)
        parts = [
            scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor, eps)
        ]
        if clipping_threshold is not None:
            parts.append(_clip_by_block_rms(clipping_threshold))
        if learning_rate is not None:
            parts.append(scale_by_learning_rate(learning_rate, flip_sign=False))
        if multiply_by_parameter_scale:
            parts.append(scale_by_param_block_rms())
        if momentum is not None:
            parts.append(_ema(momentum, accumulator))
        if weight_decay_rate is not None:
            parts.append(add_decayed_weights(weight_decay_rate, logical_mask(weight_decay_mask)))
        parts.append(scale(-1))
    return optax.chain(*parts)
