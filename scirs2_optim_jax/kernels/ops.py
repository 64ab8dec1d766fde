"""The fused steps as JAX operations: groups of leaves go to one FFI call each.

Every call updates the moments in place (their outputs alias their inputs) and, when
``apply`` is set, the parameters too; with buffers donated by the caller's ``jit`` no copy
is made. Leaves are passed in groups of at most :data:`GROUP_SIZE`: XLA's compile time grows
faster than linearly with the operand count of one call (2,000 leaves in one call took
minutes to compile here), while the per-call cost is a few microseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from scirs2_optim_jax.kernels.build import load_kernels

__all__ = ["GROUP_SIZE", "fused_step", "hyper_vector"]

GROUP_SIZE = 64


def hyper_vector(
    neg_lr: jax.Array,
    b1: float | jax.Array,
    b2: float | jax.Array,
    eps: float | jax.Array,
    eps_root: float | jax.Array,
    weight_decay: jax.Array,
    correction1: jax.Array,
    correction2: jax.Array,
    grad_scale: jax.Array | float = 1.0,
) -> jax.Array:
    """The kernels' ``f32[11]`` operand, in the order ``cpu_kernels.cc`` reads it.

    ``grad_scale`` multiplies the gradients before anything else (a clipping factor).

    Example:
        >>> hyper_vector(-0.1, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.1, 0.001).shape
        (11,)
    """
    # 1 - b is formed before the cast, as transforms.moments.ema forms it.
    values = (neg_lr, b1, 1 - b1, b2, 1 - b2, eps, eps_root, weight_decay)
    values += (correction1, correction2, grad_scale)
    return jnp.stack([jnp.asarray(x).astype(jnp.float32) for x in values])


def fused_step(
    kind: str,
    hyper: jax.Array,
    params: Sequence[jax.Array],
    grads: Sequence[jax.Array],
    mu: Sequence[jax.Array],
    nu: Sequence[jax.Array],
    *,
    apply: bool,
    decay: bool,
) -> tuple[list[jax.Array], list[jax.Array], list[jax.Array]]:
    """One Adam (``kind="adam"``) or LAMB (``kind="lamb"``) step over float32 leaves.

    Args:
        kind: ``"adam"`` (Adam/AdamW) or ``"lamb"`` (per-leaf trust ratio).
        hyper: from :func:`hyper_vector`.
        params, grads, mu, nu: float32 leaves, equal shapes leaf by leaf.
        apply: return new parameters (True) or optax updates (False).
        decay: add ``weight_decay * params`` to the direction of every leaf given.

    Returns:
        ``(outputs, mu, nu)``: new parameters or updates, and the new moments.

    Raises:
        RuntimeError: the kernels are not available on this machine.
    """
    if load_kernels() is None:
        raise RuntimeError(
            "fused CPU kernels are not available (no C++ compiler, a failed build, or "
            "SCIRS2_OPTIM_DISABLE_KERNELS set); see the log, or pass fused=False"
        )
    target = {"adam": "scirs2_adam_step", "lamb": "scirs2_lamb_step"}[kind]
    outs: list[jax.Array] = []
    new_mu: list[jax.Array] = []
    new_nu: list[jax.Array] = []
    for start in range(0, len(params), GROUP_SIZE):
        p = list(params[start : start + GROUP_SIZE])
        g = list(grads[start : start + GROUP_SIZE])
        m = list(mu[start : start + GROUP_SIZE])
        n = list(nu[start : start + GROUP_SIZE])
        count = len(p)
        shapes = [jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in p + m + n]
        # Operand 0 is hyper; then params, grads, mu, nu. Results: outputs, mu, nu.
        aliases = {1 + 2 * count + i: count + i for i in range(count)}
        aliases.update({1 + 3 * count + i: 2 * count + i for i in range(count)})
        if apply:
            aliases.update({1 + i: i for i in range(count)})
        call = jax.ffi.ffi_call(
            target, shapes, input_output_aliases=aliases, vmap_method="sequential"
        )
        results = call(hyper, *p, *g, *m, *n, apply=apply, decay=decay)
        outs += results[:count]
        new_mu += results[count : 2 * count]
        new_nu += results[2 * count :]
    return outs, new_mu, new_nu
