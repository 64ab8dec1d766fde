"""Learning-rate scaling: a constant, a schedule of the step count, or an injected value."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.transforms.description import ScaleByLearningRate, describe
from scirs2_optim_jax.transforms.moments import as_dtype, as_inexact_tree, safe_increment

__all__ = ["ScaleByScheduleState", "scale", "scale_by_learning_rate", "scale_by_schedule"]


def scale(step_size: Any) -> optax.GradientTransformation:
    """Multiplies every update by the constant ``step_size``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = scale(-0.5)
        >>> updates, _ = tx.update({"w": jnp.array([2.0])}, tx.init(None))
        >>> float(updates["w"][0])
        -1.0
    """
    fn = "scale"
    v.check_in_range(fn, "step_size", step_size, float("-inf"), float("inf"))

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params
        updates = as_inexact_tree(updates)
        return jax.tree.map(lambda g: as_dtype(step_size, g.dtype) * g, updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


class ScaleByScheduleState(NamedTuple):
    """State of :func:`scale_by_schedule`: how many updates have been scaled."""

    count: jax.Array


def scale_by_schedule(step_size_fn: Any) -> optax.GradientTransformation:
    """Multiplies updates by ``step_size_fn(count)``, with ``count`` the number of past steps.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = scale_by_schedule(lambda count: -0.1 * (count + 1).astype(jnp.float32))
        >>> state = tx.init(None)
        >>> _, state = tx.update({"w": jnp.ones(1)}, state)
        >>> updates, _ = tx.update({"w": jnp.ones(1)}, state)
        >>> round(float(updates["w"][0]), 4)
        -0.2
    """
    if not callable(step_size_fn):
        raise TypeError(f"scale_by_schedule: step_size_fn must be callable, got {step_size_fn!r}")

    def init_fn(params: optax.Params) -> ScaleByScheduleState:
        del params
        return ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(
        updates: optax.Updates, state: ScaleByScheduleState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByScheduleState]:
        del params
        updates = as_inexact_tree(updates)
        step_size = step_size_fn(state.count)
        new_updates = jax.tree.map(lambda g: jnp.asarray(step_size, g.dtype) * g, updates)
        return new_updates, ScaleByScheduleState(count=safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_learning_rate(
    learning_rate: Any, *, flip_sign: bool = True
) -> optax.GradientTransformation:
    """Scales updates by the learning rate, negated by default so the result is a descent step.

    Args:
        learning_rate: a finite number >= 0, a jax scalar (as injected by
            ``optax.inject_hyperparams``) or a schedule ``count -> rate``.
        flip_sign: multiply by ``-learning_rate`` (the default) rather than ``learning_rate``.

    Returns:
        An ``optax.GradientTransformation``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = scale_by_learning_rate(0.1)
        >>> updates, _ = tx.update({"w": jnp.array([2.0])}, tx.init(None))
        >>> round(float(updates["w"][0]), 4)
        -0.2
    """
    fn = "scale_by_learning_rate"
    v.check_learning_rate(fn, "learning_rate", learning_rate)
    v.check_bool(fn, "flip_sign", flip_sign)
    sign = -1 if flip_sign else 1
    if callable(learning_rate):
        tx = scale_by_schedule(lambda count: sign * learning_rate(count))
    else:
        tx = scale(sign * learning_rate)
    return describe(tx, ScaleByLearningRate(learning_rate, flip_sign))
