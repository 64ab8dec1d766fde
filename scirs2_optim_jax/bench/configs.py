"""Benchmark configurations: parameter trees and the optimizer pairs (ours, optax) to time.

Each config names a tree builder and how to build our step and optax's step for the same
optimizer and hyperparameters. ``bytes_per_param`` is the least memory traffic the step must
cause (reads + writes per parameter), from which the bandwidth bound is computed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scirs2_optim_jax import optimizers, precision, schedules
from scirs2_optim_jax.transforms import clipping
from scirs2_optim_jax.transforms.combine import chain

__all__ = ["CONFIGS", "BenchConfig", "leaf_shapes", "transformer_shapes"]

TOTAL_PARAMS = 10_000_000
TOTAL_STEPS = 10_000  # horizon of the warmup-cosine schedules


def leaf_shapes(total: int, num_leaves: int) -> list[tuple[int, ...]]:
    """Shapes of ``num_leaves`` leaves holding ``total`` parameters, like a network's tree.

    Three in four leaves are matrices (kernels) with 128 or more columns, as layers have;
    one in four are vectors (biases, scales). Matrix sizes are rounded down to whole rows
    and the last vector absorbs the remainder, so the sizes add up to exactly ``total``.
    (Narrow matrices are not harmless: XLA CPU vectorises along the minor axis, and a
    16-column matrix runs AdamW about 2x slower than the same data with 128 columns.)

    Example:
        >>> shapes = leaf_shapes(100_000, 8)
        >>> sum(math.prod(s) for s in shapes), len(shapes), shapes[0]
        (100000, 8, (97, 128))
    """
    if num_leaves < 4:
        raise ValueError(f"leaf_shapes: num_leaves must be >= 4, got {num_leaves}")
    base = total // num_leaves
    cols = 128
    while cols * 2 <= 1024 and base // (cols * 2) >= cols * 2:
        cols *= 2
    shapes: list[tuple[int, ...]] = []
    for i in range(num_leaves - 1):
        if i % 4 == 3:
            shapes.append((base,))
        else:
            shapes.append((max(1, base // cols), cols))
    used = sum(math.prod(s) for s in shapes)
    shapes.append((total - used,))
    return shapes


def transformer_shapes(
    num_layers: int = 12, width: int = 512, vocab: int = 32_000, mlp_ratio: int = 4
) -> dict[str, Any]:
    """Parameter shapes of a Flax Linen decoder-only transformer (untied embeddings).

    Computed with ``jax.eval_shape`` of the real module's ``init``: nothing is allocated.

    Example:
        >>> tree = transformer_shapes(num_layers=1, width=8, vocab=16)
        >>> sorted(tree)
        ['block_0', 'embed', 'final_norm', 'unembed']
    """
    from flax import linen as nn

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            h = nn.LayerNorm(name="norm_attention")(x)
            h = nn.MultiHeadDotProductAttention(num_heads=max(1, width // 64), name="attention")(
                h, h
            )
            x = x + h
            h = nn.LayerNorm(name="norm_mlp")(x)
            h = nn.Dense(mlp_ratio * width, name="mlp_in")(h)
            h = nn.Dense(width, name="mlp_out")(nn.gelu(h))
            return x + h

    class Transformer(nn.Module):
        @nn.compact
        def __call__(self, tokens: jax.Array) -> jax.Array:
            x = nn.Embed(vocab, width, name="embed")(tokens)
            for i in range(num_layers):
                x = Block(name=f"block_{i}")(x)
            x = nn.LayerNorm(name="final_norm")(x)
            return nn.Dense(vocab, use_bias=False, name="unembed")(x)

    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    variables = jax.eval_shape(Transformer().init, jax.random.key(0), tokens)
    return variables["params"]


def _materialise(shapes: Any, dtype: Any, seed: int) -> Any:
    """Deterministic small random values (numpy, so no compile per leaf) in the given shapes."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(
            (rng.standard_normal(s.shape if hasattr(s, "shape") else s, np.float32) * 0.02).astype(
                jnp.dtype(dtype)
            )
        ),
        shapes,
        is_leaf=lambda s: isinstance(s, tuple) or hasattr(s, "shape"),
    )


def _list_tree(num_leaves: int) -> Callable[[Any, int], Any]:
    shapes = leaf_shapes(TOTAL_PARAMS, num_leaves)
    return lambda dtype, seed: {
        f"leaf_{i:04d}": leaf for i, leaf in enumerate(_materialise(shapes, dtype, seed))
    }


def _transformer_tree(dtype: Any, seed: int) -> Any:
    return _materialise(transformer_shapes(), dtype, seed)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One row of the benchmark table."""

    name: str
    description: str
    make_params: Callable[[Any, int], Any]  # (dtype, seed) -> params tree
    ours: Callable[[], optax.GradientTransformation]
    reference: Callable[[], optax.GradientTransformation]
    bytes_per_param: int
    param_dtype: Any = jnp.float32
    master_weights: bool = False  # bf16 params; fp32 master copy + moments (optax side by hand)
    accelerator_only: bool = False


def _warmup_cosine() -> Callable[[jax.Array], jax.Array]:
    return schedules.warmup_cosine(1e-3, TOTAL_STEPS)


def _optax_warmup_cosine() -> Callable[[jax.Array], jax.Array]:
    warmup = math.ceil(0.06 * TOTAL_STEPS)
    return optax.warmup_cosine_decay_schedule(0.0, 1e-3, warmup, TOTAL_STEPS, 1e-5)


ADAMW = {"learning_rate": 1e-3, "weight_decay": 1e-4}
# AdamW reads params, grads, mu, nu and writes params, mu, nu: 7 x 4 bytes. Clipping by the
# global norm needs one more read of the gradients. LAMB needs the norm of the whole update
# direction before any parameter can move, so at least a second pass over params and moments.
ADAMW_BYTES = 28


CLIP_ADAMW_BYTES = 32
LAMB_BYTES = 40
# ADOPT reads params, grads, mu, nu and writes params, mu, nu, as AdamW. Schedule-free AdamW
# reads y (the params), grads, z, nu and writes y, z, nu: the same 7 x 4 bytes.
ADOPT_BYTES = 28
SCHEDULE_FREE_BYTES = 28
SCHEDULE_FREE = {"learning_rate": 1e-3, "warmup_steps": 100, "weight_decay": 1e-4}
# Muon reads params, grads and the momentum, writes params and momentum, and must write
# the normalised momentum and read it back for the Newton-Schulz iteration: 7 x 4 bytes (its
# matmuls make it compute-bound in practice). Adafactor (with momentum, as big_vision runs
# it) needs the gradient three times (row/column sums; the update's and the parameters' RMS;
# the update itself), the parameters twice, the momentum read and written and the
# parameters written: 8 x 4 bytes; the factored moments are negligible.
MUON_BYTES = 28
ADAFACTOR_BYTES = 32
MUON = {"learning_rate": 1e-3, "weight_decay": 1e-4}
ADAFACTOR = {"learning_rate": 1e-3, "momentum": 0.9}


def _configs() -> dict[str, BenchConfig]:
    configs = [
        BenchConfig(
            "a",
            "adamw, 10M params in 20 leaves",
            _list_tree(20),
            lambda: optimizers.adamw(**ADAMW),
            lambda: optax.adamw(**ADAMW),
            ADAMW_BYTES,
        ),
        BenchConfig(
            "b",
            "adamw, 10M in 200 leaves",
            _list_tree(200),
            lambda: optimizers.adamw(**ADAMW),
            lambda: optax.adamw(**ADAMW),
            ADAMW_BYTES,
        ),
        BenchConfig(
            "c",
            "adamw, 10M in 2,000 leaves",
            _list_tree(2000),
            lambda: optimizers.adamw(**ADAMW),
            lambda: optax.adamw(**ADAMW),
            ADAMW_BYTES,
        ),
        BenchConfig(
            "d",
            "clip(1.0) + adamw + warmup-cosine, 200 leaves",
            _list_tree(200),
            lambda: chain(
                clipping.clip_by_global_norm(1.0),
                optimizers.adamw(_warmup_cosine(), weight_decay=1e-4),
            ),
            lambda: optax.chain(
                optax.clip_by_global_norm(1.0),
                optax.adamw(_optax_warmup_cosine(), weight_decay=1e-4),
            ),
            CLIP_ADAMW_BYTES,
        ),
        BenchConfig(
            "e",
            "lamb, 200 leaves",
            _list_tree(200),
            lambda: optimizers.lamb(1e-3, weight_decay=1e-4),
            lambda: optax.lamb(1e-3, weight_decay=1e-4),
            LAMB_BYTES,
        ),
        BenchConfig(
            "f",
            "clip + lamb + warmup-cosine, 2,000 leaves",
            _list_tree(2000),
            lambda: chain(
                clipping.clip_by_global_norm(1.0),
                optimizers.lamb(_warmup_cosine(), weight_decay=1e-4),
            ),
            lambda: optax.chain(
                optax.clip_by_global_norm(1.0),
                optax.lamb(_optax_warmup_cosine(), weight_decay=1e-4),
            ),
            LAMB_BYTES + 4,
        ),
        BenchConfig(
            "g",
            "adamw, bf16 params, fp32 master weights + moments, 200 leaves",
            _list_tree(200),
            lambda: precision.with_master_weights(optimizers.adamw(**ADAMW)),
            lambda: optax.adamw(**ADAMW),
            # read bf16 grads (2), master, mu, nu (12); write master, mu, nu (12), bf16 params (2)
            ADAMW_BYTES,
            param_dtype=jnp.bfloat16,
            master_weights=True,
        ),
        BenchConfig(
            "h",
            "adamw, Flax transformer (12 layers, width 512, untied embeddings)",
            _transformer_tree,
            lambda: optimizers.adamw(**ADAMW),
            lambda: optax.adamw(**ADAMW),
            ADAMW_BYTES,
        ),
        BenchConfig(
            "i",
            "adamw, 1B params in 200 leaves (accelerators only)",
            lambda dtype, seed: {
                f"leaf_{i:04d}": leaf
                for i, leaf in enumerate(_materialise(leaf_shapes(1_000_000_000, 200), dtype, seed))
            },
            lambda: optimizers.adamw(**ADAMW),
            lambda: optax.adamw(**ADAMW),
            ADAMW_BYTES,
            accelerator_only=True,
        ),
        BenchConfig(
            "j",
            "adopt, 200 leaves",
            _list_tree(200),
            lambda: optimizers.adopt(1e-3),
            lambda: optax.contrib.adopt(1e-3),
            ADOPT_BYTES,
        ),
        BenchConfig(
            "k",
            "schedule_free_adamw, 200 leaves",
            _list_tree(200),
            lambda: optimizers.schedule_free_adamw(**SCHEDULE_FREE),
            lambda: optax.contrib.schedule_free_adamw(**SCHEDULE_FREE),
            SCHEDULE_FREE_BYTES,
        ),
        BenchConfig(
            "l",
            "muon (AdamW for vectors), 200 leaves",
            _list_tree(200),
            lambda: optimizers.muon(**MUON),
            lambda: optax.contrib.muon(**MUON),
            MUON_BYTES,
        ),
        BenchConfig(
            "m",
            "adafactor (momentum 0.9), 200 leaves",
            _list_tree(200),
            lambda: optimizers.adafactor(**ADAFACTOR),
            lambda: optax.adafactor(**ADAFACTOR),
            ADAFACTOR_BYTES,
        ),
    ]
    return {c.name: c for c in configs}


CONFIGS = _configs()
