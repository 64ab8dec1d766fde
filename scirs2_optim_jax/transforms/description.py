"""What a transformation computes, as typed data that other layers can read.

A factory of this package returns an optax transformation whose ``description`` names the
transformation and its hyperparameters (:class:`ScaleByAdam`, :class:`AddDecayedWeights`,
...). The transformation itself is unchanged: same ``init``, same ``update``, same state.
The description exists so that an accelerator (the one-pass engine,
:mod:`scirs2_optim_jax.engine`) can recognise a chain it knows how to run faster, from the
outside, without the core knowing the engine exists. Wrapping a transformation in another
optax combinator drops its description, which only means the plain ``update`` runs.

Example:
    >>> from scirs2_optim_jax.transforms import clip_by_global_norm
    >>> describe_of(clip_by_global_norm(1.0))
    ClipByGlobalNorm(max_norm=1.0, axis_name=None, fused=None)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import optax

__all__ = [
    "AddDecayedWeights",
    "Chain",
    "ClipByGlobalNorm",
    "DescribedTransformation",
    "Description",
    "MasterWeights",
    "Offload",
    "ScaleByAdam",
    "ScaleByLearningRate",
    "ScaleByTrustRatio",
    "describe",
    "describe_of",
]


@dataclasses.dataclass(frozen=True)
class ScaleByAdam:
    """:func:`~scirs2_optim_jax.transforms.scale_by_adam` with these arguments."""

    b1: Any
    b2: Any
    eps: Any
    eps_root: Any
    nesterov: bool


@dataclasses.dataclass(frozen=True)
class AddDecayedWeights:
    """:func:`~scirs2_optim_jax.transforms.add_decayed_weights` with these arguments."""

    weight_decay: Any
    mask: Any


@dataclasses.dataclass(frozen=True)
class ScaleByTrustRatio:
    """:func:`~scirs2_optim_jax.transforms.scale_by_trust_ratio` (LAMB) with these arguments."""

    min_norm: Any
    trust_coefficient: Any
    eps: Any
    mask: Any
    axis_name: Any


@dataclasses.dataclass(frozen=True)
class ScaleByLearningRate:
    """:func:`~scirs2_optim_jax.transforms.scale_by_learning_rate` with these arguments."""

    learning_rate: Any
    flip_sign: bool


@dataclasses.dataclass(frozen=True)
class ClipByGlobalNorm:
    """:func:`~scirs2_optim_jax.transforms.clip_by_global_norm` with these arguments."""

    max_norm: Any
    axis_name: Any
    fused: bool | None


@dataclasses.dataclass(frozen=True)
class Chain:
    """:func:`~scirs2_optim_jax.transforms.chain` of ``parts``.

    ``fused`` is the option an alias was given for the one-pass step (None for a plain
    chain): see :func:`~scirs2_optim_jax.optimizers.adamw`.
    """

    parts: tuple[optax.GradientTransformation, ...]
    name: str = "chain"
    fused: bool | None = None


@dataclasses.dataclass(frozen=True)
class MasterWeights:
    """:func:`~scirs2_optim_jax.precision.with_master_weights` of ``inner``."""

    inner: optax.GradientTransformation
    master_dtype: Any


@dataclasses.dataclass(frozen=True)
class Offload:
    """:func:`~scirs2_optim_jax.engine.offload` of ``inner``: its state in host memory,
    the update computed on the ``"device"`` (state streamed) or on the ``"host"``."""

    inner: optax.GradientTransformation
    compute: Literal["device", "host"]


Description = (
    ScaleByAdam
    | AddDecayedWeights
    | ScaleByTrustRatio
    | ScaleByLearningRate
    | ClipByGlobalNorm
    | Chain
    | MasterWeights
    | Offload
)


class DescribedTransformation(optax.GradientTransformationExtraArgs):
    """An ``optax.GradientTransformationExtraArgs`` that also carries its ``description``.

    It is the optax NamedTuple ``(init, update)`` in every respect (unpacking, ``isinstance``,
    composition); ``description`` is extra, read with :func:`describe_of`.
    """

    description: Description | None

    def __new__(
        cls,
        init: Callable[[optax.Params], optax.OptState],
        update: Callable[..., tuple[optax.Updates, optax.OptState]],
        description: Description | None = None,
    ) -> DescribedTransformation:
        self = super().__new__(cls, init, update)
        self.description = description
        return self


def describe(tx: optax.GradientTransformation, description: Description) -> DescribedTransformation:
    """``tx`` (unchanged in behaviour) with ``description`` attached.

    Example:
        >>> import optax
        >>> tx = describe(optax.identity(), ScaleByLearningRate(0.1, True))
        >>> describe_of(tx).learning_rate
        0.1
    """
    tx = optax.with_extra_args_support(tx)
    return DescribedTransformation(tx.init, tx.update, description)


def describe_of(tx: Any) -> Description | None:
    """The description ``tx`` carries, or None for any other transformation.

    Example:
        >>> import optax
        >>> describe_of(optax.sgd(0.1)) is None
        True
    """
    if isinstance(tx, DescribedTransformation):
        return tx.description
    return None
