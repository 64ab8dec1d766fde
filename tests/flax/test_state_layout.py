"""state_layout="engine": grouped Adam moments where the CPU kernel runs, Flax's elsewhere.

The kernel runs on one CPU device only, and this suite's process has 8 fake devices, so the
grouped layout is checked in a one-device subprocess; here the engine must keep Flax's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.core import FrozenDict
from flax.training import train_state
from flax.training.train_state import OVERWRITE_WITH_GRADIENT
from helpers import run_on_one_device

import scirs2_optim_jax as so
from scirs2_optim_jax import engine
from scirs2_optim_jax import flax as so_flax

ENGINE_CHECKS = """
import jax, jax.numpy as jnp, numpy as np
import scirs2_optim_jax as so
from scirs2_optim_jax.engine import one_pass_step
from scirs2_optim_jax.transforms.grouped import GroupedAdamState

keys = jax.random.split(jax.random.key(0), 300)
# 301 leaves of varied shapes: two groups of the layout, the second partly filled.
params = {f"p{i:03d}": jax.random.normal(keys[i], (i % 7 + 1, i % 5 + 2)) for i in range(300)}
params["scalar"] = jnp.float32(1.5)
leaf_sizes = [int(np.prod(x.shape)) for x in jax.tree.leaves(params)]
expected = [sum(leaf_sizes[:256]), sum(leaf_sizes[256:])]

def equal(a, b):
    return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

sched = so.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 20)
txs = {
    "adamw": so.adamw(1e-2, weight_decay=0.1),
    "lamb": so.lamb(1e-2, weight_decay=0.01),
    "clip+adamw": so.chain(so.clip_by_global_norm(0.5), so.adamw(sched)),
}
for name, tx in txs.items():
    step = one_pass_step(tx)
    tree = tx.init(params)
    grouped = step.grouped(tree, params)
    adam = grouped[-1][0] if name == "clip+adamw" else grouped[0]
    sizes = [int(b.size) for b in adam.mu]
    f = jax.jit(step.apply)
    p1 = p2 = params
    for k in range(6):
        g = jax.tree.map(lambda x: jax.random.normal(jax.random.key(k), x.shape), params)
        p1, tree = f(g, tree, p1)
        p2, grouped = f(g, grouped, p2)
    back = step.to_canonical(grouped, p2)
    same_state = jax.tree.structure(back) == jax.tree.structure(tree) and equal(back, tree)
    kernel = "scirs2_" in f.lower(g, grouped, p2).as_text()
    print(name, isinstance(adam, GroupedAdamState), sizes == expected, equal(p1, p2),
          same_state, kernel)

# float16 gradients: the kernel does not take them (it takes float32 ones), so a grouped
# state takes the chain's own step and comes back grouped, equal to the tree layout's step.
tx = so.adam(1e-2)
step = one_pass_step(tx)
tree = tx.init(params)
grouped = step.grouped(tree, params)
g = jax.tree.map(lambda x: jnp.ones_like(x, jnp.float16), params)
p1, t1 = step.apply(g, tree, params)
p2, t2 = step.apply(g, grouped, params)
print("fallback", isinstance(t2[0], GroupedAdamState), equal(p1, p2),
      equal(step.to_canonical(t2, p2), t1))
# Where the kernel would not run, there is no grouped layout: bfloat16 parameters.
half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
print("bf16-none", step.grouped(tx.init(half), half) is None)
# A grouped state of other parameters is refused by name, not read out of bounds.
try:
    step.apply({"w": jnp.ones(3)}, grouped, {"w": jnp.ones(3)})
except ValueError as e:
    print("mismatch", "grouped moments mu hold" in str(e))
"""


def test_grouped_layout_steps_equal_the_tree_layout_on_one_device() -> None:
    """Same numbers to the bit, the kernel in the program, the state converts back exactly."""
    out = run_on_one_device(ENGINE_CHECKS)
    lines = [out[i : i + 6] for i in range(0, 18, 6)]
    for name, line in zip(("adamw", "lamb", "clip+adamw"), lines, strict=True):
        assert line == [name, "True", "True", "True", "True", "True"], line
    assert out[18:] == ["fallback", "True", "True", "True", "bf16-none", "True", "mismatch", "True"]


FLAX_CHECKS = """
import tempfile
import jax, jax.numpy as jnp, numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from flax.training import train_state
import scirs2_optim_jax as so
from scirs2_optim_jax import flax as so_flax

class Wide(nnx.Module):
    def __init__(self, n):
        for i in range(n):
            setattr(self, f"l{i:03d}", nnx.Linear(4, 4, rngs=nnx.Rngs(i)))
    def __call__(self, x):
        for i in range(len(vars(self)) - 1):
            layer = getattr(self, f"l{i:03d}", None)
            if layer is not None:
                x = jnp.tanh(layer(x))
        return x

def train(opt_cls, steps, **kw):
    model = Wide(140)  # 280 parameter leaves: two groups
    opt = opt_cls(model, so.adamw(1e-2, weight_decay=0.1), wrt=nnx.Param, **kw)
    graphdef, state = nnx.split((model, opt))
    @jax.jit
    def step(state, x):
        model, opt = nnx.merge(graphdef, state)
        opt.update(model, nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model))
        return nnx.state((model, opt))
    for i in range(steps):
        state = step(state, jnp.full((2, 4), 0.1 * (i + 1)))
    return nnx.merge(graphdef, state)

def close(a, b):
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.allclose(x, y, rtol=1e-6, atol=1e-6)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

model, ours = train(so_flax.Optimizer, 5, state_layout="engine")
flax_model, theirs = train(nnx.Optimizer, 5)
print("arrays", len(jax.tree.leaves(nnx.state(ours))), len(jax.tree.leaves(nnx.state(theirs))))
# Saved in the engine's layout, restored into an abstract optimizer of the same layout.
with tempfile.TemporaryDirectory() as tmp, ocp.StandardCheckpointer() as ckpt:
    ckpt.save(f"{tmp}/engine", nnx.state(ours))
    ckpt.wait_until_finished()
    abstract = nnx.eval_shape(
        lambda: so_flax.Optimizer(Wide(140), so.adamw(1e-2, weight_decay=0.1),
                                  wrt=nnx.Param, state_layout="engine"))
    restored = ckpt.restore(f"{tmp}/engine", nnx.state(abstract))
    print("engine-restore", close(restored, nnx.state(ours)))
print("params", close(nnx.state(model), nnx.state(flax_model)))
# To Flax's layout: the state nnx.Optimizer holds, saved with plain Orbax, restored into it.
ours.set_state_layout(model, "flax")
print("flax-layout", close(nnx.state(ours), nnx.state(theirs)))
with tempfile.TemporaryDirectory() as tmp, ocp.StandardCheckpointer() as ckpt:
    ckpt.save(f"{tmp}/ours", nnx.state(ours))
    ckpt.wait_until_finished()
    fresh_model, fresh = train(nnx.Optimizer, 0)
    restored = ckpt.restore(f"{tmp}/ours", nnx.state(fresh))
    nnx.update(fresh, restored)
    print("into-flax", close(nnx.state(fresh), nnx.state(theirs)))
    # And back: Flax's save into ours, then the engine's layout, and the run goes on.
    ckpt.save(f"{tmp}/theirs", nnx.state(theirs))
    ckpt.wait_until_finished()
    m2, ours2 = train(so_flax.Optimizer, 0)
    nnx.update(ours2, ckpt.restore(f"{tmp}/theirs", nnx.state(ours2)))
    nnx.update(m2, nnx.state(flax_model))
    ours2.set_state_layout(m2, "engine")
    grads = nnx.grad(lambda m: jnp.mean(m(jnp.ones((2, 4))) ** 2))
    ours2.update(m2, grads(m2))
    theirs.update(flax_model, grads(flax_model))
    ours2.set_state_layout(m2, "flax")
    print("resumed", close(nnx.state(ours2), nnx.state(theirs)),
          close(nnx.state(m2), nnx.state(flax_model)))

# A model other than the optimizer's is refused by name.
try:
    ours.set_state_layout(Wide(3), "engine")
except ValueError as e:
    print("wrong-model", str(e).startswith("Optimizer.set_state_layout: the parameters"))
# Extra arguments (read by none of these transformations): the same step, still grouped.
m3, ours3 = train(so_flax.Optimizer, 0, state_layout="engine")
m4, theirs4 = train(nnx.Optimizer, 0)
grads = nnx.grad(lambda m: jnp.mean(m(jnp.ones((2, 4))) ** 2))
ours3.update(m3, grads(m3), value=jnp.float32(1.0))
theirs4.update(m4, grads(m4), value=jnp.float32(1.0))
arrays = len(jax.tree.leaves(nnx.state(ours3)))
ours3.set_state_layout(m3, "flax")
print("kwargs", arrays, close(nnx.state(ours3), nnx.state(theirs4)),
      close(nnx.state(m3), nnx.state(m4)))

params = {f"w{i:03d}": jnp.full((3,), i / 300.0) for i in range(300)}
grads = {k: jnp.sin(v + 1.0) for k, v in params.items()}
ts = so_flax.TrainState.create(
    apply_fn=None, params=params, tx=so.lamb(1e-2), state_layout="engine")
flax_ts = train_state.TrainState.create(apply_fn=None, params=params, tx=so.lamb(1e-2))
step = jax.jit(lambda s, g: s.apply_gradients(grads=g))
for _ in range(4):
    ts, flax_ts = step(ts, grads), step(flax_ts, grads)
print("ts", len(jax.tree.leaves(ts.opt_state)), len(jax.tree.leaves(flax_ts.opt_state)),
      close(ts.params, flax_ts.params),
      close(ts.with_state_layout("flax").opt_state, flax_ts.opt_state),
      close(ts.with_state_layout("flax").with_state_layout("engine").opt_state, ts.opt_state))
"""


def test_engine_layout_through_flax_classes_on_one_device() -> None:
    """Fewer arrays, same training; Flax's layout on request, through plain Orbax both ways."""
    out = run_on_one_device(FLAX_CHECKS)
    # The optimizer's arrays: 2 x 2 grouped moments + count + step, against 2 x 280 + 2.
    assert out[:3] == ["arrays", "6", "562"]
    assert out[3:] == [
        "engine-restore",
        "True",
        "params",
        "True",
        "flax-layout",
        "True",
        "into-flax",
        "True",
        "resumed",
        "True",
        "True",
        "wrong-model",
        "True",
        "kwargs",
        "6",
        "True",
        "True",
        "ts",
        "5",
        "601",
        "True",
        "True",
        "True",
    ]


def test_engine_layout_keeps_flax_layout_where_the_kernel_does_not_run() -> None:
    """With 8 devices (this process) the kernel does not run: the engine keeps Flax's layout."""
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    ours = so_flax.Optimizer(model, so.adamw(1e-2), wrt=nnx.Param, state_layout="engine")
    theirs = nnx.Optimizer(model, so.adamw(1e-2), wrt=nnx.Param)
    assert jax.tree.structure(nnx.state(ours)) == jax.tree.structure(nnx.state(theirs))
    params = {"w": jnp.ones(3)}
    ts = so_flax.TrainState.create(
        apply_fn=None, params=params, tx=so.adam(0.1), state_layout="engine"
    )
    flax_ts = train_state.TrainState.create(apply_fn=None, params=params, tx=so.adam(0.1))
    assert jax.tree.structure(ts.opt_state) == jax.tree.structure(flax_ts.opt_state)
    # A state already in the chain's layout is not converted (the same object comes back).
    clipped = so.chain(so.clip_by_global_norm(1.0), so.adamw(1e-2))
    state = clipped.init(params)
    assert engine.one_pass_step(clipped).to_canonical(state, params) is state
    ts = so_flax.TrainState.create(apply_fn=None, params=params, tx=clipped)
    assert ts.with_state_layout("flax") is ts


@pytest.mark.parametrize("tx", [so.sgd(0.1, momentum=0.9), so.adafactor(1e-2)])
def test_engine_layout_without_a_one_pass_step_is_flax_layout(tx: object) -> None:
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    ours = so_flax.Optimizer(model, tx, wrt=nnx.Param, state_layout="engine")
    theirs = nnx.Optimizer(model, tx, wrt=nnx.Param)
    assert jax.tree.structure(nnx.state(ours)) == jax.tree.structure(nnx.state(theirs))
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    ours.update(model, grads)
    assert int(ours.step[...]) == 1


def test_state_layout_is_checked_by_name() -> None:
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError, match=r"state_layout must be one of \('flax', 'engine'\), got 'grouped'"
    ):
        so_flax.Optimizer(model, so.adamw(1e-2), wrt=nnx.Param, state_layout="grouped")
    with pytest.raises(ValueError, match=r"got 'fast'"):
        so_flax.TrainState.create(
            apply_fn=None, params={"w": jnp.ones(2)}, tx=so.adam(0.1), state_layout="fast"
        )
    opt = so_flax.Optimizer(model, so.adamw(1e-2), wrt=nnx.Param)
    with pytest.raises(ValueError, match=r"got None"):
        opt.set_state_layout(model, None)  # type: ignore[arg-type]
    np.testing.assert_array_equal(np.asarray(opt.step[...]), 0)


def test_extra_update_arguments_reach_the_transformations_that_read_them() -> None:
    """reduce_on_plateau reads ``value``: under with_master_weights (a one-pass step of
    its own) the argument still reaches it, as through ``nnx.Optimizer``."""

    def tx() -> optax.GradientTransformation:
        plateau = optax.contrib.reduce_on_plateau(patience=0, cooldown=0, factor=0.5)
        return so.with_master_weights(optax.chain(optax.adam(1e-2), plateau))

    models = [nnx.Linear(3, 2, rngs=nnx.Rngs(0)) for _ in range(2)]
    ours = so_flax.Optimizer(models[0], tx(), wrt=nnx.Param)
    theirs = nnx.Optimizer(models[1], tx(), wrt=nnx.Param)
    for loss in (1.0, 2.0, 3.0):
        for model, optimizer in zip(models, (ours, theirs), strict=True):
            grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 3))) ** 2))(model)
            with jax.numpy_dtype_promotion("standard"):  # optax's own code relies on it
                optimizer.update(model, grads, value=jnp.float32(loss))
    for a, b in zip(
        jax.tree.leaves(nnx.state(ours)), jax.tree.leaves(nnx.state(theirs)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # An argument the host step cannot take is refused, as offload's update refuses it.
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    host = so_flax.Optimizer(model, so.offload(so.adamw(1e-3), compute="host"), wrt=nnx.Param)
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    with pytest.raises(TypeError, match=r"update takes no extra arguments, got \['valeu'\]"):
        host.update(model, grads, valeu=1.0)


def test_train_state_with_a_frozen_overwrite_collection_is_flax_s() -> None:
    """A FrozenDict with an overwrite_with_gradient collection goes through Flax's
    apply_gradients, in Flax's layout, as Flax's class does."""
    params = FrozenDict(
        {"params": {"w": jnp.ones(3)}, OVERWRITE_WITH_GRADIENT: {"scale": jnp.zeros(2)}}
    )
    grads = FrozenDict(
        {"params": {"w": jnp.full(3, 0.5)}, OVERWRITE_WITH_GRADIENT: {"scale": jnp.ones(2)}}
    )
    ours = so_flax.TrainState.create(
        apply_fn=None, params=params, tx=so.adamw(0.1), state_layout="engine"
    )
    theirs = train_state.TrainState.create(apply_fn=None, params=params, tx=so.adamw(0.1))
    for _ in range(3):
        ours = ours.apply_gradients(grads=grads)
        theirs = theirs.apply_gradients(grads=grads)
    assert jax.tree.structure(ours.opt_state) == jax.tree.structure(theirs.opt_state)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
