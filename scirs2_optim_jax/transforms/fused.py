"""Deprecated: the one-pass step moved to :mod:`scirs2_optim_jax.engine`.

``apply_gradients`` is ``scirs2_optim_jax.apply_gradients`` (or
``scirs2_optim_jax.engine.apply_gradients``); ``chain`` is
``scirs2_optim_jax.transforms.chain``; the engine no longer reads attributes hung on an
``update`` function, so ``FusedUpdate`` and ``FactorUpdate`` are plain optax update
callables kept for old imports.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax

from scirs2_optim_jax.engine.adam_family import kernel_applies
from scirs2_optim_jax.engine.onepass import apply_gradients
from scirs2_optim_jax.optimizers import _adam_family
from scirs2_optim_jax.transforms.combine import chain
from scirs2_optim_jax.transforms.grouped import GroupedAdamState

__all__ = [
    "FactorUpdate",
    "FusedUpdate",
    "GroupedAdamState",
    "apply_gradients",
    "chain",
    "fused_adam_family",
    "kernel_applies",
]

warnings.warn(
    "scirs2_optim_jax.transforms.fused is deprecated: use scirs2_optim_jax.apply_gradients "
    "and scirs2_optim_jax.engine.one_pass_step",
    DeprecationWarning,
    stacklevel=2,
)


class FusedUpdate:
    """Deprecated: an optax ``update`` callable; the engine no longer reads its attributes."""

    def __init__(
        self,
        update: Callable[..., tuple[Any, Any]],
        apply: Callable[..., tuple[Any, Any]],
        to_canonical: Callable[[Any, Any], Any],
        from_canonical: Callable[[Any, Any], Any],
        apply_master: Callable[..., Any] | None = None,
    ) -> None:
        self._update = update
        self.apply = apply
        self.to_canonical = to_canonical
        self.from_canonical = from_canonical
        self.apply_master = apply_master

    def __call__(self, updates: Any, state: Any, params: Any = None, **extra: Any) -> Any:
        del extra
        return self._update(updates, state, params)


class FactorUpdate:
    """Deprecated: an optax ``update`` callable that multiplies the tree by ``factor``."""

    def __init__(self, factor: Callable[[Any, Any, Any], tuple[jax.Array, Any]]) -> None:
        self.factor = factor

    def __call__(self, updates: Any, state: Any, params: Any = None, **extra: Any) -> Any:
        del extra
        factor, state = self.factor(updates, state, params)
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state


def fused_adam_family(
    name: str,
    parts: Sequence[optax.GradientTransformation],
    *,
    fused: bool | None,
    state_layout: str = "tree",
    **ignored: Any,
) -> optax.GradientTransformationExtraArgs:
    """Deprecated: ``parts`` chained as the aliases chain them (the engine reads the parts'
    own descriptions, so the other hyperparameters are not needed)."""
    del ignored
    return _adam_family(name, *parts, fused=fused, state_layout=state_layout)
