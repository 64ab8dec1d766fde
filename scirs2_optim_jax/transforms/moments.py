"""Shared arithmetic for exponential moving averages and bias correction.

Kept separate from the transforms so every adaptive method updates its moments the same
way: computed in the wider of the gradient and moment dtypes, stored in the moment dtype,
and with hyperparameters cast explicitly (the tests run with strict dtype promotion).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def default_float() -> jnp.dtype:
    """The default floating dtype: float32, or float64 when ``jax_enable_x64`` is set."""
    return jnp.dtype(jnp.result_type(float))


def _inexact(dtype: Any) -> jnp.dtype:
    dtype = jnp.dtype(dtype)
    return dtype if jnp.issubdtype(dtype, jnp.inexact) else default_float()


def compute_dtype(*dtypes: Any) -> jnp.dtype:
    """The dtype the arithmetic runs in: the widest of the given floating dtypes.

    Decided here rather than by ``jnp.promote_types``, which refuses bf16 with fp32 under
    strict promotion; two different 16-bit types (bf16, fp16) meet in float32. If any dtype
    is complex, so is the result, with a real part as wide as the widest real part; integer
    and bool dtypes count as the default float dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> compute_dtype(jnp.bfloat16, jnp.float16), compute_dtype(jnp.float32, jnp.complex64)
        (dtype('float32'), dtype('complex64'))
    """
    inexact = [_inexact(dtype) for dtype in dtypes]
    if any(jnp.issubdtype(dtype, jnp.complexfloating) for dtype in inexact):
        widths = [
            dtype.itemsize // 2 if jnp.issubdtype(dtype, jnp.complexfloating) else dtype.itemsize
            for dtype in inexact
        ]
        return jnp.dtype(jnp.complex128 if max(widths) >= 8 else jnp.complex64)
    result = inexact[0]
    for dtype in inexact[1:]:
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
    return cast(new, moment.dtype)


def cast(x: jax.Array, dtype: Any) -> jax.Array:
    """``x.astype(dtype)``; a complex value cast to a real dtype keeps its real part.

    (JAX deprecates casting complex to real directly.)
    """
    dtype = jnp.dtype(dtype)
    if jnp.iscomplexobj(x) and not jnp.issubdtype(dtype, jnp.complexfloating):
        x = jnp.real(x)
    return x.astype(dtype)


def as_inexact(x: Any) -> jax.Array:
    """A leaf as an array of a floating (or complex) dtype.

    Python numbers and integer or bool arrays become the default float dtype, as optax's
    arithmetic would promote them; floating and complex arrays are returned as they are.
    """
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(default_float())


def as_inexact_tree(tree: Any) -> Any:
    """:func:`as_inexact` on every leaf (``None`` leaves stay ``None``)."""
    return jax.tree.map(as_inexact, tree)


def bias_correction(decay: Any, count: jax.Array) -> jax.Array:
    """``1 - decay**count`` in float32, so that low-precision moments never round it to 0."""
    return 1 - jnp.asarray(decay, jnp.float32) ** count.astype(jnp.float32)


def safe_increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the dtype's maximum instead of wrapping around."""
    limit = jnp.iinfo(count.dtype).max
    return jnp.where(count < limit, count + 1, limit).astype(count.dtype)


def state_dtype(param: Any, dtype: Any = None) -> jnp.dtype:
    """The dtype of a state leaf for ``param``: ``dtype``, else the parameter's own dtype
    (the default float dtype for an integer or Python-number parameter)."""
    if dtype is not None:
        return jnp.dtype(dtype)
    own = getattr(param, "dtype", None)
    return _inexact(own if own is not None else jnp.result_type(param))


def zeros_like_tree(params: Any, dtype: Any = None) -> Any:
    """Zeros shaped like ``params``, in ``dtype`` (default: :func:`state_dtype` of each leaf)."""
    return jax.tree.map(lambda p: jnp.zeros_like(p, dtype=state_dtype(p, dtype)), params)


def full_like_tree(params: Any, value: Any, dtype: Any = None) -> Any:
    """``value`` everywhere, shaped like ``params``, in ``dtype`` (default: as
    :func:`zeros_like_tree`)."""
    return jax.tree.map(lambda p: jnp.full_like(p, value, dtype=state_dtype(p, dtype)), params)
