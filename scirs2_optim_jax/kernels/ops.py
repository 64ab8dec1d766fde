"""The fused steps as JAX operations: groups of leaves go to one FFI call each.

Every call updates the moments in place (their outputs alias their inputs) and, when
``apply`` is set, the parameters too; with buffers donated by the caller's ``jit`` no copy
is made. Leaves are passed in groups of at most :data:`GROUP_SIZE`: XLA's compile time grows
faster than linearly with the operand count of one call (2,000 leaves in one call took
minutes to compile here), while the per-call cost is a few microseconds.

The moments come in one of two layouts: one array per leaf (the tree layout, as the chained
transforms keep them), or one flat buffer per group holding that group's leaves back to back
(the grouped layout, :func:`group_bounds`), which has far fewer arrays for JAX to pass in
and out of every step.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scirs2_optim_jax.kernels.build import load_kernels

__all__ = ["GROUP_SIZE", "fused_step", "group_bounds", "hyper_vector"]

GROUP_SIZE = 64


def group_bounds(num_leaves: int) -> list[tuple[int, int]]:
    """``[start, end)`` leaf ranges of the groups, in ``jax.tree.leaves`` order.

    Example:
        >>> group_bounds(130)
        [(0, 64), (64, 128), (128, 130)]
    """
    return [(s, min(s + GROUP_SIZE, num_leaves)) for s in range(0, num_leaves, GROUP_SIZE)]


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
    decay: Sequence[bool],
    grouped: bool = False,
) -> tuple[list[jax.Array], list[jax.Array], list[jax.Array]]:
    """One Adam (``kind="adam"``) or LAMB (``kind="lamb"``) step over float32 leaves.

    Args:
        kind: ``"adam"`` (Adam/AdamW) or ``"lamb"`` (per-leaf trust ratio).
        hyper: from :func:`hyper_vector`.
        params, grads: float32 leaves, equal shapes leaf by leaf.
        mu, nu: the moments: one float32 array per leaf, or with ``grouped`` one flat buffer
            per group of :func:`group_bounds`.
        apply: return new parameters (True) or optax updates (False).
        decay: per leaf, whether ``weight_decay * params`` joins its direction.
        grouped: the layout of ``mu`` and ``nu``.

    Returns:
        ``(outputs, mu, nu)``: new parameters or updates, and the new moments (same layout).

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
    for index, (start, end) in enumerate(group_bounds(len(params))):
        p, g = list(params[start:end]), list(grads[start:end])
        count = end - start
        flags = jnp.asarray(np.array(decay[start:end], np.uint8))
        moments = [mu[index], nu[index]] if grouped else [*mu[start:end], *nu[start:end]]
        shapes = [jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in p + moments]
        # Operands: hyper, flags, params, grads, moments. Results: outputs, moments.
        first_moment = 2 + 2 * count
        aliases = {first_moment + i: count + i for i in range(len(moments))}
        if apply:
            aliases.update({2 + i: i for i in range(count)})
        call = jax.ffi.ffi_call(
            target, shapes, input_output_aliases=aliases, vmap_method="sequential"
        )
        results = call(hyper, flags, *p, *g, *moments, apply=apply, grouped=grouped)
        outs += results[:count]
        half = len(moments) // 2
        new_mu += results[count : count + half]
        new_nu += results[count + half :]
    return outs, new_mu, new_nu
