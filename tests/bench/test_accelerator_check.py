"""The checks of ``benchmarks/accelerator_check.sh`` that hold on any backend: run by the
suite on the CPU, and by that script on an accelerator's backend (JAX's default device).

Each test's name starts with the script's section it belongs to (``parity``, ``fallback``,
``zero``, ``offload``, ``checkpoint``), which the script selects with ``-k``. They need one
device of the default backend, never the suite's eight CPU devices, and each says what it
expects where the backends differ: the one-pass CPU kernel runs only on a one-device CPU
backend, and ``fused=True`` is refused elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import mlp_loss, mlp_problem

import scirs2_optim_jax as so
from scirs2_optim_jax import engine, parallel
from scirs2_optim_jax.checkpoint import CheckpointManager
from scirs2_optim_jax.engine.kernels import kernels_available

STEPS = 10
REPO = Path(__file__).resolve().parents[2]
DEVICE = jax.devices()[0]
ON_ONE_CPU_DEVICE = jax.default_backend() == "cpu" and jax.device_count() == 1


def _tree(seed: int, scale: float = 1.0, dtype: object = jnp.float32) -> dict:
    rng = np.random.default_rng(seed)
    shapes = {"scale": (), "bias": (7,), "kernel": (13, 29), "embed": (300, 256)}
    return {k: jnp.asarray(scale * rng.standard_normal(s), dtype) for k, s in shapes.items()}


def _close(got: object, want: object, rtol: float = 1e-6) -> None:
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * (float(np.max(np.abs(b))) or 1))


def _on_default_device(tree: object) -> None:
    for leaf in jax.tree.leaves(tree):
        assert leaf.devices() == {DEVICE}, leaf.devices()
        assert leaf.sharding.memory_kind == DEVICE.default_memory().kind


def _train(tx: optax.GradientTransformation, one_pass: bool, standard: bool = False) -> tuple:
    """STEPS jitted steps on the default device: the engine's step or the optax protocol."""

    def step(params: dict, state: object, grads: dict) -> tuple:
        if one_pass:
            return engine.apply_gradients(tx, grads, state, params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    with jax.numpy_dtype_promotion("standard" if standard else "strict"):
        params = _tree(0)
        state = tx.init(params)
        jitted = jax.jit(step)
        for i in range(STEPS):
            params, state = jitted(params, state, _tree(100 + i, 0.1))
    return params, state


def _engine_step(tx: optax.GradientTransformation, jit: bool) -> Callable[..., tuple]:
    """The engine's step, jitted unless the update runs on the host between programs."""

    def step(grads: dict, state: object, params: dict) -> tuple:
        return engine.apply_gradients(tx, grads, state, params)

    return jax.jit(step) if jit else step


PARITY = {
    "adamw": (
        lambda: so.adamw(1e-2, weight_decay=0.05),
        lambda: optax.adamw(1e-2, weight_decay=0.05),
    ),
    "adam": (lambda: so.adam(1e-2), lambda: optax.adam(1e-2)),
    "lamb": (lambda: so.lamb(1e-2, weight_decay=0.01), lambda: optax.lamb(1e-2, weight_decay=0.01)),
    "clip+adamw": (
        lambda: so.chain(so.clip_by_global_norm(1.0), so.adamw(1e-2)),
        lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2)),
    ),
}


@pytest.mark.parametrize("name", sorted(PARITY))
def test_parity_one_pass_step_equals_optax_on_the_default_device(name: str) -> None:
    ours, theirs = PARITY[name]
    params, state = _train(ours(), one_pass=True)
    want, want_state = _train(theirs(), one_pass=False, standard=True)
    _on_default_device((params, state))
    # LAMB's trust ratios come from norms summed in another order: relative to the leaf.
    _close(params, want, rtol=1e-5 if name == "lamb" else 1e-6)
    moments = [x for x in jax.tree.leaves(state) if x.ndim]
    _close(moments, [x for x in jax.tree.leaves(want_state) if x.ndim], rtol=1e-5)


def _uses_kernel(tx: optax.GradientTransformation) -> bool:
    params = _tree(0)
    lowered = jax.jit(lambda p, s, g: engine.apply_gradients(tx, g, s, p)).lower(
        params, tx.init(params), params
    )
    return "scirs2_adam_step" in lowered.as_text()


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_fallback_auto_takes_the_kernel_only_on_one_cpu_device(name: str) -> None:
    """fused=None: the CPU kernel on a one-device CPU backend, the XLA chain elsewhere
    (an accelerator, several devices); the same numbers either way."""
    auto = getattr(so, name)(1e-2, weight_decay=0.01)
    assert _uses_kernel(auto) == (ON_ONE_CPU_DEVICE and kernels_available())
    assert not _uses_kernel(getattr(so, name)(1e-2, weight_decay=0.01, fused=False))
    got, _ = _train(auto, one_pass=True)
    want, _ = _train(getattr(so, name)(1e-2, weight_decay=0.01, fused=False), one_pass=False)
    _on_default_device(got)
    _close(got, want, rtol=1e-5 if name == "lamb" else 1e-6)


def test_fallback_fused_true_is_refused_off_the_cpu_backend() -> None:
    tx = so.adamw(1e-2, fused=True)
    if jax.default_backend() != "cpu":
        with pytest.raises(ValueError, match="fused=True runs on the CPU backend only"):
            _train(tx, one_pass=True)
    else:
        _close(_train(tx, one_pass=True)[0], _train(so.adamw(1e-2, fused=False), False)[0])


def test_fallback_bf16_leaves_take_the_chain() -> None:
    params = _tree(0, dtype=jnp.bfloat16)
    grads = _tree(1, 0.1, dtype=jnp.bfloat16)
    auto, chain = so.adamw(1e-3), so.adamw(1e-3, fused=False)
    got = _engine_step(auto, jit=True)(grads, auto.init(params), params)
    want = _engine_step(chain, jit=True)(grads, chain.init(params), params)
    _on_default_device(got)
    _close(got, want, rtol=0)


def _chain(axis: str | None) -> optax.GradientTransformation:
    return so.chain(so.clip_by_global_norm(1.0, axis_name=axis), so.adamw(1e-2, weight_decay=0.1))


def _plain_run() -> dict:
    params, batch = mlp_problem()
    tx = _chain(None)
    state = tx.init(params)

    @jax.jit
    def step(params: dict, state: object) -> tuple:
        grads = jax.grad(mlp_loss)(params, batch)
        return engine.apply_gradients(tx, grads, state, params)

    for _ in range(5):
        params, state = step(params, state)
    return params


def _data_parallel_run(stage: int, compute: str | None) -> tuple:
    params, batch = mlp_problem()
    tx = _chain("data" if stage else None)
    if compute is not None:
        tx = so.offload(tx, compute=compute)
    step = parallel.make_data_parallel_step(
        mlp_loss, tx, parallel.make_data_mesh(1), zero_stage=stage
    )
    p, s = step.init(params)
    for _ in range(5):
        p, s, _metrics = step(p, s, batch)
    return p, s


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_zero_on_one_device_equals_the_plain_step(stage: int) -> None:
    params, _ = _data_parallel_run(stage, None)
    for leaf in jax.tree.leaves(params):
        assert leaf.devices() == {DEVICE}
    _close(params, _plain_run())


def _assert_state_where_offload_keeps_it(state: object, compute: str) -> None:
    """The state's arrays in ``pinned_host`` of the default device (``compute="device"``),
    or on the host's CPU device (``compute="host"``)."""
    arrays = [x for x in jax.tree.leaves(state) if x.ndim]
    if compute == "device":
        assert {x.sharding.memory_kind for x in arrays} == {"pinned_host"}
        assert {d for x in arrays for d in x.devices()} == {DEVICE}
    else:
        assert {d for x in arrays for d in x.devices()} == {engine.host_device()}


@pytest.mark.parametrize("compute", ["device", "host"])
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_zero_offload_on_one_device_equals_the_plain_step(stage: int, compute: str) -> None:
    params, state = _data_parallel_run(stage, compute)
    for leaf in jax.tree.leaves(params):
        assert leaf.devices() == {DEVICE}
    _close(params, _plain_run())
    _assert_state_where_offload_keeps_it(state, compute)


@pytest.mark.parametrize("compute", ["device", "host"])
def test_offload_step_on_the_default_device_keeps_the_state_on_the_host(compute: str) -> None:
    """The engine's step with the state offloaded equals the one without; the parameters stay
    on the default device, the state where offload keeps it, step after step."""
    tx = so.offload(so.adamw(1e-2, weight_decay=0.05), compute=compute)
    params = _tree(0)
    state = tx.init(params)
    step = _engine_step(tx, jit=compute == "device")
    for i in range(STEPS):
        params, state = step(_tree(100 + i, 0.1), state, params)
    want, _ = _train(so.adamw(1e-2, weight_decay=0.05), one_pass=False)
    _close(params, want)
    _on_default_device(params)
    _assert_state_where_offload_keeps_it(state, compute)


def test_offload_bf16_params_with_master_weights_on_the_host() -> None:
    """The ZeRO-Offload way: bf16 parameters on the device, float32 master and moments on
    the host; equal to the same optimizer without offload."""
    params = _tree(0, dtype=jnp.bfloat16)

    def run(tx: optax.GradientTransformation) -> tuple:
        p, s = params, tx.init(params)
        for i in range(5):
            p, s = engine.apply_gradients(tx, _tree(100 + i, 0.1, jnp.bfloat16), s, p)
        return p, s

    inner = lambda: so.with_master_weights(so.adamw(1e-2, weight_decay=0.05))
    got, got_state = run(so.offload(inner(), compute="host"))
    want, want_state = run(inner())
    _on_default_device(got)
    assert {x.dtype for x in jax.tree.leaves(got)} == {jnp.dtype(jnp.bfloat16)}
    _close(got, want)
    _close(got_state.master, want_state.master)
    assert {d for x in jax.tree.leaves(got_state.master) for d in x.devices()} == {
        engine.host_device()
    }


# Written by a separate process on JAX's CPU backend: a CheckpointState after three steps of
# a clipped AdamW, and the numbers (params, moments, and the params after one more step)
# that the restore here must reproduce.
WRITER = """
import sys, jax, jax.numpy as jnp, numpy as np, scirs2_optim_jax as so
from scirs2_optim_jax.checkpoint import CheckpointManager, CheckpointState
assert jax.default_backend() == "cpu", jax.default_backend()
directory, expected = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
params = {"kernel": jnp.asarray(rng.standard_normal((64, 32)), jnp.float32),
          "bias": jnp.asarray(rng.standard_normal(32), jnp.float32)}
grads = lambda i: jax.tree.map(lambda p: jnp.sin(p * (i + 1)) * 0.1, params)
tx = so.chain(so.clip_by_global_norm(1.0), so.adamw(1e-2, weight_decay=1e-3))
state = tx.init(params)
for i in range(3):
    params, state = so.apply_gradients(tx, grads(i), state, params)
with CheckpointManager(directory, async_save=False) as mgr:
    mgr.save(3, CheckpointState(params, state))
next_params, _ = so.apply_gradients(tx, grads(3), state, params)
np.savez(expected, kernel=params["kernel"], bias=params["bias"],
         mu=state[1][0].mu["kernel"], nu=state[1][0].nu["kernel"],
         next_kernel=next_params["kernel"], next_bias=next_params["bias"],
         grad_kernel=grads(3)["kernel"], grad_bias=grads(3)["bias"])
print(jax.devices()[0].platform)
"""


@pytest.fixture(scope="module")
def cpu_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    directory = tmp_path_factory.mktemp("cpu_checkpoint")
    expected = directory / "expected.npz"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", WRITER, str(directory / "run"), str(expected)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    stderr = out.stderr if len(out.stderr) < 4000 else f"{out.stderr[:2000]}...{out.stderr[-2000:]}"
    if out.returncode != 0:
        pytest.fail(f"the CPU process that writes the checkpoint failed:\n{stderr}")
    assert out.stdout.split()[-1] == "cpu"
    return directory / "run", dict(np.load(expected))


@pytest.mark.parametrize("compute", [None, "device", "host"])
def test_checkpoint_written_on_cpu_restores_on_the_default_backend(
    cpu_checkpoint: tuple[Path, dict], compute: str | None
) -> None:
    """Restored here bit for bit, placed where the continuing optimizer keeps its state
    (offloaded or not), and one more step equals the CPU's."""
    directory, expected = cpu_checkpoint
    with CheckpointManager(directory, read_only=True) as mgr:
        restored = mgr.restore()
    assert restored.step == 3
    params, opt_state = restored.state.params, restored.state.opt_state
    _on_default_device(params)
    np.testing.assert_array_equal(np.asarray(params["kernel"]), expected["kernel"])
    np.testing.assert_array_equal(np.asarray(params["bias"]), expected["bias"])
    adam = opt_state[1][0]
    assert type(adam).__name__ == "ScaleByAdamState" and int(adam.count) == 3
    np.testing.assert_array_equal(np.asarray(adam.mu["kernel"]), expected["mu"])
    np.testing.assert_array_equal(np.asarray(adam.nu["kernel"]), expected["nu"])

    tx = so.chain(so.clip_by_global_norm(1.0), so.adamw(1e-2, weight_decay=1e-3))
    if compute is not None:
        tx = so.offload(tx, compute=compute)
    opt_state = engine.place_state(tx, opt_state)
    grads = {
        "kernel": jnp.asarray(expected["grad_kernel"]),
        "bias": jnp.asarray(expected["grad_bias"]),
    }
    params, _ = _engine_step(tx, jit=compute != "host")(grads, opt_state, params)
    _on_default_device(params)
    _close(params, {"bias": expected["next_bias"], "kernel": expected["next_kernel"]})
