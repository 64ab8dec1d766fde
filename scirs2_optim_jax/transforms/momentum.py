"""Momentum and sign-based transforms: ``trace`` (heavy-ball / Nesterov) and Lion."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.transforms.moments import (
    as_dtype,
    as_inexact_tree,
    cast,
    compute_dtype,
    ema,
    safe_increment,
    zeros_like_tree,
)

__all__ = ["ScaleByLionState", "TraceState", "scale_by_lion", "trace"]


class TraceState(NamedTuple):
    """State of :func:`trace`."""

    trace: optax.Params


def trace(
    decay: float, nesterov: bool = False, accumulator_dtype: Any = None
) -> optax.GradientTransformation:
    """Accumulates a momentum trace: ``t = g + decay * t``; returns ``t`` (or Nesterov's
    ``g + decay * t``).

    Args:
        decay: momentum coefficient, in [0, 1].
        nesterov: use Nesterov momentum.
        accumulator_dtype: dtype of the trace (default: the parameters' dtype); floating or
            complex.

    Returns:
        An ``optax.GradientTransformation`` with state :class:`TraceState`.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = trace(decay=0.5)
        >>> state = tx.init({"w": jnp.zeros(1)})
        >>> _, state = tx.update({"w": jnp.ones(1)}, state)
        >>> updates, _ = tx.update({"w": jnp.ones(1)}, state)
        >>> float(updates["w"][0])
        1.5

    Reference: Sutskever et al., "On the importance of initialization and momentum", 2013.
    """
    fn = "trace"
    v.check_in_range(fn, "decay", decay, 0.0, 1.0, include_high=True)
    v.check_bool(fn, "nesterov", nesterov)
    accumulator_dtype = v.check_dtype(
        fn, "accumulator_dtype", accumulator_dtype, allow_complex=True
    )

    def init_fn(params: optax.Params) -> TraceState:
        return TraceState(trace=zeros_like_tree(params, accumulator_dtype))

    def update_fn(
        updates: optax.Updates, state: TraceState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, TraceState]:
        del params
        updates = as_inexact_tree(updates)
        v.check_tree_matches(fn, updates, state.trace)

        def accumulate(g: jax.Array, t: jax.Array) -> jax.Array:
            dtype = compute_dtype(g.dtype, t.dtype)
            return g.astype(dtype) + as_dtype(decay, dtype) * t.astype(dtype)

        full_trace = jax.tree.map(accumulate, updates, state.trace)
        out = jax.tree.map(accumulate, updates, full_trace) if nesterov else full_trace
        new_updates = jax.tree.map(lambda o, g: cast(o, g.dtype), out, updates)
        new_trace = jax.tree.map(lambda f, t: cast(f, t.dtype), full_trace, state.trace)
        return new_updates, TraceState(trace=new_trace)

    return optax.GradientTransformation(init_fn, update_fn)


class ScaleByLionState(NamedTuple):
    """State of :func:`scale_by_lion`."""

    count: jax.Array
    mu: optax.Updates


LION_MODES: tuple[str, ...] = ("hard", "smooth", "refined")
"""The sign variants of :func:`scale_by_lion` (as in optax)."""


def scale_by_lion(
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any = None,
    *,
    mode: Literal["hard", "smooth", "refined"] = "hard",
    smooth_beta: float = 1.0,
) -> optax.GradientTransformation:
    """Lion's update direction: ``sign((1 - b1) * g + b1 * m)``, with ``m`` an EMA of ``g``
    at rate ``b2``.

    ``mode`` picks the sign variant, as in optax: ``"hard"`` is ``sign(x)``, ``"smooth"`` is
    ``tanh(smooth_beta * x)`` and ``"refined"`` is ``x`` where ``|x| < 1`` and ``sign(x)``
    elsewhere. An unknown mode raises here, when the transform is built (optax raises at
    the first update).

    Args:
        b1: interpolation between gradient and momentum for the direction, in [0, 1).
        b2: decay of the momentum, in [0, 1).
        mu_dtype: dtype of the momentum (default: the parameters' dtype); floating or
            complex.
        mode: the sign variant: "hard", "smooth" or "refined".
        smooth_beta: the slope of the ``"smooth"`` variant; a finite number > 0.

    Returns:
        An ``optax.GradientTransformation`` with state :class:`ScaleByLionState`.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = scale_by_lion()
        >>> updates, _ = tx.update({"w": jnp.array([-0.2, 3.0])}, tx.init({"w": jnp.zeros(2)}))
        >>> [float(x) for x in updates["w"]]
        [-1.0, 1.0]
        >>> tx = scale_by_lion(mode="refined")
        >>> updates, _ = tx.update({"w": jnp.array([-0.2, 30.0])}, tx.init({"w": jnp.zeros(2)}))
        >>> [round(float(x), 4) for x in updates["w"]]
        [-0.02, 1.0]

    Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023.
    """
    fn = "scale_by_lion"
    v.check_in_range(fn, "b1", b1, 0.0, 1.0)
    v.check_in_range(fn, "b2", b2, 0.0, 1.0)
    mu_dtype = v.check_dtype(fn, "mu_dtype", mu_dtype, allow_complex=True)
    v.check_one_of(fn, "mode", mode, LION_MODES)
    v.check_positive(fn, "smooth_beta", smooth_beta)

    def sign(x: jax.Array) -> jax.Array:
        if mode == "smooth":
            return jnp.tanh(as_dtype(smooth_beta, x.dtype) * x)
        if mode == "refined":
            return jnp.where(jnp.abs(x) < 1, x, jnp.sign(x))
        return jnp.sign(x)

    def init_fn(params: optax.Params) -> ScaleByLionState:
        return ScaleByLionState(
            count=jnp.zeros([], jnp.int32), mu=zeros_like_tree(params, mu_dtype)
        )

    def update_fn(
        updates: optax.Updates, state: ScaleByLionState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByLionState]:
        del params
        updates = as_inexact_tree(updates)
        v.check_tree_matches(fn, updates, state.mu)

        def direction(g: jax.Array, m: jax.Array) -> jax.Array:
            dtype = compute_dtype(g.dtype, m.dtype)
            mix = as_dtype(1 - b1, dtype) * g.astype(dtype) + as_dtype(b1, dtype) * m.astype(dtype)
            return cast(sign(mix), g.dtype)

        new_updates = jax.tree.map(direction, updates, state.mu)
        mu = jax.tree.map(lambda g, m: ema(g, m, b2, 1), updates, state.mu)
        return new_updates, ScaleByLionState(count=safe_increment(state.count), mu=mu)

    return optax.GradientTransformation(init_fn, update_fn)
