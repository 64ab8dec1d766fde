"""Composition: :func:`chain`, ``optax.chain`` that keeps what its parts compute."""

from __future__ import annotations

import optax

from scirs2_optim_jax.transforms.description import Chain, DescribedTransformation, describe

__all__ = ["chain"]


def chain(*transforms: optax.GradientTransformation) -> DescribedTransformation:
    """``optax.chain(*transforms)``, carrying the list of its parts as its description.

    Same ``init``, same ``update``, same state as ``optax.chain``. The only difference is the
    :class:`~scirs2_optim_jax.transforms.description.Chain` description, through which
    :func:`scirs2_optim_jax.apply_gradients` recognises a chain it can run in one pass (for
    example ``chain(clip_by_global_norm(1.0), adamw(1e-3))``). ``optax.chain`` of the same
    parts gives equal results, through ``update`` + ``optax.apply_updates``.

    Example:
        >>> import jax.numpy as jnp
        >>> from scirs2_optim_jax import optimizers
        >>> from scirs2_optim_jax.transforms import clip_by_global_norm
        >>> tx = chain(clip_by_global_norm(1.0), optimizers.sgd(1.0))
        >>> updates, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init({"w": jnp.zeros(2)}))
        >>> [round(float(x), 4) for x in updates["w"]]
        [-0.6, -0.8]
    """
    return describe(optax.chain(*transforms), Chain(tuple(transforms)))
