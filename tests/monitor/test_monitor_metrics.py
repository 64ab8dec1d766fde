"""In-step metrics: computed inside the jitted step with no host sync, equal to a numpy
reference, read from injected hyperparameters or a schedule, and the same when sharded over
the 8 fake CPU devices as on one device."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import count_compilations
from jax.sharding import PartitionSpec as P

import scirs2_optim_jax as so
from scirs2_optim_jax.monitor import (
    MonitorConfig,
    RunMonitor,
    layer_norms,
    learning_rate_from_state,
    step_metrics,
)
from scirs2_optim_jax.resilience import skip_non_finite
from scirs2_optim_jax.training import MLP

AXIS = "data"


def _tree(seed: int) -> dict:
    keys = jax.random.split(jax.random.key(seed), 3)
    return {
        "dense": {
            "kernel": jax.random.normal(keys[0], (16, 3)),
            "bias": jax.random.normal(keys[1], (8,)),
        },
        "head": jax.random.normal(keys[2], (24,)),
    }


def _np_norm(*arrays: Any) -> float:
    return float(np.sqrt(sum(np.sum(np.asarray(a, np.float64) ** 2) for a in arrays)))


def test_metrics_match_a_numpy_reference() -> None:
    grads, updates, params = _tree(1), _tree(2), _tree(3)
    grads["head"] = grads["head"].at[3].set(jnp.nan).at[5].set(jnp.inf)
    metrics = jax.jit(
        lambda loss, g, u, p: step_metrics(loss, g, u, p, learning_rate=0.125, per_layer=True)
    )(jnp.float32(0.75), grads, updates, params)

    assert float(metrics["loss"]) == 0.75
    assert np.isnan(float(metrics["grad_norm"]))
    assert int(metrics["nonfinite"]) == 2
    assert metrics["nonfinite"].dtype == jnp.int32
    np.testing.assert_allclose(float(metrics["update_norm"]), _np_norm(*jax.tree.leaves(updates)))
    np.testing.assert_allclose(float(metrics["param_norm"]), _np_norm(*jax.tree.leaves(params)))
    assert float(metrics["learning_rate"]) == 0.125
    layers = metrics["layer_param_norm"]
    assert sorted(layers) == ["dense", "head"]
    np.testing.assert_allclose(
        float(layers["dense"]), _np_norm(params["dense"]["kernel"], params["dense"]["bias"])
    )
    np.testing.assert_allclose(float(layers["head"]), _np_norm(params["head"]))
    np.testing.assert_allclose(
        float(metrics["layer_update_norm"]["dense"]),
        _np_norm(updates["dense"]["kernel"], updates["dense"]["bias"]),
    )
    for value in jax.tree.leaves(metrics):
        assert value.shape == ()


def test_learning_rate_from_injected_hyperparams_follows_changes_without_recompiling() -> None:
    tx = optax.inject_hyperparams(so.adamw)(learning_rate=1e-3, weight_decay=0.0)
    params = {"w": jnp.ones(4)}
    with jax.numpy_dtype_promotion("standard"):
        state = tx.init(params)

    @jax.jit
    def step(params: dict, state: Any) -> tuple[dict, Any, dict]:
        grads = {"w": 2 * params["w"]}
        with jax.numpy_dtype_promotion("standard"):
            updates, state = tx.update(grads, state, params)
        return (
            optax.apply_updates(params, updates),
            state,
            step_metrics(jnp.sum(params["w"]), grads, updates, params, opt_state=state),
        )

    params, state, metrics = step(params, state)
    assert float(metrics["learning_rate"]) == pytest.approx(1e-3)
    state.hyperparams["learning_rate"] = jnp.asarray(5e-4, jnp.float32)
    with count_compilations() as compiles:
        params, state, metrics = step(params, state)
    assert compiles == []
    assert float(metrics["learning_rate"]) == pytest.approx(5e-4)
    assert learning_rate_from_state(so.sgd(0.1).init(params)) is None


def test_learning_rate_from_a_schedule_at_the_step_count() -> None:
    schedule = so.warmup_cosine(1e-2, 100)
    grads = {"w": jnp.ones(2)}
    for count in (0, 7, 60):
        metrics = jax.jit(
            lambda c: step_metrics(jnp.float32(1.0), grads, learning_rate=schedule, step=c)
        )(jnp.asarray(count, jnp.int32))
        assert float(metrics["learning_rate"]) == pytest.approx(float(schedule(count)))
    with pytest.raises(TypeError, match="step_metrics: step is required"):
        step_metrics(jnp.float32(1.0), grads, learning_rate=schedule)


def test_metrics_carry_the_guard_counters() -> None:
    tx = skip_non_finite(so.sgd(0.1))
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    bad = {"w": jnp.array([1.0, jnp.nan, 1.0])}
    updates, state = tx.update(bad, state, params)
    metrics = step_metrics(jnp.float32(0.0), bad, updates, params, opt_state=state)
    assert int(metrics["skipped_steps"]) == 1
    assert int(metrics["nonfinite_steps"]) == 1
    assert int(metrics["nonfinite"]) == 1
    assert float(metrics["update_norm"]) == 0.0


def test_nnx_training_step_returns_metrics_without_host_transfers() -> None:
    model = MLP(64, (32,), 10, rngs=nnx.Rngs(0))
    schedule = so.warmup_cosine(1e-2, 50)
    optimizer = nnx.Optimizer(model, skip_non_finite(so.adamw(schedule)), wrt=nnx.Param)

    @nnx.jit
    def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> dict:
        def loss_fn(model: MLP) -> jax.Array:
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        count = optimizer.step[...]
        # A copy: the State returned by nnx.state holds the variables the update mutates.
        before = jax.tree.map(lambda p: p, nnx.state(model, nnx.Param))
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        after = nnx.state(model, nnx.Param)
        updates = jax.tree.map(jnp.subtract, after, before)
        return step_metrics(
            loss,
            grads,
            updates,
            after,
            opt_state=optimizer.opt_state,
            learning_rate=schedule,
            step=count,
            per_layer=True,
        )

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 64)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=16), jnp.int32)
    train_step(model, optimizer, x, y)  # compile (and move the inputs) first
    with jax.transfer_guard("disallow"):
        metrics = train_step(model, optimizer, x, y)
    assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(metrics))
    assert sorted(metrics["layer_grad_norm"]) == ["head", "hidden/0"]
    assert float(metrics["learning_rate"]) == pytest.approx(float(schedule(1)))
    assert float(metrics["update_norm"]) > 0
    assert int(metrics["skipped_steps"]) == 0


def test_step_metrics_adds_no_host_callback_to_the_step() -> None:
    jaxpr = jax.make_jaxpr(
        lambda g, p: step_metrics(jnp.float32(1.0), g, g, p, learning_rate=0.1, per_layer=True)
    )(_tree(1), _tree(2))
    text = str(jaxpr)
    assert "callback" not in text and "io_callback" not in text


def _mesh() -> jax.sharding.Mesh:
    assert jax.device_count() == 8, "tests need 8 fake CPU devices"
    return jax.make_mesh((8,), (AXIS,), axis_types=(jax.sharding.AxisType.Explicit,))


def _sharded_metrics(
    per_example_loss: jax.Array, grads: dict, updates: dict, params: dict, axis: str | None
) -> dict:
    mesh = _mesh()
    spec = jax.tree.map(lambda _: P(AXIS), grads)

    def local(losses: jax.Array, g: dict, u: dict, p: dict) -> dict:
        return step_metrics(
            jnp.mean(losses), g, u, p, learning_rate=0.5, axis_name=axis, per_layer=True
        )

    fn = jax.jit(
        jax.shard_map(
            local, mesh=mesh, in_specs=(P(AXIS), spec, spec, spec), out_specs=P(), check_vma=False
        )
    )
    put = lambda t: jax.tree.map(
        lambda x: jax.device_put(x, jax.sharding.NamedSharding(mesh, P(AXIS))), t
    )
    return fn(put(per_example_loss), put(grads), put(updates), put(params))


def test_sharded_metrics_equal_the_single_device_metrics() -> None:
    grads, updates, params = _tree(4), _tree(5), _tree(6)
    grads["dense"]["kernel"] = grads["dense"]["kernel"].at[13, 1].set(jnp.inf)
    losses = jax.random.uniform(jax.random.key(7), (64,))
    expected = step_metrics(
        jnp.mean(losses), grads, updates, params, learning_rate=0.5, per_layer=True
    )
    actual = _sharded_metrics(losses, grads, updates, params, AXIS)
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), e in zip(
        jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree.leaves(expected), strict=True
    ):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(e), rtol=1e-6, err_msg=jax.tree_util.keystr(path)
        )
    assert int(actual["nonfinite"]) == 1

    # Without the axis each device reports its own shard: not the same numbers.
    local = _sharded_metrics(losses, grads, updates, params, None)
    assert not np.isclose(float(local["param_norm"]), float(expected["param_norm"]))


def test_layer_norms_names_nnx_layers_without_the_variable_attribute() -> None:
    model = MLP(4, (3,), 2, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    norms = layer_norms(params)
    assert sorted(norms) == ["head", "hidden/0"]
    np.testing.assert_allclose(
        float(norms["head"]),
        _np_norm(params["head"]["kernel"][...], params["head"]["bias"][...]),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"loss": jnp.ones(2)}, ValueError, "step_metrics: loss must be a scalar"),
        ({"per_layer": 1}, TypeError, "step_metrics: per_layer must be a bool"),
    ],
)
def test_step_metrics_rejects_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    args = {"loss": jnp.float32(1.0), "grads": {"w": jnp.ones(2)}} | kwargs
    with pytest.raises(error, match=match):
        step_metrics(**args)


class _WatchedMetrics(Mapping):
    """A metrics mapping that records whether anyone has read its values."""

    def __init__(self, values: dict) -> None:
        self._values = values
        self.read = False

    def __getitem__(self, key: str) -> Any:
        self.read = True
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        self.read = True
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def test_run_monitor_reads_each_step_one_step_late_so_the_host_never_waits() -> None:
    monitor = RunMonitor(MonitorConfig(log_every=0), configure_logs=False)
    batches = [_WatchedMetrics({"loss": jnp.float32(1.0 / (i + 1))}) for i in range(3)]
    assert monitor.record(0, batches[0]) is None
    assert not batches[0].read
    record = monitor.record(1, batches[1])
    assert record is not None and record.step == 0 and record.values["loss"] == 1.0
    assert batches[0].read and not batches[1].read
    record = monitor.record(2, batches[2])
    assert record is not None and record.step == 1 and not batches[2].read
    last = monitor.flush()
    assert last is not None and last.step == 2 and batches[2].read
    monitor.close()


def test_run_monitor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="RunMonitor: batch_size must be an integer >= 1"):
        RunMonitor(batch_size=0)
    with pytest.raises(TypeError, match="RunMonitor: config must be a MonitorConfig"):
        RunMonitor({"port": 0})  # type: ignore[arg-type]
    monitor = RunMonitor(configure_logs=False)
    with pytest.raises(TypeError, match=r"RunMonitor\.record: step must be an integer, got '3'"):
        monitor.record("3", {"loss": 1.0})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"RunMonitor\.record: metrics must be a mapping, got list"):
        monitor.record(3, [1.0])  # type: ignore[arg-type]
    assert monitor.record(np.int64(3), {"loss": 1.0}) is None
    monitor.close()
