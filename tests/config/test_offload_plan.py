"""The planner with the optimizer state offloaded to host memory (engine.offload), checked
against the compiled step's memory analysis and the state the transformation builds."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scirs2_optim_jax as so
from scirs2_optim_jax import parallel
from scirs2_optim_jax.config import (
    ActivationProfile,
    ParallelConfig,
    RunConfig,
    compiled_memory,
    compiled_train_step_memory,
    plan_for_config,
    plan_memory,
    recommend_batch_size,
    zero_shard_elements,
)
from scirs2_optim_jax.config.planner import host_memory_of_hlo
from scirs2_optim_jax.engine import host_device
from scirs2_optim_jax.precision import with_master_weights


def _nbytes(tree: Any) -> int:
    return sum(int(x.size) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _params(dtype: Any) -> dict[str, jax.Array]:
    return {"w": jnp.ones((64, 32), dtype), "b": jnp.ones((32,), dtype)}


# (precision, parameter dtype, optimizer): fp32 AdamW, and bf16 with float32 master weights.
CASES = [
    ("fp32", jnp.float32, lambda: so.adamw(1e-3)),
    ("bf16", jnp.bfloat16, lambda: with_master_weights(so.adamw(1e-3))),
]


@pytest.mark.parametrize(("precision", "dtype", "make"), CASES)
def test_compiled_step_keeps_the_state_out_of_device_memory_as_planned(
    precision: str, dtype: Any, make: Any
) -> None:
    tx = so.offload(make(), compute="device")
    params = _params(dtype)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    # keep_unused: with master weights the update reads the master, not the params (the
    # forward pass of a real step does; here they would be pruned from the arguments).
    step = jax.jit(lambda p, s, g: so.apply_gradients(tx, g, s, p), keep_unused=True)
    memory = compiled_memory(step.lower(params, state, grads).compile())
    assert memory is not None
    # Device memory holds the params and grads; the state (master weights included) is
    # an argument and an output in host memory.
    assert memory.argument_bytes == _nbytes(params) + _nbytes(grads)
    assert memory.host_argument_bytes == _nbytes(state)
    assert memory.host_output_bytes == _nbytes(state)

    plan = plan_memory(params, tx, precision=precision)
    assert plan.offload == "device"
    assert plan.device_bytes == memory.argument_bytes
    assert plan.host_bytes == memory.host_argument_bytes
    assert plan.device_bytes + plan.host_bytes == plan.total_bytes
    assert plan.update_transient_bytes == plan.host_bytes
    assert plan.streamed_bytes == 2 * plan.host_bytes
    assert (plan.master_weights_bytes > 0) == (precision == "bf16")
    # The same plan from the optimizer's name.
    named = plan_memory(params, "adamw", precision=precision, offload="device")
    assert named == plan


def test_donated_offloaded_state_is_aliased_in_host_memory() -> None:
    tx = so.offload(so.adamw(1e-3), compute="device")
    params = _params(jnp.float32)
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: so.apply_gradients(tx, g, s, p), donate_argnums=(0, 1))
    memory = compiled_memory(step.lower(params, state, params).compile())
    assert memory.host_alias_bytes == _nbytes(state)
    assert memory.alias_bytes == _nbytes(params)


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_step_holds_each_devices_state_slice_in_host_memory(stage: int) -> None:
    params = {"w": jnp.ones((30, 7)), "b": jnp.zeros(7)}

    def loss(p: Any, b: jax.Array) -> jax.Array:
        return jnp.mean((b @ p["w"] + p["b"]) ** 2)

    mesh = parallel.make_data_mesh()
    devices = mesh.shape["data"]
    tx = so.offload(so.adamw(1e-3), compute="device")
    step = parallel.make_data_parallel_step(loss, tx, mesh, zero_stage=stage)
    p, s = step.init(params)
    batch = jnp.ones((2 * devices, 30))
    memory = compiled_memory(step.lower(p, s, batch).compile())
    plan = plan_memory(params, "adamw", zero_stage=stage, num_devices=devices, offload="device")
    slices = sum(zero_shard_elements(n, devices) * 4 for n in (30 * 7, 7))
    assert plan.host_bytes == 4 + 2 * slices  # the count, and this device's mu, nu slices
    assert memory.host_argument_bytes == plan.host_bytes
    batch_slice = _nbytes(batch) // devices
    assert memory.argument_bytes - batch_slice == plan.param_bytes


@pytest.mark.parametrize(("precision", "dtype", "make"), CASES)
def test_host_compute_plan_holds_only_params_and_grads_on_the_device(
    precision: str, dtype: Any, make: Any
) -> None:
    tx = so.offload(make(), compute="host")
    params = _params(dtype)
    state = tx.init(params)
    assert {d for x in jax.tree.leaves(state) for d in x.devices()} == {host_device()}
    plan = plan_memory(params, tx, precision=precision)
    assert plan.offload == "host" and plan.update_transient_bytes == 0
    assert plan.device_bytes == plan.param_bytes + plan.grad_bytes == 2 * _nbytes(params)
    assert plan.host_bytes == _nbytes(state)  # the state the host actually holds
    # Gradients down and parameters up; without master weights the parameters go down too.
    trips = 2 if precision == "bf16" else 3
    assert plan.streamed_bytes == trips * _nbytes(params)
    text = plan.describe()
    assert f"({plan.device_bytes:,} B)" in text and f"({plan.host_bytes:,} B)" in text
    assert 'offload compute="host"' in text
    assert plan.to_dict()["host_bytes"] == plan.host_bytes
    # The compiled device program is the gradients': params and batch, no state.
    batch = jnp.ones((4, 64), dtype)

    def loss(p: Any, b: jax.Array) -> jax.Array:
        return jnp.sum((b @ p["w"] + p["b"]).astype(jnp.float32) ** 2)

    memory = compiled_train_step_memory(tx, loss, params, batch)
    assert memory.argument_bytes == _nbytes(params) + _nbytes(batch)
    assert memory.host_argument_bytes == 0


def test_compiled_train_step_memory_places_an_offloaded_state_in_host_memory() -> None:
    params = _params(jnp.float32)
    batch = jnp.ones((4, 64))

    def loss(p: Any, b: jax.Array) -> jax.Array:
        return jnp.sum((b @ p["w"] + p["b"]) ** 2)

    tx = so.offload(so.adamw(1e-3), compute="device")
    memory = compiled_train_step_memory(tx, loss, params, batch)
    plan = plan_memory(params, tx)
    assert memory.argument_bytes - _nbytes(batch) == plan.param_bytes
    assert memory.host_argument_bytes == plan.host_bytes


def test_zero_and_offload_plan_the_state_slice_per_device() -> None:
    n, devices = 1_000_003, 8
    shard = zero_shard_elements(n, devices)
    for stage in (1, 2):
        plan = plan_memory(n, "adamw", zero_stage=stage, num_devices=devices, offload="host")
        assert plan.host_bytes == 2 * 4 * shard + 4
        assert plan.device_bytes == 4 * n + 4 * (shard if stage == 2 else n)
        # Each device sends its gradient slice and gets its slice of the new parameters
        # back; one device sends the parameters down whole (no master weights in fp32).
        assert plan.streamed_bytes == 4 * shard + 4 * shard + 4 * n
    stage0 = plan_memory(n, "adamw", num_devices=devices, offload="host")
    assert stage0.streamed_bytes == 4 * n + 4 * shard + 4 * n  # one device sends grads whole
    plain = plan_memory(n, "adamw", zero_stage=1, num_devices=devices)
    assert plain.offload is None and plain.host_bytes == 0 and plain.streamed_bytes == 0
    assert plain.device_bytes == plain.total_bytes


def test_host_compute_of_any_optimizer_sends_the_params_down_without_master_weights() -> None:
    lion = plan_memory(1000, "lion", offload="host")
    assert lion.host_bytes == lion.optimizer_state_bytes == 4 * 1000 + 4
    assert lion.streamed_bytes == 3 * 4 * 1000  # grads and params down, params up
    # With master weights only the one-pass step (adam, adamw, lamb) leaves them on the
    # device: lion's own update reads the params.
    mixed = plan_memory(1000, "lion", precision="bf16", offload="host")
    assert mixed.master_weights_bytes == 4 * 1000 and mixed.device_bytes == 2 * 2 * 1000
    adamw = plan_memory(1000, "adamw", precision="bf16", offload="host")
    assert adamw.streamed_bytes == 2 * 2 * 1000
    host = so.offload(with_master_weights(so.lion(1e-4)), compute="host")
    assert mixed.streamed_bytes == (2 if host.host_step.master else 3) * 2 * 1000


def test_plan_for_config_reads_offload_optimizer() -> None:
    config = RunConfig(parallel=ParallelConfig(offload_optimizer="host"))
    plan = plan_for_config(config, 1000)
    assert plan.offload == "host" and plan.device_bytes == 8000
    assert plan_for_config(RunConfig(), 1000).offload is None
    with pytest.raises(ValueError, match=r"parallel\.offload_optimizer must be one of"):
        ParallelConfig(offload_optimizer="cpu")


def test_plan_memory_rejects_bad_offload() -> None:
    with pytest.raises(ValueError, match="plan_memory: offload must be None, 'device' or 'host'"):
        plan_memory(10, "adamw", offload="cpu")
    with pytest.raises(ValueError, match="plan_memory: offload must be None"):
        plan_memory(10, "adamw", offload=True)
    with pytest.raises(ValueError, match="offload='host' differs from the optimizer's own"):
        plan_memory(10, so.offload(so.adamw(0.1)), offload="host")


def test_batch_recommendation_counts_device_memory_only() -> None:
    profile = ActivationProfile(fixed_bytes=0, per_example_bytes=1000, batch_sizes=(1, 2))
    host = plan_memory(1000, "adam", offload="host")
    rec = recommend_batch_size(host, profile, 100_000, 256, max_fraction=1.0)
    assert rec.per_device_bytes == host.device_bytes + profile.bytes_at(rec.micro_batch_size)
    # Streamed through device memory, the state counts when it outgrows the activations.
    device = plan_memory(1000, "adam", offload="device")
    rec = recommend_batch_size(device, profile, 100_000, 2, max_fraction=1.0)
    assert rec.per_device_bytes == device.device_bytes + device.update_transient_bytes


def test_host_memory_of_hlo_reads_the_entry_layout() -> None:
    text = (
        "HloModule m, input_output_alias={ {0}: (1, {}, may-alias) }, "
        "entry_computation_layout={((f32[2]{0:S(5)}, s32[]{:S(5)}), /*index=1*/"
        "bf16[4,4]{1,0:T(8,128)S(5)}, pred[3]{0})->(bf16[4,4]{1,0:S(5)}, f32[])}, x={1}"
    )
    assert host_memory_of_hlo(text) == (12 + 32, 32, 32)
    assert host_memory_of_hlo("HloModule m, entry_computation_layout={()->f32[]}") == (0, 0, 0)
    assert host_memory_of_hlo("HloModule m") is None
    unknown = "HloModule m, entry_computation_layout={(x99[4]{0:S(5)})->f32[]}"
    assert host_memory_of_hlo(unknown) is None
    # What the compiled programs above rely on: a real module's layout parses.
    compiled = jax.jit(lambda x: x + 1).lower(np.ones(8, np.float32)).compile()
    assert host_memory_of_hlo(compiled.as_text()) == (0, 0, 0)
