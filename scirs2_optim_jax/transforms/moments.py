"""Shared arithmetic for exponential moving averages and bias correction.

Kept separate from the transforms so every adaptive method updates its moments the same
way: computed in the wider of the gradient and moment dtypes, stored in the moment dtype,
and with hyperparameters cast explicitly (the tests run with strict dtype promotion).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def compute_dtype(*dtypes: Any) -> jnp.dtype:
    """The dtype the arithmetic runs in: the widest of the given floating dtypes.

    Decided here rather than by ``jnp.promote_types``, which refuses bf16 with fp32 under
    strict promotion; two different 16-bit types (bf16, fp16) meet in float32.
    """
    result = jnp.dtype(dtypes[0])
    for dtype in map(jnp.dtype, dtypes[1:]):
        if dtype == result:
            continue
        if dtype.itemsize == result.itemsize:
            result = jnp.dtype(jnp.float32) if result.itemsize < 4 else result
        elif dtype.itemsize > result.itemsize:
            result = dtype
    return result


def as_dtype(value: Any, dtype: Any) -> Any:
    """Casts a hyperparameter to ``dtype``; Python numbers stay weakly typed and exact."""
    if isinstance(value, (int, float)):
        return value
    return jnp.asarray(value).astype(dtype)


def ema(g: jax.Array, moment: jax.Array, decay: Any, order: int) -> jax.Array:
    """``(1 - decay) * g**order + decay * moment``, returned in ``moment``'s dtype."""
    dtype = compute_dtype(g.dtype, moment.dtype)
    g = g.astype(dtype)
    power = g if order == 1 else jnp.real(g * jnp.conj(g)) if order == 2 else g**order
    new = as_dtype(1 - decay, dtype) * power + as_dtype(decay, dtype) * moment.astype(dtype)
    return new.astype(moment.dtype)


def bias_correction(decay: Any, count: jax.Array) -> jax.Array:
    """``1 - decay**count`` in float32, so that low-precision moments never round it to 0."""
    return 1 - jnp.asarray(decay, jnp.float32) ** count.astype(jnp.float32)


def safe_increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the dtype's maximum instead of wrapping around."""
    limit = jnp.iinfo(count.dtype).max
    return jnp.where(count < limit, count + 1, limit).astype(count.dtype)


def zeros_like_tree(params: Any, dtype: Any = None) -> Any:
    """Zeros shaped like ``params``, in ``dtype`` (default: each leaf's own dtype)."""
    return jax.tree.map(lambda p: jnp.zeros_like(p, dtype=dtype), params)


def full_like_tree(params: Any, value: Any, dtype: Any = None) -> Any:
    """``value`` everywhere, shaped like ``params``, in ``dtype`` (default: each leaf's)."""
    return jax.tree.map(lambda p: jnp.full_like(p, value, dtype=dtype), params)
