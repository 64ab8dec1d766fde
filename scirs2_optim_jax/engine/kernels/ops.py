"""The fused steps as JAX operations: groups of leaves go to one FFI call each.

Every call updates the moments in place (their outputs alias their inputs) and, when
``apply`` is set, the parameters too; with buffers donated by the caller's ``jit`` no copy
is made. Leaves are passed in groups of at most :data:`GROUP_SIZE`: XLA's compile time grows
faster than linearly with the operand count of one call (2,000 leaves in one call took
minutes to compile here; 256 take about 0.3 s), and separate calls cost more than their few
microseconds of launch: config b of the benchmark (200 leaves) ran 0.5-1.6 ms faster in one
call than in four calls of 64.

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

from scirs2_optim_jax.engine.kernels.build import load_kernels
from scirs2_optim_jax.transforms.grouped import GROUP_SIZE, group_bounds

__all__ = ["GROUP_SIZE", "fused_step", "group_bounds", "hyper_vector", "sum_of_squares"]


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


def _require_kernels() -> None:
    if load_kernels() is None:
        raise RuntimeError(
            "fused CPU kernels are not available (no C++ compiler, a failed build, or "
            "SCIRS2_OPTIM_DISABLE_KERNELS set); see the log, or pass fused=False"
        )


@jax.custom_jvp
def _sum_of_squares(leaves: tuple[jax.Array, ...]) -> jax.Array:
    sums = []
    for start, end in group_bounds(len(leaves)):
        call = jax.ffi.ffi_call(
            "scirs2_sum_squares",
            jax.ShapeDtypeStruct((end - start,), jnp.float32),
            vmap_method="sequential",
        )
        sums.append(call(*leaves[start:end]))
    return jnp.concatenate(sums)


@_sum_of_squares.defjvp
def _sum_of_squares_jvp(
    primals: tuple[tuple[jax.Array, ...]], tangents: tuple[tuple[jax.Array, ...]]
) -> tuple[jax.Array, jax.Array]:
    (leaves,), (dleaves,) = primals, tangents
    # d/dx sum(x^2) = 2 sum(x dx), in XLA: only the forward value needs the kernel's speed.
    slopes = [2 * jnp.vdot(x, dx) for x, dx in zip(leaves, dleaves, strict=True)]
    return _sum_of_squares(leaves), jnp.stack(slopes).astype(jnp.float32)


def sum_of_squares(leaves: Sequence[jax.Array]) -> jax.Array:
    """``f32[n]``: the sum of squares of each float32 leaf, read once on all CPU threads.

    Each block of 1,024 elements is summed in 32 float lanes and the block sums are added in
    double, then rounded to float32 once; the result does not depend on thread scheduling.
    Differentiable (the derivative runs in XLA).

    Raises:
        RuntimeError: the kernels are not available on this machine.
        TypeError: a leaf is not float32.

    Example:
        >>> import jax.numpy as jnp
        >>> from scirs2_optim_jax.engine.kernels import kernels_available
        >>> not kernels_available() or sum_of_squares([jnp.array([3.0, 4.0])]).tolist() == [25.0]
        True
    """
    for i, x in enumerate(leaves):
        if jnp.result_type(x) != jnp.float32:
            raise TypeError(f"sum_of_squares: leaf {i} must be float32, got {jnp.result_type(x)}")
    if not leaves:
        return jnp.zeros([0], jnp.float32)
    _require_kernels()
    return _sum_of_squares(tuple(leaves))


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
    low_params: Sequence[jax.Array] | None = None,
) -> tuple[list[jax.Array], list[jax.Array], list[jax.Array], list[jax.Array]]:
    """One Adam (``kind="adam"``) or LAMB (``kind="lamb"``) step over float32 leaves.

    Args:
        kind: ``"adam"`` (Adam/AdamW) or ``"lamb"`` (per-leaf trust ratio).
        hyper: from :func:`hyper_vector`.
        params, grads: float32 parameters; float32 or bfloat16 gradients, equal shapes leaf
            by leaf.
        mu, nu: the moments: one float32 array per leaf, or with ``grouped`` one flat buffer
            per group of :func:`group_bounds`.
        apply: return new parameters (True) or optax updates (False).
        decay: per leaf, whether ``weight_decay * params`` joins its direction.
        grouped: the layout of ``mu`` and ``nu``.
        low_params: master-weights mode (``kind="adam"``, ``apply``): the model's parameters
            (bfloat16 or float32, leaf by leaf) of which ``params`` is the float32 master
            copy; each comes back as its new master, rounded to nearest even where it is
            bfloat16, written in the same pass. Their buffers are reused for the
            result, so donate them to the caller's ``jit`` (otherwise XLA copies them first).

    Returns:
        ``(outputs, mu, nu, low)``: new parameters or updates, the new moments (same layout)
        and the new model parameters (empty without ``low_params``).

    Raises:
        RuntimeError: the kernels are not available on this machine.
    """
    _require_kernels()
    master = low_params is not None
    if master:
        if kind != "adam" or not apply:
            raise ValueError("fused_step: low_params needs kind='adam' and apply=True")
        if len(low_params) != len(params):
            raise ValueError(
                f"fused_step: low_params has {len(low_params)} leaves, params {len(params)}"
            )
        for i, (low, p) in enumerate(zip(low_params, params, strict=True)):
            dtype = jnp.result_type(low)
            if dtype not in (jnp.bfloat16, jnp.float32) or jnp.shape(low) != jnp.shape(p):
                raise ValueError(
                    f"fused_step: low_params[{i}] must be bfloat16 or float32 of shape "
                    f"{jnp.shape(p)}, got {dtype}{list(jnp.shape(low))}"
                )
    target = {"adam": "scirs2_adam_step", "lamb": "scirs2_lamb_step"}[kind]
    outs: list[jax.Array] = []
    new_mu: list[jax.Array] = []
    new_nu: list[jax.Array] = []
    new_low: list[jax.Array] = []
    for index, (start, end) in enumerate(group_bounds(len(params))):
        p, g = list(params[start:end]), list(grads[start:end])
        low = list(low_params[start:end]) if master else []
        count = end - start
        flags = jnp.asarray(np.array(decay[start:end], np.uint8))
        moments = [mu[index], nu[index]] if grouped else [*mu[start:end], *nu[start:end]]
        shapes = [jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in p + moments]
        shapes += [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in low]
        # Operands: hyper, flags, params, grads, moments, low. Results: outputs, moments, low.
        first_moment = 2 + 2 * count
        aliases = {first_moment + i: count + i for i in range(len(moments))}
        first_low = first_moment + len(moments)
        aliases.update({first_low + i: count + len(moments) + i for i in range(len(low))})
        if apply:
            aliases.update({2 + i: i for i in range(count)})
        call = jax.ffi.ffi_call(
            target, shapes, input_output_aliases=aliases, vmap_method="sequential"
        )
        results = call(
            hyper, flags, *p, *g, *moments, *low, apply=apply, grouped=grouped, master=master
        )
        outs += results[:count]
        half = len(moments) // 2
        new_mu += results[count : count + half]
        new_nu += results[count + half : count + len(moments)]
        new_low += results[count + len(moments) :]
    return outs, new_mu, new_nu, new_low
