"""Memory planner: predictions against real initialised state, ZeRO shards and XLA's analysis."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scirs2_optim_jax import optimizers
from scirs2_optim_jax.config import (
    ActivationProfile,
    FeatureFlags,
    PrecisionConfig,
    RunConfig,
    abstract_params,
    build_optimizer,
    compiled_memory,
    compiled_train_step_memory,
    plan_for_config,
    plan_memory,
    profile_activations,
    recommend_batch_size,
    zero_shard_elements,
)
from scirs2_optim_jax.precision import MasterWeightsState, cast_floating, with_master_weights
from scirs2_optim_jax.training.demo_models import demo_model
from scirs2_optim_jax.training.models import MLP
from tests.helpers import random_tree

# (name, optimizer factory, mu_dtype, nu_dtype) covering every kind of state.
CASES = [
    ("adamw", lambda: optimizers.adamw(1e-3), None, None),
    ("adamw", lambda: optimizers.adamw(1e-3, mu_dtype=jnp.bfloat16), "bfloat16", None),
    ("lamb", lambda: optimizers.lamb(1e-3), None, None),
    ("lion", lambda: optimizers.lion(1e-4), None, None),
    ("sgd", lambda: optimizers.sgd(1e-2), None, None),
    ("adagrad", lambda: optimizers.adagrad(1e-2, accumulator_dtype=jnp.bfloat16), None, "bfloat16"),
    ("rmsprop", lambda: optimizers.rmsprop(1e-3), None, None),
]


def _nbytes(tree: Any) -> int:
    return sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(tree))


def _mlp_params() -> Any:
    return nnx.state(MLP(rngs=nnx.Rngs(0)), nnx.Param)


@pytest.mark.parametrize(("name", "make", "mu", "nu"), CASES)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_plan_equals_initialised_state_bytes(
    key: jax.Array, name: str, make: Any, mu: str | None, nu: str | None, precision: str
) -> None:
    params32 = {"tree": random_tree(key), "mlp": _mlp_params()}
    tx = make()
    params = params32
    if precision == "bf16":
        params = cast_floating(params32, jnp.bfloat16)
        tx = with_master_weights(tx)
    state = tx.init(params)
    master = state.master if isinstance(state, MasterWeightsState) else []
    other = state.inner_state if isinstance(state, MasterWeightsState) else state

    plan = plan_memory(params32, name, precision=precision, mu_dtype=mu, nu_dtype=nu)
    actual = {
        "params": _nbytes(params),
        "grads": _nbytes(params),
        "state": _nbytes(other),
        "master": _nbytes(master),
    }
    predicted = {
        "params": plan.param_bytes,
        "grads": plan.grad_bytes,
        "state": plan.optimizer_state_bytes,
        "master": plan.master_weights_bytes,
    }
    for part, value in actual.items():
        assert predicted[part] == pytest.approx(value, rel=0.01), part
    # The transformation itself, passed in, is planned the same way.
    assert plan_memory(params, tx, precision=precision).total_bytes == plan.total_bytes


def test_plan_from_a_count_matches_a_flat_leaf() -> None:
    count = 12_345
    tx = optimizers.adamw(1e-3)
    actual = _nbytes(tx.init(jnp.zeros(count)))
    plan = plan_memory(count, "adamw")
    assert plan.num_params == count
    assert plan.optimizer_state_bytes == pytest.approx(actual, rel=0.01)
    assert plan.param_bytes == 4 * count


def _mesh() -> Mesh:
    devices = jax.devices()
    assert len(devices) == 8, "the root conftest provides 8 CPU devices"
    return Mesh(np.array(devices), ("data",))


def _zero_shard(x: jax.Array, mesh: Mesh) -> jax.Array:
    """The ZeRO layout: flatten, zero-pad to a multiple of N, split over the data axis."""
    n = mesh.devices.size
    flat = jnp.ravel(x)
    per_device = zero_shard_elements(flat.size, n)
    padded = jnp.pad(flat, (0, per_device * n - flat.size)).reshape(n, per_device)
    return jax.device_put(padded, NamedSharding(mesh, PartitionSpec("data")))


def _replicate(x: jax.Array, mesh: Mesh) -> jax.Array:
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))


def _bytes_on(device: Any, tree: Any) -> int:
    return sum(
        int(shard.data.nbytes)
        for leaf in jax.tree.leaves(tree)
        for shard in leaf.addressable_shards
        if shard.device == device
    )


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_plan_matches_zero_sharded_state_on_8_devices(
    key: jax.Array, stage: int, precision: str
) -> None:
    mesh = _mesh()
    # Sizes 7, 15, 48, 1, 6 and the MLP's: most do not divide 8, so padding matters.
    params32 = {"tree": random_tree(key), "mlp": _mlp_params()}
    tx = optimizers.adamw(1e-3)
    params = params32
    if precision == "bf16":
        params = cast_floating(params32, jnp.bfloat16)
        tx = with_master_weights(tx)
    state = tx.init(params)
    master = state.master if isinstance(state, MasterWeightsState) else {}
    other = state.inner_state if isinstance(state, MasterWeightsState) else state
    grads = params  # same shapes and dtype as the gradients

    placed_params = jax.tree.map(lambda x: _replicate(x, mesh), params)
    placed_state = jax.tree.map(lambda x: _zero_shard(x, mesh), other)
    placed_master = jax.tree.map(lambda x: _zero_shard(x, mesh), master)
    place_grad = _zero_shard if stage == 2 else _replicate
    placed_grads = jax.tree.map(lambda x: place_grad(x, mesh), grads)

    plan = plan_memory(params32, "adamw", precision=precision, zero_stage=stage, num_devices=8)
    for device in mesh.devices.flat:
        assert plan.param_bytes == pytest.approx(_bytes_on(device, placed_params), rel=0.01)
        assert plan.grad_bytes == pytest.approx(_bytes_on(device, placed_grads), rel=0.01)
        assert plan.optimizer_state_bytes == pytest.approx(
            _bytes_on(device, placed_state), rel=0.01
        )
        assert plan.master_weights_bytes == pytest.approx(
            _bytes_on(device, placed_master), rel=0.01
        )
    unsharded = plan_memory(params32, "adamw", precision=precision)
    assert plan.optimizer_state_bytes < unsharded.optimizer_state_bytes / 4


def _digits_loss(graphdef: Any) -> Any:
    def loss_fn(p: Any, batch: Any) -> jax.Array:
        x, y = batch
        dtype = jax.tree.leaves(p)[0].dtype
        logits = nnx.merge(graphdef, p)(x.astype(dtype)).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss_fn


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_plan_matches_compiled_step_memory_analysis(precision: str) -> None:
    config = RunConfig(precision=PrecisionConfig(mode=precision))
    graphdef, params32 = nnx.split(MLP(rngs=nnx.Rngs(0)))
    params = cast_floating(params32, jnp.bfloat16) if precision == "bf16" else params32
    batch = (jnp.zeros((64, 64), jnp.float32), jnp.zeros((64,), jnp.int32))
    memory = compiled_train_step_memory(
        build_optimizer(config), _digits_loss(graphdef), params, batch
    )
    assert memory is not None, "XLA:CPU gives a memory analysis"
    plan = plan_for_config(config, params32)
    batch_bytes = _nbytes(batch)
    assert memory.argument_bytes - batch_bytes == pytest.approx(plan.persistent_bytes, rel=0.01)
    # Params and state are donated: the outputs reuse their buffers.
    assert memory.alias_bytes == pytest.approx(plan.persistent_bytes, rel=0.01)


def test_plan_for_config_applies_feature_flags_zero_and_devices() -> None:
    base = RunConfig()
    flagged = RunConfig(features=FeatureFlags(optimizer_variant="sgd"))
    params = {"w": jnp.zeros((100, 10))}
    adamw_state = plan_for_config(base, params).optimizer_state_bytes
    sgd_state = plan_for_config(flagged, params).optimizer_state_bytes
    assert adamw_state > 2 * 4 * 1000 - 1 and sgd_state < 100  # mu+nu vs counters only
    sharded = plan_for_config(base, params, num_devices=8)
    assert sharded.num_devices == 8 and sharded.zero_stage == 0
    assert sharded.optimizer_state_bytes == adamw_state  # stage 0 replicates


def test_activation_profile_predicts_compiled_memory() -> None:
    model = demo_model("digits_mlp")
    profile = profile_activations(model.loss_fn, model.params, model.batch_for, (256, 512))
    assert profile is not None and profile.per_example_bytes > 0
    # A third batch size, not used for the fit.
    grad_fn = jax.jit(jax.grad(model.loss_fn))
    memory = compiled_memory(grad_fn.lower(model.params, model.batch_for(1024)).compile())
    assert memory is not None
    measured = memory.temp_bytes + memory.argument_bytes - _nbytes_abstract(model.params)
    assert profile.bytes_at(1024) == pytest.approx(measured, rel=0.1)


def _nbytes_abstract(tree: Any) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("devices", [1, 8])
def test_batch_recommendation_is_the_largest_fitting_divisor(devices: int) -> None:
    model = demo_model("digits_mlp")
    profile = profile_activations(model.loss_fn, model.params, model.batch_for, (256, 512))
    plan = plan_memory(model.params, "adamw", zero_stage=1, num_devices=devices)
    per_device = 2048 // devices
    # A budget that holds a quarter of the per-device batch plus a little.
    available = plan.total_bytes + profile.bytes_at(per_device // 4 + 3)
    rec = recommend_batch_size(plan, profile, available, 2048, max_fraction=1.0)
    assert rec.fits
    assert rec.micro_batch_size * rec.accumulation_steps * devices == 2048
    assert rec.per_device_bytes == plan.total_bytes + profile.bytes_at(rec.micro_batch_size)
    assert rec.per_device_bytes <= available
    larger = [m for m in range(rec.micro_batch_size + 1, per_device + 1) if per_device % m == 0]
    assert larger, "the full batch must not fit in this budget"
    for micro in larger:
        assert plan.total_bytes + profile.bytes_at(micro) > available
    assert rec.accumulation_steps > 1


def test_batch_recommendation_reports_when_nothing_fits() -> None:
    plan = plan_memory(1000, "adam")
    profile = ActivationProfile(fixed_bytes=0, per_example_bytes=10**6, batch_sizes=(1, 2))
    rec = recommend_batch_size(plan, profile, plan.total_bytes + 10, 64)
    assert not rec.fits and rec.micro_batch_size == 1
    assert "NOT fit" in rec.describe()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"zero_stage": 3}, "zero_stage must be 0, 1 or 2, got 3"),
        ({"num_devices": 0}, "num_devices must be an integer >= 1, got 0"),
        ({"precision": "fp8"}, "name must be one of fp32, bf16, fp16, got 'fp8'"),
        ({"optimizer": "adamx"}, "optimizer must be one of"),
    ],
)
def test_plan_memory_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_memory(1000, **kwargs)


def test_recommend_batch_size_rejects_a_batch_the_devices_cannot_split() -> None:
    plan = plan_memory(1000, "adam", num_devices=8)
    profile = ActivationProfile(0, 1, (1, 2))
    with pytest.raises(ValueError, match="multiple of the 8 devices, got 100"):
        recommend_batch_size(plan, profile, 10**9, 100)


def test_abstract_params_allocates_nothing_for_a_large_count() -> None:
    tree = abstract_params(7_000_000_000, jnp.bfloat16)
    (leaf,) = jax.tree.leaves(tree)
    assert isinstance(leaf, jax.ShapeDtypeStruct) and leaf.shape == (7_000_000_000,)
    assert plan_memory(7_000_000_000, "adamw", precision="bf16").param_bytes == 14_000_000_000
