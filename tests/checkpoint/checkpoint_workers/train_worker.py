"""A small, deterministic training run that checkpoints, for the crash and preemption tests.

A two-layer MLP regresses a fixed random target on synthetic data with AdamW and a warmup +
cosine schedule. Every step draws its batch from the data position (epoch, batch: each epoch
is a permutation seeded by the epoch) and splits the run's PRNG key for input noise, so the
run is a function of its seed alone, and resuming from a checkpoint continues it exactly.

It prints one JSON object per line on stdout: ``ready`` (after the first compiled step),
``resumed``, ``saving`` (just before a save starts), ``saved`` (after ``save`` returned),
``preempted`` and ``done``; ``resumed``, ``saved``, ``preempted``, ``done`` and (with
``--trace``) ``step`` carry the sha256 of the parameters at that step.

Usage: train_worker.py DIR --steps N --save-every K [--seed S] [--step-sleep S] [--trace]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import scirs2_optim_jax as so
from scirs2_optim_jax.checkpoint import CheckpointManager, CheckpointState, PreemptionGuard

SAMPLES, FEATURES, HIDDEN, BATCH = 256, 8, 16, 32
BATCHES_PER_EPOCH = SAMPLES // BATCH


def params_sha256(params: dict) -> str:
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def make_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype(np.float32)
    w = rng.normal(size=(FEATURES, 1)).astype(np.float32)
    return x, np.tanh(x @ w).astype(np.float32)


def batch_at(x: np.ndarray, y: np.ndarray, position: dict, seed: int) -> tuple:
    perm = np.random.default_rng([seed, position["epoch"]]).permutation(SAMPLES)
    idx = perm[position["batch"] * BATCH : (position["batch"] + 1) * BATCH]
    return x[idx], y[idx]


def advance(position: dict) -> dict:
    batch = position["batch"] + 1
    if batch == BATCHES_PER_EPOCH:
        return {"epoch": position["epoch"] + 1, "batch": 0}
    return {"epoch": position["epoch"], "batch": batch}


def init_state(seed: int, tx: optax.GradientTransformation) -> CheckpointState:
    k1, k2, rng = jax.random.split(jax.random.key(seed), 3)
    params = {
        "hidden": {
            "kernel": jax.random.normal(k1, (FEATURES, HIDDEN)) / np.sqrt(FEATURES),
            "bias": jnp.zeros(HIDDEN),
        },
        "out": {"kernel": jax.random.normal(k2, (HIDDEN, 1)) / np.sqrt(HIDDEN)},
    }
    return CheckpointState(params, tx.init(params), rng, {"epoch": 0, "batch": 0})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--save-every", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--trace", action="store_true", help="print every step's params sha")
    args = parser.parse_args()

    tx = so.adamw(so.warmup_cosine(1e-2, args.steps))
    x, y = make_data(args.seed)

    def loss_fn(params: dict, xb: jax.Array, yb: jax.Array, key: jax.Array) -> jax.Array:
        noisy = xb + 0.01 * jax.random.normal(key, xb.shape)
        h = jnp.tanh(noisy @ params["hidden"]["kernel"] + params["hidden"]["bias"])
        return jnp.mean((h @ params["out"]["kernel"] - yb) ** 2)

    @jax.jit
    def train_step(params: dict, opt_state: tuple, rng: jax.Array, xb: jax.Array, yb: jax.Array):
        rng, key = jax.random.split(rng)
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, rng, loss

    manager = CheckpointManager(args.directory, save_interval_steps=args.save_every, keep_last=3)
    fresh = init_state(args.seed, tx)
    start = 0
    state = fresh
    if manager.latest_step() is not None:
        restored = manager.restore(target=jax.eval_shape(lambda: fresh))
        start, state = restored.step, restored.state
        assert restored.config == {"seed": args.seed, "steps": args.steps}, restored.config
    emit("resumed", step=start, sha=params_sha256(state.params))

    with PreemptionGuard() as guard:
        for step in range(start + 1, args.steps + 1):
            xb, yb = batch_at(x, y, state.data_position, args.seed)
            params, opt_state, rng, loss = train_step(
                state.params, state.opt_state, state.rng, xb, yb
            )
            state = CheckpointState(params, opt_state, rng, advance(state.data_position))
            if step == start + 1:
                emit("ready", step=step)
            if args.trace:
                emit("step", step=step, sha=params_sha256(state.params))
            if args.step_sleep:
                time.sleep(args.step_sleep)
            config = {"seed": args.seed, "steps": args.steps}
            if guard.requested:
                manager.save(step, state, {"loss": float(loss)}, config, force=True)
                manager.close()
                emit("preempted", step=step, sha=params_sha256(state.params))
                return 0
            if manager.should_save(step):
                emit("saving", step=step)
                manager.save(step, state, {"loss": float(loss)}, config)
                emit("saved", step=step, sha=params_sha256(state.params))
    manager.close()
    emit("done", step=args.steps, sha=params_sha256(state.params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
