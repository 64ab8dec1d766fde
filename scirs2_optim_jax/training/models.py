"""Demo models for the training job: a small Flax NNX MLP classifier."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
from flax import nnx

__all__ = ["MLP"]


class MLP(nnx.Module):
    """A ReLU multilayer perceptron that maps ``[batch, in_features]`` to class logits.

    Args:
        in_features: width of the input (64 for the 8x8 digits).
        hidden: widths of the hidden layers, each followed by a ReLU.
        num_classes: number of output logits.
        rngs: the ``nnx.Rngs`` that initialise the weights; ``nnx.Rngs(seed)`` makes the
            initial parameters a function of the seed alone.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> model = MLP(64, (128, 128), 10, rngs=nnx.Rngs(0))
        >>> model(jnp.zeros((2, 64))).shape
        (2, 10)
    """

    def __init__(
        self,
        in_features: int = 64,
        hidden: Sequence[int] = (128, 128),
        num_classes: int = 10,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        widths = [in_features, *hidden]
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(widths)])
        self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.hidden:
            x = jax.nn.relu(layer(x))
        return self.head(x)
