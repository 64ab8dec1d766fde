"""Decoupled weight decay: ``updates + weight_decay * params`` on the leaves a mask selects."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.transforms.description import AddDecayedWeights, describe
from scirs2_optim_jax.transforms.masking import Mask, select_by_mask
from scirs2_optim_jax.transforms.moments import as_inexact, cast, compute_dtype, safe_increment

__all__ = ["AddDecayedWeightsState", "add_decayed_weights"]


class AddDecayedWeightsState(NamedTuple):
    """State of :func:`add_decayed_weights` with a scheduled weight decay."""

    count: jax.Array


def add_decayed_weights(weight_decay: Any = 0.0, mask: Mask = None) -> optax.GradientTransformation:
    """Adds ``weight_decay * params`` to the updates (decoupled weight decay, as in AdamW).

    As in optax, an update leaf that is ``None`` (a parameter without an update) stays
    ``None``, and ``weight_decay`` may be negative (optax's ``fromage`` adds a negative
    multiple of the parameters). The aliases (``adamw``, ``lamb``...) still refuse a
    negative weight decay.

    Args:
        weight_decay: a finite number, or a schedule ``count -> weight decay``.
        mask: which leaves decay: None (all), a bool, a pytree of bools matching (a prefix
            of) the parameters, or a callable ``params -> such a pytree``. A typical mask
            leaves biases and normalisation scales undecayed.

    Returns:
        An ``optax.GradientTransformation``; it needs ``params`` in ``update``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = add_decayed_weights(0.1, mask={"w": True, "b": False})
        >>> params = {"w": jnp.ones(1), "b": jnp.ones(1)}
        >>> zeros = {"w": jnp.zeros(1), "b": jnp.zeros(1)}
        >>> updates, _ = tx.update(zeros, tx.init(params), params)
        >>> round(float(updates["w"][0]), 4), float(updates["b"][0])
        (0.1, 0.0)

    Reference: Loshchilov and Hutter, "Decoupled Weight Decay Regularization", 2019.
    """
    fn = "add_decayed_weights"
    v.check_finite_or_schedule(fn, "weight_decay", weight_decay)
    v.check_mask(fn, "mask", mask)
    scheduled = callable(weight_decay)

    def init_fn(params: optax.Params) -> AddDecayedWeightsState | optax.EmptyState:
        del params
        if scheduled:
            return AddDecayedWeightsState(count=jnp.zeros([], jnp.int32))
        return optax.EmptyState()

    def update_fn(
        updates: optax.Updates,
        state: AddDecayedWeightsState | optax.EmptyState,
        params: optax.Params | None = None,
    ) -> tuple[optax.Updates, AddDecayedWeightsState | optax.EmptyState]:
        if params is None:
            raise ValueError(f"{fn}: update needs params (call tx.update(updates, state, params))")
        params = _without_missing_updates(fn, updates, params)
        v.check_tree_matches(fn, updates, params, ref_name="params")
        if scheduled:
            rate = weight_decay(state.count)
            state = AddDecayedWeightsState(count=safe_increment(state.count))
        elif isinstance(weight_decay, (int, float)) and weight_decay == 0:
            return updates, state
        else:
            rate = weight_decay

        def decay(g: jax.Array, p: jax.Array) -> jax.Array:
            g, p = as_inexact(g), jnp.asarray(p)
            dtype = compute_dtype(g.dtype, p.dtype)
            return cast(g.astype(dtype) + jnp.asarray(rate, dtype) * p.astype(dtype), g.dtype)

        decayed = jax.tree.map(decay, updates, params)
        return select_by_mask(mask, params, decayed, updates), state

    return describe(
        optax.GradientTransformation(init_fn, update_fn),
        AddDecayedWeights(weight_decay, mask),
    )


def _without_missing_updates(fn: str, updates: optax.Updates, params: optax.Params) -> Any:
    """``params`` with ``None`` wherever ``updates`` has ``None`` (no update, no decay)."""
    is_none = lambda x: x is None
    if not any(leaf is None for leaf in jax.tree.leaves(updates, is_leaf=is_none)):
        return params
    try:
        return jax.tree.map(lambda g, p: None if g is None else p, updates, params, is_leaf=is_none)
    except ValueError:  # the structures differ elsewhere too: reported by check_tree_matches
        v.check_tree_matches(fn, updates, params, ref_name="params")
        raise
