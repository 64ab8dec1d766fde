"""The training problem the parallel tests share with their multi-process worker.

An NNX MLP whose leaf sizes do not divide 8 (13x29, 29, 29x11, 11, 11x7, 7), softmax
cross-entropy on fixed random batches, and the two optimizers of the acceptance tests:
global-norm clipping + AdamW on a warmup-cosine schedule, and LAMB. Importing this module
has no side effects; the worker sets up JAX before it imports anything from here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

import scirs2_optim_jax as so
from scirs2_optim_jax import parallel
from scirs2_optim_jax.training import MLP

IN_FEATURES, HIDDEN, CLASSES = 13, (29, 11), 7
BATCH = 64
CLIP = 0.5


def make_model(seed: int = 0) -> tuple[Any, Any]:
    """Returns ``(graphdef, params)`` of the NNX MLP."""
    model = MLP(IN_FEATURES, HIDDEN, CLASSES, rngs=nnx.Rngs(seed))
    return nnx.split(model)


def make_loss_fn(graphdef: Any) -> Callable[[Any, Any], jax.Array]:
    def loss_fn(params: Any, batch: dict) -> jax.Array:
        logits = nnx.merge(graphdef, params)(batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    return loss_fn


def make_batches(steps: int, seed: int = 0, batch: int = BATCH) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "x": rng.normal(size=(batch, IN_FEATURES)).astype(np.float32),
            "y": rng.integers(0, CLASSES, size=(batch,)).astype(np.int32),
        }
        for _ in range(steps)
    ]


def make_tx(name: str, axis_name: str | None, steps: int) -> optax.GradientTransformation:
    if name == "clip_adamw":
        return optax.chain(
            so.clip_by_global_norm(CLIP, axis_name=axis_name),
            so.adamw(so.warmup_cosine(3e-2, steps), weight_decay=1e-2),
        )
    if name == "lamb":
        return so.lamb(so.warmup_cosine(3e-2, steps), weight_decay=1e-2, axis_name=axis_name)
    raise ValueError(f"unknown optimizer {name!r}")


@functools.cache
def reference_run(name: str, steps: int, seed: int = 0) -> tuple[Any, tuple[float, ...]]:
    """Single-device run on whole batches: returns final params and per-step grad norms.

    Cached: several test modules compare against the same runs.
    """
    graphdef, params = make_model(seed)
    loss_fn = make_loss_fn(graphdef)
    tx = make_tx(name, None, steps)

    @jax.jit
    def step(p: Any, s: Any, batch: dict) -> tuple[Any, Any, jax.Array]:
        grads = jax.grad(loss_fn)(p, batch)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, so.global_norm(grads)

    state = tx.init(params)
    norms = []
    for batch in make_batches(steps, seed):
        params, state, norm = step(params, state, batch)
        norms.append(float(norm))
    return params, tuple(norms)


@functools.cache
def initial_step(n: int, zero_stage: int, name: str = "clip_adamw") -> tuple[Any, Any, Any]:
    """A data-parallel step on ``n`` devices (no donation) and its initial params and state.

    Cached, so several test modules share the same steps and compilations.
    """
    graphdef, params = make_model()
    step = parallel.make_data_parallel_step(
        make_loss_fn(graphdef),
        make_tx(name, "data", 10),
        parallel.make_data_mesh(n),
        zero_stage=zero_stage,
        donate=False,
    )
    params, state = step.init(params)
    return step, params, state


@functools.cache
def compiled_step(n: int, zero_stage: int, name: str = "clip_adamw") -> tuple[Any, ...]:
    """:func:`initial_step` plus the step's compiled program (cached)."""
    step, params, state = initial_step(n, zero_stage, name)
    compiled = step.lower(params, state, make_batches(1)[0]).compile()
    return step, params, state, compiled
