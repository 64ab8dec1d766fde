"""scirs2_optim_jax.flax.Optimizer / TrainState: Flax's classes, plus the one-pass step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from flax.training import train_state
from helpers import run_on_one_device

import scirs2_optim_jax as so
from scirs2_optim_jax import flax as so_flax

SCHEDULE = so.warmup_cosine_decay_schedule(0.0, 1e-2, 5, 40, 1e-4)
TXS = {
    "adamw": lambda: so.adamw(SCHEDULE, weight_decay=0.05),
    "lamb": lambda: so.lamb(1e-2, weight_decay=0.01),
    "clip+adamw": lambda: so.chain(so.clip_by_global_norm(0.5), so.adamw(1e-2)),
    "sgd (no one-pass step)": lambda: so.sgd(1e-2, momentum=0.9),
    "muon (no one-pass step)": lambda: so.muon(1e-2),
    "adafactor (no one-pass step)": lambda: so.adafactor(1e-2),
}


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(6, 16, rngs=rngs)
        self.out = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.relu(self.hidden(x)))


def _loss(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


def _train_nnx(optimizer_cls: type, tx: optax.GradientTransformation, steps: int = 20) -> tuple:
    model = MLP(nnx.Rngs(0))
    optimizer = optimizer_cls(model, tx, wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def step(state: nnx.State, x: jax.Array, y: jax.Array) -> nnx.State:
        model, optimizer = nnx.merge(graphdef, state)
        optimizer.update(model, nnx.grad(_loss)(model, x, y))
        return nnx.state((model, optimizer))

    rng = np.random.default_rng(0)
    for _ in range(steps):
        x = jnp.asarray(rng.standard_normal((8, 6)), jnp.float32)
        state = step(state, x, jnp.sin(x[:, :3]))
    return state


@pytest.mark.parametrize("name", sorted(TXS))
def test_optimizer_equals_nnx_optimizer(name: str) -> None:
    ours = _train_nnx(so_flax.Optimizer, TXS[name]())
    theirs = _train_nnx(nnx.Optimizer, TXS[name]())
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def _train_state(cls: type, tx: optax.GradientTransformation, steps: int = 20) -> Any:
    params = MLP(nnx.Rngs(0))
    _, params = nnx.split(params, nnx.Param)
    params = nnx.to_pure_dict(params)
    state = cls.create(apply_fn=None, params=params, tx=tx)

    @jax.jit
    def step(state: Any, grads: Any) -> Any:
        return state.apply_gradients(grads=grads)

    for i in range(steps):
        grads = jax.tree.map(lambda p, i=i: jnp.cos(p + i), state.params)
        state = step(state, grads)
    return state


@pytest.mark.parametrize("name", sorted(TXS))
def test_train_state_equals_flax_train_state(name: str) -> None:
    ours = _train_state(so_flax.TrainState, TXS[name]())
    theirs = _train_state(train_state.TrainState, TXS[name]())
    assert int(ours.step) == int(theirs.step) == 20
    pairs = ((ours.params, theirs.params), (ours.opt_state, theirs.opt_state))
    for a_tree, b_tree in pairs:
        assert jax.tree.structure(a_tree) == jax.tree.structure(b_tree)
        for a, b in zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_one_pass_step_on_one_cpu_device_equals_flax() -> None:
    """On one CPU device the drop-ins run the kernel, and still equal Flax's classes."""
    code = """
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from flax.training import train_state
import scirs2_optim_jax as so
from scirs2_optim_jax import flax as so_flax

def run(cls):
    model = nnx.Linear(64, 32, rngs=nnx.Rngs(0))
    opt = cls(model, so.adamw(1e-2, weight_decay=0.1), wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))
    def step(state, x):
        model, opt = nnx.merge(graphdef, state)
        opt.update(model, nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model))
        return nnx.state((model, opt))
    f = jax.jit(step, donate_argnums=0)
    x = jnp.ones((4, 64))
    hlo = f.lower(state, x).as_text()
    for i in range(10):
        state = f(state, x * (i + 1))
    return state, "scirs2_adam_step" in hlo

ours, ours_kernel = run(so_flax.Optimizer)
theirs, theirs_kernel = run(nnx.Optimizer)
# Float rounding of the kernel's fused arithmetic: 1e-5 of each leaf's largest value (the
# engine's own tests hold the kernel to 1e-6 on their trees).
close = all(np.allclose(a, b, rtol=1e-6, atol=1e-5 * float(np.max(np.abs(b))))
            for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)))
ts = so_flax.TrainState.create(apply_fn=None, params={"w": jnp.ones(5)}, tx=so.lamb(1e-2))
hlo = jax.jit(lambda s, g: s.apply_gradients(grads=g)).lower(ts, ts.params).as_text()
print(ours_kernel, theirs_kernel, close, "scirs2_lamb_step" in hlo)
"""
    assert run_on_one_device(code) == ["True", "False", "True", "True"]


def test_checkpoints_restore_across_the_classes(tmp_path: Path) -> None:
    """Ours and Flax's hold the same pytrees: a save from one restores into the other."""
    ours = _train_nnx(so_flax.Optimizer, TXS["adamw"](), steps=3)
    theirs = _train_nnx(nnx.Optimizer, TXS["adamw"](), steps=0)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "ours", nnx.to_pure_dict(ours))
        checkpointer.wait_until_finished()
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(theirs))
        restored = checkpointer.restore(tmp_path / "ours", target)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(ours), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    state = _train_state(so_flax.TrainState, TXS["lamb"](), steps=3)
    plain = _train_state(train_state.TrainState, TXS["lamb"](), steps=0)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "ts", {"params": state.params, "opt": state.opt_state})
        checkpointer.wait_until_finished()
        target = {"params": plain.params, "opt": plain.opt_state}
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        back = checkpointer.restore(tmp_path / "ts", target)
    restored = plain.replace(params=back["params"], opt_state=back["opt"])
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(state.opt_state)
