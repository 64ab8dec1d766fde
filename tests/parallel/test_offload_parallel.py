"""make_data_parallel_step with an offloaded optimizer, on 8 devices: equal to the same
step without offload (rtol 1e-6) at every ZeRO stage, the state where offload keeps it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import count_compilations, mlp_loss, mlp_problem
from jax.sharding import PartitionSpec as P

import scirs2_optim_jax as so
from scirs2_optim_jax import engine, parallel

STEPS = 5


def _run(tx: optax.GradientTransformation, stage: int, dtype: object = jnp.float32) -> tuple:
    params, batch = mlp_problem(dtype)
    step = parallel.make_data_parallel_step(
        mlp_loss, tx, parallel.make_data_mesh(8), zero_stage=stage
    )
    p, s = step.init(params)
    losses = []
    for _ in range(STEPS):
        p, s, m = step(p, s, batch)
        losses.append(float(m["loss"]))
    return p, s, losses


def _close(got: object, want: object) -> None:
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * float(np.max(np.abs(b))))


CHAINS = {
    "clip+adamw": lambda axis: so.chain(
        so.clip_by_global_norm(1.0, axis_name=axis), so.adamw(1e-2, weight_decay=0.1)
    ),
    "lamb": lambda axis: so.lamb(1e-2, axis_name=axis),
}


@pytest.mark.parametrize("compute", ["device", "host"])
@pytest.mark.parametrize("stage", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(CHAINS))
def test_offloaded_data_parallel_step_equals_the_step_without(
    name: str, stage: int, compute: str
) -> None:
    axis = "data" if stage else None
    want, _, want_losses = _run(CHAINS[name](axis), stage)
    got, state, losses = _run(so.offload(CHAINS[name](axis), compute=compute), stage)
    _close(got, want)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-6)
    leaves = jax.tree.leaves(state)
    if compute == "device":
        assert {x.sharding.memory_kind for x in leaves} == {"pinned_host"}
        if stage:  # each device's slice of a moment in its own host memory
            mu = state[-1][0].mu["w1"] if name == "clip+adamw" else state[0].mu["w1"]
            assert mu.sharding.spec == P("data")
            assert len(mu.addressable_shards) == 8
    else:
        assert {d for x in leaves for d in x.devices()} == {engine.host_device()}


@pytest.mark.parametrize("compute", ["device", "host"])
def test_master_weights_bf16_under_zero_2(compute: str) -> None:
    def make() -> optax.GradientTransformation:
        return so.with_master_weights(
            so.chain(so.clip_by_global_norm(1.0, axis_name="data"), so.adamw(1e-2))
        )

    want, _, _ = _run(make(), 2, jnp.bfloat16)
    got, _, _ = _run(so.offload(make(), compute=compute), 2, jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(got)} == {jnp.dtype(jnp.bfloat16)}
    _close(got, want)


def test_host_compute_refuses_a_multi_process_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match="one process"):
        parallel.make_data_parallel_step(
            mlp_loss, so.offload(so.adamw(1e-2), compute="host"), parallel.make_data_mesh(8)
        )


def test_host_update_runs_the_fused_kernel_with_many_devices() -> None:
    # Eight devices: the kernel is off for device programs, but the host program runs on
    # the host's one CPU device and takes it.
    assert jax.device_count() == 8
    tx = so.offload(so.chain(so.clip_by_global_norm(1.0), so.adamw(1e-2)), compute="host")
    params, _ = mlp_problem()
    state = tx.init(params)
    hlo = engine.host_step(tx).lower(params, state, params).as_text()
    assert "scirs2_adam_step" in hlo
    plain = jax.jit(lambda g, s, p: so.apply_gradients(so.adamw(1e-2), g, s, p))
    assert (
        "scirs2_adam_step" not in plain.lower(params, so.adamw(1e-2).init(params), params).as_text()
    )


def test_host_update_keeps_replicated_caller_arrays() -> None:
    # Parameters replicated over 8 devices share a buffer with the host's CPU device:
    # the host step must not consume them unless asked to.
    mesh = parallel.make_data_mesh(8)
    params = parallel.put_on_mesh({"w": jnp.arange(6.0)}, mesh, P())
    tx = so.offload(so.adamw(1e-2), compute="host")
    state = tx.init(params)
    updates, _ = tx.update(params, state, params)
    assert np.asarray(params["w"]).tolist() == list(range(6))
    assert np.isfinite(np.asarray(updates["w"])).all()


@pytest.mark.parametrize("compute", ["device", "host"])
def test_no_donation_leaves_the_state_alive(compute: str) -> None:
    params, batch = mlp_problem()
    tx = so.offload(so.adamw(1e-2), compute=compute)
    step = parallel.make_data_parallel_step(
        mlp_loss, tx, parallel.make_data_mesh(8), zero_stage=1, donate=False
    )
    p, s = step.init(params)
    step(p, s, batch)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((p, s)))


def test_host_step_returns_replicated_params_and_compiles_once() -> None:
    # The new parameters come back as slices, all-gathered on the devices: replicated as
    # they went in, so later steps reuse every compiled program.
    params, batch = mlp_problem()
    tx = so.offload(
        so.chain(so.clip_by_global_norm(1.0, axis_name="data"), so.adamw(1e-2)), compute="host"
    )
    step = parallel.make_data_parallel_step(mlp_loss, tx, parallel.make_data_mesh(8), zero_stage=2)
    p, s = step.init(params)
    p, s, _ = step(p, s, batch)
    p, s, _ = step(p, s, batch)
    with count_compilations() as compiled:
        for _ in range(2):
            p, s, _ = step(p, s, batch)
    assert compiled == []
    assert all(x.sharding.is_fully_replicated and len(x.devices()) == 8 for x in jax.tree.leaves(p))
