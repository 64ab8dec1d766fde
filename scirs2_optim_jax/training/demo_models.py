"""Named models the planner knows, described by shapes alone (``nnx.eval_shape``).

- ``digits_mlp``: the 64-128-128-10 MLP of the demo training job (``scirs2-optim train``);
- ``transformer``: a decoder-only language model, 12 layers of width 512 (8 heads, MLP
  2048, vocabulary 32,000, context 512, tied embeddings), its layers stacked and scanned
  with :func:`~scirs2_optim_jax.training.remat.apply_stack` so gradient checkpointing
  applies per layer.

They live with the training job's models; ``scirs2-optim plan --model NAME`` plans them.

Each :class:`DemoModel` carries its abstract parameters, a loss ``loss_fn(params, batch)``
and ``batch_for(b)`` (an abstract batch of ``b`` examples), which is all
:func:`~scirs2_optim_jax.config.profile_activations` and
:func:`~scirs2_optim_jax.config.compiled_train_step_memory` need; nothing is allocated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from scirs2_optim_jax.training.models import MLP
from scirs2_optim_jax.training.remat import apply_stack, create_stack

__all__ = ["DEMO_MODELS", "DemoModel", "TransformerLM", "demo_model"]

DEMO_MODELS: tuple[str, ...] = ("digits_mlp", "transformer")


@dataclass(frozen=True)
class DemoModel:
    """A model described by shapes: parameters, loss and batches.

    Attributes:
        name: the model's name in :data:`DEMO_MODELS`.
        description: one line.
        params: the parameter tree as ``jax.ShapeDtypeStruct`` leaves.
        loss_fn: ``loss_fn(params, batch) -> scalar float32 loss``; runs in the dtype of
            the parameters it is given (bf16 params: bf16 compute).
        batch_for: ``batch_for(b)`` -> an abstract batch of ``b`` examples.
        profile_batch_sizes: two batch sizes large enough for a clean linear fit of the
            activation memory (small batches are dominated by fixed workspace).
    """

    name: str
    description: str
    params: Any
    loss_fn: Callable[[Any, Any], jax.Array]
    batch_for: Callable[[int], Any]
    profile_batch_sizes: tuple[int, int]


def _first_float_dtype(params: Any) -> Any:
    for leaf in jax.tree.leaves(params):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.dtype
    return jnp.float32


class _Block(nnx.Module):
    """Pre-norm transformer block: causal self-attention and a GELU MLP."""

    def __init__(self, width: int, heads: int, hidden: int, *, rngs: nnx.Rngs) -> None:
        self.norm1 = nnx.LayerNorm(width, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(
            num_heads=heads, in_features=width, decode=False, rngs=rngs
        )
        self.norm2 = nnx.LayerNorm(width, rngs=rngs)
        self.up = nnx.Linear(width, hidden, rngs=rngs)
        self.down = nnx.Linear(hidden, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        mask = nnx.make_causal_mask(x[..., 0], dtype=jnp.bool_)
        x = x + self.attention(self.norm1(x), mask=mask)
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class TransformerLM(nnx.Module):
    """A small decoder-only language model with scanned, optionally checkpointed layers.

    Args:
        vocab: vocabulary size.
        width: model width.
        layers: number of blocks.
        heads: attention heads.
        hidden: MLP width.
        context: maximum sequence length (learned positions).
        remat_policy: a :data:`~scirs2_optim_jax.training.remat.REMAT_POLICIES` name.
        rngs: random streams.

    Example:
        >>> from flax import nnx
        >>> model = nnx.eval_shape(lambda: TransformerLM(100, 32, 2, 4, 64, 16, rngs=nnx.Rngs(0)))
        >>> model.blocks.up.kernel.shape  # two stacked layers
        (2, 32, 64)
    """

    def __init__(
        self,
        vocab: int,
        width: int,
        layers: int,
        heads: int,
        hidden: int,
        context: int,
        remat_policy: str = "none",
        *,
        rngs: nnx.Rngs,
    ) -> None:
        self.embed = nnx.Embed(vocab, width, rngs=rngs)
        self.positions = nnx.Param(jax.random.normal(rngs.params(), (context, width)) * 0.02)
        self.blocks = create_stack(lambda r: _Block(width, heads, hidden, rngs=r), layers, rngs)
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.remat_policy = remat_policy

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens)
        x = x + self.positions[: tokens.shape[1]].astype(x.dtype)
        x = apply_stack(self.blocks, x, self.remat_policy)
        return self.embed.attend(self.norm(x))


def _digits_mlp() -> DemoModel:
    graphdef, params = nnx.split(nnx.eval_shape(lambda: MLP(rngs=nnx.Rngs(0))))

    def loss_fn(p: Any, batch: Any) -> jax.Array:
        x, y = batch
        logits = nnx.merge(graphdef, p)(x.astype(_first_float_dtype(p)))
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()

    def batch_for(b: int) -> Any:
        return (jax.ShapeDtypeStruct((b, 64), jnp.float32), jax.ShapeDtypeStruct((b,), jnp.int32))

    return DemoModel(
        "digits_mlp",
        "64-128-128-10 MLP of the digits demo job",
        params,
        loss_fn,
        batch_for,
        (256, 512),
    )


def _transformer(remat_policy: str) -> DemoModel:
    vocab, context = 32_000, 512

    def build() -> TransformerLM:
        return TransformerLM(vocab, 512, 12, 8, 2048, context, remat_policy, rngs=nnx.Rngs(0))

    graphdef, params = nnx.split(nnx.eval_shape(build))

    def loss_fn(p: Any, tokens: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, p)
        logits = model(tokens[:, :-1]).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    def batch_for(b: int) -> Any:
        return jax.ShapeDtypeStruct((b, context + 1), jnp.int32)

    return DemoModel(
        "transformer",
        f"decoder-only LM: 12 layers, width 512, 8 heads, vocab {vocab:,}, context {context}",
        params,
        loss_fn,
        batch_for,
        (1, 2),
    )


def demo_model(name: str, *, remat_policy: str = "none") -> DemoModel:
    """Returns the named demo model, by shapes only.

    Args:
        name: one of :data:`DEMO_MODELS`.
        remat_policy: gradient-checkpointing policy of the transformer's layers.

    Returns:
        A :class:`DemoModel`.

    Example:
        >>> model = demo_model("digits_mlp")
        >>> sum(x.size for x in jax.tree.leaves(model.params))
        26122
    """
    if name == "digits_mlp":
        return _digits_mlp()
    if name == "transformer":
        return _transformer(remat_policy)
    raise ValueError(f"demo_model: name must be one of {', '.join(DEMO_MODELS)}, got {name!r}")
