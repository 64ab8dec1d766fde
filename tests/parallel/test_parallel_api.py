"""Acceptance point 1 (mesh, device summary, Flax Linen/NNX steps, pmap) and point 6's
configuration: environment variables, validation, and the step deadline."""

from __future__ import annotations

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close
from parallel_workers import problem

import scirs2_optim_jax as so
from scirs2_optim_jax import parallel


def test_make_data_mesh_defaults_and_errors() -> None:
    mesh = parallel.make_data_mesh()
    assert mesh.axis_names == ("data",) and mesh.shape["data"] == 8
    assert mesh.axis_types == (jax.sharding.AxisType.Explicit,)
    auto = parallel.make_data_mesh(4, axis_name="batch", axis_type="auto")
    assert auto.shape["batch"] == 4 and auto.axis_types == (jax.sharding.AxisType.Auto,)
    assert list(auto.devices.flat) == jax.devices()[:4]
    with pytest.raises(ValueError, match=r"num_devices must be between 1 and 8.*got 9"):
        parallel.make_data_mesh(9)
    with pytest.raises(ValueError, match=r"axis_type must be 'explicit', 'auto'.*'manual'"):
        parallel.make_data_mesh(2, axis_type="manual")


def test_device_summary_reports_the_fake_cpu_devices() -> None:
    summary = parallel.device_summary()
    assert (summary.platform, summary.count, summary.local_count) == ("cpu", 8, 8)
    assert summary.process_count == 1 and len(summary.devices) == 8
    assert {d.id for d in summary.devices} == {d.id for d in jax.devices()}
    assert summary.kind == jax.devices()[0].device_kind
    # The CPU backend reports no memory limit; the summary says so rather than guessing.
    if jax.devices()[0].memory_stats() is None:
        assert summary.memory_bytes is None and "memory per device unknown" in str(summary)
    assert str(summary).startswith("8 x ")


def test_device_summary_reports_memory_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    summary = parallel.device_summary()
    settings = summary.memory_settings
    assert settings.preallocate is False and settings.memory_fraction == 0.5
    assert settings.backend_initialized
    assert "preallocate False" in str(summary) and "0.5" in str(summary)


class _LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(29)(x))
        return nn.Dense(problem.CLASSES)(x)


def test_flax_linen_step_equals_single_device() -> None:
    """A Linen model under ZeRO-2 on an Auto mesh (NNX and Explicit: the equality tests)."""
    model = _LinenMLP()
    batches = problem.make_batches(5)
    params = model.init(jax.random.key(0), batches[0]["x"])["params"]

    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    ref_tx = problem.make_tx("lamb", None, 5)

    @jax.jit
    def ref_step(params, state, batch):
        updates, state = ref_tx.update(jax.grad(loss_fn)(params, batch), state, params)
        return optax.apply_updates(params, updates), state

    ref_params, ref_state = params, ref_tx.init(params)
    for batch in batches:
        ref_params, ref_state = ref_step(ref_params, ref_state, batch)

    step = parallel.make_data_parallel_step(
        loss_fn,
        problem.make_tx("lamb", "data", 5),
        parallel.make_data_mesh(8, axis_type="auto"),
        zero_stage=2,
    )
    params, state = step.init(params)
    for batch in batches:
        params, state, metrics = step(params, state, batch)
    assert_trees_close(params, ref_params, rtol=1e-5, atol=1e-6)
    assert np.isfinite(float(metrics["loss"]))


def test_nnx_model_is_updated_from_the_trained_params() -> None:
    from flax import nnx

    graphdef, _ = problem.make_model()
    step, params, state = problem.initial_step(8, 0)
    batch = problem.make_batches(1)[0]
    # Two steps: the warmup schedule's learning rate is 0 at step 0.
    params, state, _ = step(params, state, batch)
    params, state, metrics = step(params, state, batch)
    model = nnx.merge(*problem.make_model())
    nnx.update(model, params)  # how an NNX user takes the trained parameters back
    loss = problem.make_loss_fn(graphdef)(nnx.state(model), batch)
    assert float(loss) < float(metrics["loss"])  # the step lowered the loss


def test_has_aux_metrics_are_averaged_over_devices() -> None:
    def loss_fn(params, batch):
        residual = batch["x"] @ params["w"] - batch["y"]
        return jnp.mean(residual**2), {"max_x": jnp.max(batch["x"])}

    step = parallel.make_data_parallel_step(
        loss_fn, so.sgd(0.1), parallel.make_data_mesh(8), has_aux=True, zero_stage=2
    )
    params, state = step.init({"w": jnp.zeros(3)})
    x = np.arange(48.0, dtype=np.float32).reshape(16, 3)
    _, _, metrics = step(params, state, {"x": x, "y": np.ones(16, np.float32)})
    per_device_max = x.reshape(8, 2, 3).max(axis=(1, 2))
    np.testing.assert_allclose(metrics["aux"]["max_x"], per_device_max.mean())
    np.testing.assert_allclose(metrics["loss"], np.mean((0.0 - 1.0) ** 2))


def test_step_argument_errors() -> None:
    mesh = parallel.make_data_mesh(8)
    with pytest.raises(ValueError, match="zero_stage must be 0, 1 or 2, got 3"):
        parallel.make_data_parallel_step(lambda p, b: 0.0, so.sgd(0.1), mesh, zero_stage=3)
    with pytest.raises(ValueError, match="axis_name 'batch' is not an axis"):
        parallel.make_data_parallel_step(lambda p, b: 0.0, so.sgd(0.1), mesh, axis_name="batch")
    with pytest.raises(TypeError, match=r"tx must be an optax\.GradientTransformation"):
        parallel.make_data_parallel_step(lambda p, b: 0.0, object(), mesh)
    step = parallel.make_data_parallel_step(lambda p, b: 0.0, so.sgd(0.1), mesh)
    with pytest.raises(ValueError, match=r"\['x'\] has shape \(12, 3\).*divisible by the 8"):
        step.shard_batch({"x": np.zeros((12, 3))})


def test_with_unit_axis_makes_axis_reductions_identities() -> None:
    tx = so.lamb(0.1, axis_name="data")
    params = {"w": jnp.array([3.0, 4.0]), "b": jnp.array([1.0])}
    grads = {"w": jnp.array([1.0, -2.0]), "b": jnp.array([0.5])}
    got, _ = jax.jit(parallel.with_unit_axis(tx.update, "data"))(grads, tx.init(params), params)
    plain = so.lamb(0.1)
    expected, _ = jax.jit(plain.update)(grads, plain.init(params), params)
    assert_trees_close(got, expected, rtol=1e-6)


def test_transforms_work_unchanged_under_pmap() -> None:
    """Data parallelism with pmap, and leaves split across pmap devices, equal one device."""
    n = jax.local_device_count()
    keys = jax.random.split(jax.random.key(1), 3)
    params = {"w": jax.random.normal(keys[0], (n * 3, 5)), "b": jax.random.normal(keys[1], (n,))}
    grads = jax.tree.map(lambda p: 3.0 * p + 0.5, params)

    # Leaves split along axis 0 over the pmap axis: reductions psum over it.
    sharded_tx = optax.chain(
        so.clip_by_global_norm(1.0, axis_name="i"), so.lamb(0.1, axis_name="i")
    )
    plain_tx = optax.chain(so.clip_by_global_norm(1.0), so.lamb(0.1))
    plain_update = jax.jit(lambda g, p: plain_tx.update(g, plain_tx.init(p), p)[0])
    expected = plain_update(grads, params)

    def split(tree):
        return jax.tree.map(lambda x: x.reshape(n, -1, *x.shape[1:]), tree)

    def sharded_update(g, p):
        return sharded_tx.update(g, sharded_tx.init(p), p)[0]

    got = jax.pmap(sharded_update, axis_name="i")(split(grads), split(params))
    got = jax.tree.map(lambda x, ref: x.reshape(ref.shape), got, expected)
    assert_trees_close(got, expected, rtol=1e-5)

    # Classic data parallelism: per-device gradients pmean-ed, replicated state.
    per_device = jax.tree.map(lambda g: jnp.stack([g * (i + 1) for i in range(n)]), grads)

    def dp_update(g, p):
        g = jax.lax.pmean(g, "i")
        return plain_tx.update(g, plain_tx.init(p), p)[0]

    replicated = jax.tree.map(lambda p: jnp.stack([p] * n), params)
    got = jax.pmap(dp_update, axis_name="i")(per_device, replicated)
    expected = plain_update(jax.tree.map(lambda g: g.mean(0), per_device), params)
    assert_trees_close(jax.tree.map(lambda x: x[3], got), expected, rtol=1e-5)


def test_distributed_config_from_arguments_and_environment() -> None:
    resolve = parallel.resolve_distributed_config
    env = {
        "SCIRS2_COORDINATOR_ADDRESS": "10.0.0.1:1234",
        "SCIRS2_NUM_PROCESSES": "4",
        "SCIRS2_PROCESS_ID": "3",
        "JAX_COORDINATOR_ADDRESS": "10.9.9.9:1",
    }
    assert resolve(environ=env) == parallel.DistributedConfig("10.0.0.1:1234", 4, 3)
    assert resolve(process_id=0, environ=env).process_id == 0  # the argument wins
    jax_env = {"JAX_COORDINATOR_ADDRESS": "h:2", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert resolve(environ=jax_env) == parallel.DistributedConfig("h:2", 2, 1)
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 4\), got 4 \(from \$SCIRS2"):
        resolve(environ={**env, "SCIRS2_PROCESS_ID": "4"})
    with pytest.raises(ValueError, match="num_processes must be an integer, got 'two'"):
        resolve(environ={**env, "SCIRS2_NUM_PROCESSES": "two"})
    with pytest.raises(ValueError, match="coordinator_address must look like 'host:port'"):
        resolve("localhost", 2, 0, environ={})
    with pytest.raises(ValueError, match="num_processes is not set: pass it or set SCIRS2_NUM"):
        resolve("h:1", environ={})
    with pytest.raises(ValueError, match="heartbeat_timeout_s must be an integer >= 1"):
        parallel.init_distributed("h:1", 2, 0, heartbeat_timeout_s=0)


def test_distributed_from_env_decides_single_or_multi_process() -> None:
    from_env = parallel.distributed_from_env
    assert from_env({}) is None
    assert from_env({"SCIRS2_NUM_PROCESSES": "1", "SCIRS2_PROCESS_ID": "7"}) is None
    full = {"SCIRS2_COORDINATOR_ADDRESS": "h:1", "SCIRS2_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert from_env(full) == parallel.DistributedConfig("h:1", 2, 1)
    with pytest.raises(ValueError, match="coordinator_address is not set"):
        from_env({"JAX_NUM_PROCESSES": "2", "SCIRS2_PROCESS_ID": "0"})
    with pytest.raises(ValueError, match=r"num_processes must be >= 1, got 0 \(from \$SCIRS2"):
        from_env({"SCIRS2_NUM_PROCESSES": "0"})
    with pytest.raises(ValueError, match="num_processes must be an integer, got 'x'"):
        from_env({"SCIRS2_NUM_PROCESSES": "x"})


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
def test_any_process_is_a_replicated_or_of_the_flags(axis_type: str) -> None:
    # One process here: the vote is this process's flag, replicated over every device.
    mesh = parallel.make_data_mesh(4, axis_type=axis_type)
    for flag in (False, True):
        vote = parallel.any_process(flag, mesh)
        assert vote.shape == () and vote.dtype == jnp.bool_
        assert vote.sharding.is_fully_replicated and len(vote.sharding.device_set) == 4
        assert bool(parallel.to_host(vote)) is flag
    grid = jax.make_mesh((2, 2), ("a", "b"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    assert bool(parallel.to_host(parallel.any_process(True, grid)))
    with pytest.raises(TypeError, match=r"mesh must be a jax\.sharding\.Mesh"):
        parallel.any_process(True, None)  # type: ignore[arg-type]


def test_step_deadline_ends_a_hung_process_with_a_clear_message() -> None:
    code = (
        "import time\n"
        "from scirs2_optim_jax.parallel.distributed import step_deadline\n"
        "with step_deadline(0.5, 'training step 7'):\n"
        "    time.sleep(30)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == parallel.distributed.DEADLINE_EXIT_CODE
    assert "training step 7 did not finish within 0.5 s" in result.stderr
    with parallel.step_deadline(30.0):
        pass  # a block that finishes in time leaves the process alone
