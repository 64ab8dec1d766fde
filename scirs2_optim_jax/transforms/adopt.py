"""ADOPT: Adam with the gradient normalised by the *previous* second moment, then averaged.

Normalising by the second-moment estimate from before the current gradient (instead of
after, as Adam does) removes the correlation that makes Adam diverge for some ``b2``; the
momentum then averages the normalised gradients. Elementwise per leaf, so it runs exactly
on ZeRO slices. Same state fields and update as ``optax.contrib.scale_by_adopt`` in optax
0.2.8; arguments are validated when the transformation is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.transforms.moments import (
    as_dtype,
    compute_dtype,
    ema,
    safe_increment,
    zeros_like_tree,
)

__all__ = ["ScaleByAdoptState", "default_adopt_clip", "scale_by_adopt"]


class ScaleByAdoptState(NamedTuple):
    """State of :func:`scale_by_adopt` (the fields of optax's ``ScaleByAdamState``)."""

    count: jax.Array  # int32 scalar: steps taken
    mu: optax.Updates  # average of the normalised gradients
    nu: optax.Updates  # average of the squared gradients


def default_adopt_clip(count: jax.Array) -> jax.Array:
    """ADOPT's default clipping bound at step ``count``: ``count ** 0.25`` (float32).

    optax's default is the lambda ``x ** 0.25``; this is the same function, named, with
    the integer count cast to float32 first so it holds under strict dtype promotion.

    Example:
        >>> import jax.numpy as jnp
        >>> float(default_adopt_clip(jnp.array(16, jnp.int32)))
        2.0
    """
    return jnp.asarray(count).astype(jnp.float32) ** 0.25


def scale_by_adopt(
    b1: Any = 0.9,
    b2: Any = 0.9999,
    eps: Any = 1e-6,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.Array] = default_adopt_clip,
    nu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Rescales updates by the ADOPT rule.

    At step ``t`` (from 0) with gradient ``g``: ``n = g / max(sqrt(nu), eps)`` using the
    second moment ``nu`` *before* this step, clipped to ``+-clip_value_fn(t)`` when
    ``use_clipping``; ``mu <- b1 * mu + (1 - b1) * n`` and ``nu <- b2 * nu + (1 - b2) * g**2``;
    the update is ``mu`` (with ``nesterov``, ``b1 * mu + (1 - b1) * n`` once more). The
    first step only initialises ``nu = g**2`` and returns zeros.

    Args:
        b1: decay of the average of normalised gradients, in [0, 1).
        b2: decay of the squared-gradient average, in [0, 1).
        eps: lower bound of the normaliser ``sqrt(nu)``, > 0.
        mu_dtype: dtype of ``mu`` (default: the parameters' dtype).
        nesterov: use Nesterov momentum.
        use_clipping: clip the normalised gradient (recommended when training from
            scratch).
        clip_value_fn: ``count -> bound`` for the clipping (default ``count ** 0.25``).
        nu_dtype: dtype of ``nu`` (keyword-only; optax has none).

    Returns:
        An ``optax.GradientTransformation`` with state :class:`ScaleByAdoptState`.

    Raises:
        ValueError, TypeError: naming the invalid argument, e.g.
            ``scale_by_adopt: b2 must be a number in [0.0, 1.0), got 1.0``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = scale_by_adopt(b1=0.5)
        >>> state = tx.init({"w": jnp.zeros(2)})
        >>> first, state = tx.update({"w": jnp.array([2.0, -2.0])}, state)
        >>> second, state = tx.update({"w": jnp.array([2.0, -2.0])}, state)
        >>> first["w"].tolist(), second["w"].tolist()  # g / sqrt(g**2) = sign, halved by b1
        ([0.0, 0.0], [0.5, -0.5])

    Reference: Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any beta2 with the
    Optimal Rate", 2024.
    """
    fn = "scale_by_adopt"
    v.check_in_range(fn, "b1", b1, 0.0, 1.0)
    v.check_in_range(fn, "b2", b2, 0.0, 1.0)
    v.check_positive(fn, "eps", eps)
    mu_dtype = v.check_dtype(fn, "mu_dtype", mu_dtype)
    nu_dtype = v.check_dtype(fn, "nu_dtype", nu_dtype)
    v.check_bool(fn, "nesterov", nesterov)
    v.check_bool(fn, "use_clipping", use_clipping)
    v.check_callable(fn, "clip_value_fn", clip_value_fn)

    def init_fn(params: optax.Params) -> ScaleByAdoptState:
        return ScaleByAdoptState(
            count=jnp.zeros([], jnp.int32),
            mu=zeros_like_tree(params, mu_dtype),
            nu=zeros_like_tree(params, nu_dtype),
        )

    def update_fn(
        updates: optax.Updates, state: ScaleByAdoptState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByAdoptState]:
        del params
        v.check_tree_matches(fn, updates, state.mu)
        started = state.count > 0
        # The first step only initialises nu with g**2 (b2 -> 0) and keeps mu at 0 (b1 -> 1).
        b1_now = jnp.where(started, jnp.float32(b1), jnp.float32(1))
        b2_now = jnp.where(started, jnp.float32(b2), jnp.float32(0))
        bound = jnp.asarray(clip_value_fn(state.count)) if use_clipping else None

        def normalised(g: jax.Array, n: jax.Array) -> jax.Array:
            dtype = compute_dtype(g.dtype, n.dtype)
            scaled = g.astype(dtype) / jnp.maximum(jnp.sqrt(n.astype(dtype)), as_dtype(eps, dtype))
            if bound is None:
                return scaled
            limit = bound.astype(dtype)
            return jnp.clip(scaled, -limit, limit)

        def average(r: jax.Array, m: jax.Array) -> jax.Array:
            dtype = compute_dtype(r.dtype, m.dtype)
            decay = b1_now.astype(dtype)
            return (1 - decay) * r.astype(dtype) + decay * m.astype(dtype)

        scaled = jax.tree.map(normalised, updates, state.nu)
        nu = jax.tree.map(lambda g, n: ema(g, n, b2_now, 2), updates, state.nu)
        mu = jax.tree.map(average, scaled, state.mu)
        direction = jax.tree.map(average, scaled, mu) if nesterov else mu
        new_updates = jax.tree.map(lambda d, g: d.astype(g.dtype), direction, updates)
        mu = jax.tree.map(lambda m, old: m.astype(old.dtype), mu, state.mu)
        return new_updates, ScaleByAdoptState(count=safe_increment(state.count), mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)
