"""Schedule-Free learning: interpolation and averaging in place of momentum and lr decay.

:func:`schedule_free` wraps a base optimizer (without momentum) so that it keeps three
sequences: ``z``, the base optimizer's own iterates (stored in the state); ``x``, their
weighted running average, the parameters to *evaluate*; and ``y = b1 * x + (1 - b1) * z``,
where gradients are taken, which are the parameters the training loop holds. Only ``y``
and ``z`` are stored; ``x`` is recomputed from them (:func:`schedule_free_eval_params`).
Every operation is elementwise per leaf (plus scalars of the learning rate), so the
wrapper runs exactly on ZeRO slices.

Same state fields, update and evaluation parameters as ``optax.contrib.schedule_free`` in
optax 0.2.8; arguments are validated when the wrapper is built.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.transforms.moments import as_dtype, compute_dtype, safe_increment

__all__ = ["ScheduleFreeState", "schedule_free", "schedule_free_eval_params"]

_STATE_FIELDS = ("b1", "weight_sum", "step_count", "max_lr", "base_optimizer_state", "z")


class ScheduleFreeState(NamedTuple):
    """State of :func:`schedule_free` (the fields of optax's ``ScheduleFreeState``)."""

    b1: jax.Array  # the interpolation weight, in the parameters' (lowest) dtype
    weight_sum: jax.Array  # sum of the averaging weights so far
    step_count: jax.Array  # int32, starts at 1: the schedule is read at step_count
    max_lr: jax.Array  # largest learning rate seen so far
    base_optimizer_state: optax.OptState
    z: optax.Params  # the base optimizer's iterates


def _lowest_float_dtype(params: Any) -> jnp.dtype:
    """The narrowest floating dtype among the leaves (float32 when there is none).

    Two different dtypes of the narrowest width (bfloat16 and float16) meet in float32.
    """
    dtypes = {
        jnp.dtype(leaf.dtype)
        for leaf in jax.tree.leaves(params)
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)
    }
    if not dtypes:
        return jnp.dtype(jnp.float32)
    width = min(d.itemsize for d in dtypes)
    narrowest = [d for d in dtypes if d.itemsize == width]
    return narrowest[0] if len(narrowest) == 1 else jnp.dtype(jnp.float32)


def _interpolation_inverse(y: jax.Array, z: jax.Array, b1: Any) -> jax.Array:
    """``x = (y - (1 - b1) * z) / b1``, computed in the wider of the two dtypes."""
    dtype = compute_dtype(y.dtype, z.dtype)
    b1 = as_dtype(b1, dtype)
    return (y.astype(dtype) - (1 - b1) * z.astype(dtype)) / b1


def schedule_free(
    base_optimizer: optax.GradientTransformation,
    learning_rate: v.ScalarOrSchedule,
    b1: Any = 0.9,
    weight_lr_power: Any = 2.0,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Makes ``base_optimizer`` schedule-free: interpolation and averaging replace momentum.

    With ``z`` the base optimizer's iterates, ``x`` their average and ``y`` the parameters
    the training loop holds (where gradients are taken), each step does

    - ``z <- z + base_update(grad(y))``;
    - ``x <- (1 - c) * x + c * z`` with ``c = w_t / sum(w)`` and ``w_t = max_lr ** p``
      (``max_lr`` the largest learning rate so far, ``p = weight_lr_power``);
    - ``y <- b1 * x + (1 - b1) * z``,

    and returns ``new y - y`` as the update. Evaluate the model at ``x``
    (:func:`schedule_free_eval_params`). Turn momentum off in the base optimizer (Adam with
    ``b1=0``, plain SGD) and use a schedule without decay (a warmup, then constant).

    Args:
        base_optimizer: the optimizer whose updates move ``z`` (learning rate included).
        learning_rate: the same learning rate (number or schedule) as the base optimizer's;
            it sets the averaging weights. A schedule is read at ``step_count``, from 1.
        b1: interpolation between ``x`` and ``z``, in (0, 1].
        weight_lr_power: the averaging weights are ``max_lr ** weight_lr_power``; >= 0.
        state_dtype: dtype of ``z`` (default: the parameters' dtypes).

    Returns:
        An ``optax.GradientTransformationExtraArgs`` with state :class:`ScheduleFreeState`;
        ``update`` needs ``params``.

    Raises:
        ValueError, TypeError: naming the invalid argument, e.g.
            ``schedule_free: b1 must be a number in (0.0, 1.0], got 0.0``.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from scirs2_optim_jax.optimizers import sgd
        >>> tx = schedule_free(sgd(0.5), 0.5, b1=0.9)
        >>> params = jnp.array([1.0, -2.0])
        >>> state = tx.init(params)
        >>> for _ in range(20):
        ...     grads = jax.grad(lambda p: jnp.sum(p**2))(params)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> x = schedule_free_eval_params(state, params)
        >>> bool(jnp.all(jnp.abs(x) < 0.1))
        True

    Reference: Defazio et al., "The Road Less Scheduled", 2024.
    """
    fn = "schedule_free"
    if not isinstance(base_optimizer, optax.GradientTransformation):
        raise TypeError(
            f"{fn}: base_optimizer must be an optax.GradientTransformation, "
            f"got {type(base_optimizer).__name__} {base_optimizer!r}"
        )
    v.check_learning_rate(fn, "learning_rate", learning_rate)
    v.check_in_range(fn, "b1", b1, 0.0, 1.0, include_low=False, include_high=True)
    v.check_non_negative(fn, "weight_lr_power", weight_lr_power)
    state_dtype = v.check_dtype(fn, "state_dtype", state_dtype)
    base = optax.with_extra_args_support(base_optimizer)

    def init_fn(params: optax.Params) -> ScheduleFreeState:
        dtype = _lowest_float_dtype(params)
        # A copy, so that z and the parameters are distinct buffers (both may be donated).
        z = jax.tree.map(lambda p: jnp.array(p, dtype=state_dtype or p.dtype, copy=True), params)
        return ScheduleFreeState(
            b1=jnp.asarray(b1).astype(dtype),
            weight_sum=jnp.zeros([], dtype),
            step_count=jnp.ones([], jnp.int32),
            max_lr=jnp.zeros([], dtype),
            base_optimizer_state=base.init(params),
            z=z,
        )

    def update_fn(
        updates: optax.Updates,
        state: ScheduleFreeState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScheduleFreeState]:
        if params is None:
            raise ValueError(f"{fn}: update needs params (call tx.update(updates, state, params))")
        v.check_tree_matches(fn, params, state.z, tree_name="params")
        dtype = state.max_lr.dtype
        lr = learning_rate(state.step_count) if callable(learning_rate) else learning_rate
        max_lr = jnp.maximum(state.max_lr, jnp.asarray(lr).astype(dtype))
        weight = max_lr ** as_dtype(weight_lr_power, dtype)
        weight_sum = state.weight_sum + weight
        # A tiny learning rate can make weight / weight_sum 0/0: that is a weight of 0.
        ratio = jnp.nan_to_num(weight / weight_sum, nan=0.0, posinf=jnp.inf)
        ck = jnp.where(jnp.isnan(weight) | jnp.isnan(weight_sum), jnp.nan, ratio).astype(dtype)

        base_updates, base_state = base.update(
            updates, state.base_optimizer_state, params, **extra_args
        )

        def advance(z: jax.Array, u: jax.Array) -> jax.Array:
            wide = compute_dtype(z.dtype, u.dtype)
            return (z.astype(wide) + u.astype(wide)).astype(z.dtype)

        def step(y: jax.Array, z_old: jax.Array, z_new: jax.Array) -> jax.Array:
            # x is recomputed from y and the old z, so that it follows whatever happened to
            # y outside this transformation (another wrapper, a cast to bf16).
            x = _interpolation_inverse(y, z_old, b1)
            wide = compute_dtype(x.dtype, z_new.dtype)
            c, z_new = ck.astype(wide), z_new.astype(wide)
            x = (1 - c) * x.astype(wide) + c * z_new
            b = as_dtype(b1, wide)
            new_y = b * x + (1 - b) * z_new
            out = compute_dtype(wide, y.dtype)
            return (new_y.astype(out) - y.astype(out)).astype(y.dtype)

        z = jax.tree.map(advance, state.z, base_updates)
        new_updates = jax.tree.map(step, params, state.z, z)
        new_state = ScheduleFreeState(
            b1=state.b1,
            weight_sum=weight_sum,
            step_count=safe_increment(state.step_count),
            max_lr=max_lr,
            base_optimizer_state=base_state,
            z=z,
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _is_schedule_free_state(node: Any) -> bool:
    """Ours, or optax's ``ScheduleFreeState`` (the same fields)."""
    return isinstance(node, tuple) and getattr(node, "_fields", None) == _STATE_FIELDS


def schedule_free_eval_params(state: optax.OptState, params: optax.Params) -> optax.Params:
    """The parameters to evaluate a schedule-free model at: the average ``x``.

    ``x = (y - (1 - b1) * z) / b1`` with ``y = params`` and ``b1``, ``z`` from the state.
    ``state`` may be the :class:`ScheduleFreeState` itself (ours or optax's) or any
    optimizer state holding exactly one (a chain with clipping in front, master weights,
    ``optax.inject_hyperparams``...). Under ZeRO, pass the whole state
    (:func:`~scirs2_optim_jax.parallel.zero_state_to_canonical`), not a device's shard.

    Args:
        state: the optimizer state.
        params: the parameters the training loop holds (``y``).

    Returns:
        ``x``, shaped like ``params``, each leaf in its parameter's dtype.

    Raises:
        ValueError: if ``state`` holds no schedule-free state or several, or its ``z``
            does not match ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> state = ScheduleFreeState(jnp.array(0.5), 0, 1, 0, (), {"w": jnp.array([2.0])})
        >>> schedule_free_eval_params(state, {"w": jnp.array([3.0])})["w"].tolist()
        [4.0]
    """
    fn = "schedule_free_eval_params"
    found = [
        node
        for node in jax.tree.leaves(state, is_leaf=_is_schedule_free_state)
        if _is_schedule_free_state(node)
    ]
    if len(found) != 1:
        what = "no ScheduleFreeState" if not found else f"{len(found)} ScheduleFreeStates"
        raise ValueError(
            f"{fn}: state must hold exactly one ScheduleFreeState (the state of a "
            f"schedule_free optimizer), got {type(state).__name__} with {what}"
        )
    (sf_state,) = found
    v.check_tree_matches(fn, params, sf_state.z, tree_name="params", ref_name="state's z")
    b1 = jnp.asarray(sf_state.b1)

    def average(y: jax.Array, z: jax.Array) -> jax.Array:
        return _interpolation_inverse(y, z, b1).astype(jnp.asarray(y).dtype)

    return jax.tree.map(average, params, sf_state.z)
