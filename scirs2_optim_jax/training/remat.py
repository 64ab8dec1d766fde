"""Gradient checkpointing (rematerialisation) for Flax NNX layer stacks.

The backward pass needs the forward pass's intermediate values. Without checkpointing they
are all kept alive until the backward pass reaches them; with it, a layer keeps only what its
*policy* says is worth saving and recomputes the rest during the backward pass, trading
compute for memory. The policies here are JAX's ``jax.checkpoint_policies`` under short
names:

========================  ==================================================================
name                      what a layer saves for the backward pass
========================  ==================================================================
``"none"``                everything (no checkpointing; the layer is not wrapped)
``"full"``                nothing: only the layer's input; everything else is recomputed
``"dots"``                the outputs of matrix multiplications; elementwise ops recomputed
``"dots_no_batch"``       matmul outputs without batch dimensions (weight-like products)
``"names"``               only values tagged with ``jax.ad_checkpoint.checkpoint_name``
                          whose names are listed in ``save_names``
========================  ==================================================================

Apply the policy to a stack of identical layers run under ``nnx.scan``
(:func:`create_stack` and :func:`apply_stack`): a scanned body is a boundary the compiler
keeps, so the saved residuals are exactly what the policy says. In a Python loop over
layers, XLA's CPU compiler may merge the recomputation back into the forward pass and the
saving disappears (measured with jax 0.10: the same temporary bytes with and without
checkpointing), so prefer the scanned stack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
from flax import nnx

from scirs2_optim_jax import validation as v

__all__ = ["REMAT_POLICIES", "apply_stack", "create_stack", "remat", "remat_policy"]

M = TypeVar("M", bound=nnx.Module)
F = TypeVar("F", bound=Callable[..., Any])

REMAT_POLICIES: tuple[str, ...] = ("none", "full", "dots", "dots_no_batch", "names")

_FIXED_POLICIES: dict[str, Callable[..., bool]] = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(name: str, *, save_names: Sequence[str] = ()) -> Callable[..., bool] | None:
    """Returns the ``jax.checkpoint`` policy called ``name`` (None for ``"none"``).

    Args:
        name: one of :data:`REMAT_POLICIES`.
        save_names: for ``"names"``: the ``checkpoint_name`` tags whose values are saved.

    Returns:
        A policy callable for ``jax.checkpoint``/``nnx.remat``, or None for ``"none"``
        (meaning: do not checkpoint).

    Raises:
        ValueError: for an unknown name, or ``save_names`` given with another policy.

    Example:
        >>> remat_policy("none") is None
        True
        >>> remat_policy("full") is jax.checkpoint_policies.nothing_saveable
        True
    """
    if name not in REMAT_POLICIES:
        raise ValueError(
            f"remat_policy: name must be one of {', '.join(REMAT_POLICIES)}, got {name!r}"
        )
    names = tuple(save_names)
    if any(not isinstance(n, str) for n in names):
        raise TypeError(f"remat_policy: save_names must be strings, got {save_names!r}")
    if name == "names":
        if not names:
            raise ValueError("remat_policy: policy 'names' needs at least one save_names entry")
        return jax.checkpoint_policies.save_only_these_names(*names)
    if names:
        raise ValueError(
            f"remat_policy: save_names only applies to the 'names' policy, got {names!r} "
            f"with {name!r}"
        )
    return None if name == "none" else _FIXED_POLICIES[name]


def remat(
    fn: F,
    policy: str = "full",
    *,
    save_names: Sequence[str] = (),
    prevent_cse: bool = True,
    static_argnums: int | tuple[int, ...] = (),
) -> F:
    """Wraps ``fn`` (which may take NNX modules) in ``nnx.remat`` with a named policy.

    Args:
        fn: the function to checkpoint, e.g. ``lambda block, x: block(x)``.
        policy: one of :data:`REMAT_POLICIES`; ``"none"`` returns ``fn`` itself.
        save_names: the tags saved by the ``"names"`` policy.
        prevent_cse: keep XLA from merging the recomputation into the forward pass; may be
            False inside ``scan``, which already prevents it.
        static_argnums: arguments treated as static (as in ``jax.checkpoint``).

    Returns:
        ``fn`` with the same signature, checkpointed.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> layer = nnx.Linear(3, 3, rngs=nnx.Rngs(0))
        >>> call = remat(lambda m, x: jnp.tanh(m(x)), "full")
        >>> bool(jnp.allclose(call(layer, jnp.ones((2, 3))), jnp.tanh(layer(jnp.ones((2, 3))))))
        True
    """
    chosen = remat_policy(policy, save_names=save_names)
    if chosen is None:
        return fn
    return nnx.remat(fn, policy=chosen, prevent_cse=prevent_cse, static_argnums=static_argnums)


def create_stack(make_layer: Callable[[nnx.Rngs], M], num_layers: int, rngs: nnx.Rngs) -> M:
    """Builds ``num_layers`` independently initialised copies of a layer, stacked on axis 0.

    The result is one module whose every parameter has a leading ``num_layers`` axis, ready
    for :func:`apply_stack` (``nnx.vmap`` over split random keys).

    Args:
        make_layer: builds one layer from an ``nnx.Rngs``.
        num_layers: how many layers, >= 1.
        rngs: the random streams; each layer gets its own split.

    Returns:
        The stacked module.

    Example:
        >>> from flax import nnx
        >>> stack = create_stack(lambda r: nnx.Linear(4, 4, rngs=r), 3, nnx.Rngs(0))
        >>> stack.kernel.shape
        (3, 4, 4)
    """
    num_layers = v.check_int("create_stack", "num_layers", num_layers, 1)
    v.check_callable("create_stack", "make_layer", make_layer)

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(layer_rngs: nnx.Rngs) -> M:
        return make_layer(layer_rngs)

    return make(rngs)


def apply_stack(
    stack: nnx.Module,
    x: Any,
    policy: str = "full",
    *,
    save_names: Sequence[str] = (),
    call: Callable[[Any, Any], Any] | None = None,
) -> Any:
    """Runs ``x`` through a stack from :func:`create_stack`, one layer per ``nnx.scan`` step.

    Each step is checkpointed with ``policy``, so the backward pass keeps only each layer's
    input (``"full"``) or what the policy saves, and recomputes the rest layer by layer.

    Args:
        stack: the stacked module.
        x: the input carried from layer to layer (an array or a pytree).
        policy: one of :data:`REMAT_POLICIES`.
        save_names: the tags saved by the ``"names"`` policy.
        call: how a layer is applied, ``call(layer, x) -> x`` (default: ``layer(x)``).

    Returns:
        The output of the last layer.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> stack = create_stack(lambda r: nnx.Linear(4, 4, rngs=r), 3, nnx.Rngs(0))
        >>> apply_stack(stack, jnp.ones((2, 4)), "full").shape
        (2, 4)
    """
    apply_layer = call if call is not None else (lambda layer, h: layer(h))
    body = remat(apply_layer, policy, save_names=save_names, prevent_cse=False)

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def step(layer: nnx.Module, h: Any) -> Any:
        return body(layer, h)

    return step(stack, x)
