"""CheckpointManager: save/restore, asynchronous saves, retention, the save interval, and
types that survive a restore with or without a target."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.core import FrozenDict
from helpers import random_tree

import scirs2_optim_jax as so
from scirs2_optim_jax.checkpoint import (
    CheckpointManager,
    CheckpointState,
    Layout,
    opt_state_layout,
    register_type,
)
from scirs2_optim_jax.training import MLP


def _state(seed: int = 0, tx: optax.GradientTransformation | None = None) -> CheckpointState:
    params = random_tree(jax.random.key(seed))
    tx = tx or so.adamw(1e-3, mu_dtype=jnp.bfloat16)
    grads = jax.tree.map(jnp.ones_like, params)
    opt_state = tx.init(params)
    _, opt_state = tx.update(grads, opt_state, params)  # count > 0, moments non-zero
    return CheckpointState(
        params, opt_state, jax.random.key(seed + 1), {"epoch": 3, "batch": np.int32(17)}
    )


def _assert_same(actual: Any, expected: Any) -> None:
    """Same tree structure (container types included), leaf types, dtypes and values."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree.leaves(expected), strict=True
    ):
        where = jax.tree_util.keystr(path)
        assert type(a) is type(b) or (isinstance(a, jax.Array) and isinstance(b, jax.Array)), where
        if isinstance(b, jax.Array) and jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key):
            assert a.dtype == b.dtype, where
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert np.asarray(a).dtype == np.asarray(b).dtype, where
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=where)


def test_save_restore_round_trip_keeps_types_without_target(tmp_path: Path) -> None:
    state = _state()
    with CheckpointManager(tmp_path) as mgr:
        assert mgr.save(7, state, metrics={"loss": 0.25}, config={"lr": 1e-3, "opt": "adamw"})
        mgr.wait()
        restored = mgr.restore()
    assert restored.step == 7
    assert restored.metrics == {"loss": 0.25}
    assert restored.config == {"lr": 1e-3, "opt": "adamw"}
    _assert_same(restored.state, state)
    adam = restored.state.opt_state[0]
    assert type(adam).__name__ == "ScaleByAdamState" and adam.mu["head"].dtype == jnp.bfloat16
    assert isinstance(restored.state.data_position["epoch"], int)
    assert isinstance(restored.state.data_position["batch"], np.int32)


def test_flax_structures_survive_with_and_without_target(tmp_path: Path) -> None:
    model = MLP(8, (6,), 3, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    tx = so.lamb(1e-2)
    state = CheckpointState(
        params, tx.init(params), None, FrozenDict({"epoch": 1, "order": (2, 3)})
    )
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(1, state)
        untargeted = mgr.restore(1).state
        targeted = mgr.restore(1, jax.eval_shape(lambda: state)).state
    for restored in (untargeted, targeted):
        _assert_same(restored, state)
        assert isinstance(restored.params, nnx.State)
        assert isinstance(restored.params["head"]["kernel"], nnx.Param)
        assert isinstance(restored.data_position, FrozenDict)
    fresh = MLP(8, (6,), 3, rngs=nnx.Rngs(1))
    nnx.update(fresh, untargeted.params)
    x = jnp.ones((2, 8))
    np.testing.assert_array_equal(fresh(x), model(x))


def test_target_decides_leaf_kinds(tmp_path: Path) -> None:
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.zeros(3)}
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(0, {"params": params})
        as_numpy = mgr.restore(0, {"params": jax.tree.map(np.asarray, params)}).state
        device = jax.devices()[3]
        placed = mgr.restore(0, placement=device).state
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(as_numpy))
    np.testing.assert_array_equal(as_numpy["params"]["w"], params["w"])
    assert all(x.devices() == {device} for x in jax.tree.leaves(placed))


@pytest.mark.parametrize(
    ("other", "expected"),
    [
        # Another optimizer: momentum's trace instead of Adam's moments.
        (lambda p: optax.sgd(0.1, momentum=0.9).init(p), r"\.opt_state\[0\]\.trace\['head'\]"),
        # Another model: a parameter of another shape.
        (None, r"\.params\['head'\]: saved float32\[3, 2\], target float32\[4, 2\]"),
    ],
)
def test_mismatched_target_is_refused_naming_paths(
    tmp_path: Path, other: Any, expected: str
) -> None:
    state = _state()
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(0, state)
        if other is None:
            params = dict(state.params, head=jnp.zeros((4, 2)))
            target = state._replace(params=params)
        else:
            target = state._replace(opt_state=other(state.params))
        with pytest.raises(ValueError, match=expected) as info:
            mgr.restore(0, target)
    assert "does not match checkpoint step 0" in str(info.value)


def test_same_paths_but_other_namedtuple_is_refused(tmp_path: Path) -> None:
    class Other(NamedTuple):
        count: jax.Array
        mu: Any
        nu: Any

    state = _state()
    adam = state.opt_state[0]
    target = state._replace(opt_state=(Other(*adam), *state.opt_state[1:]))
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(0, state)
        with pytest.raises(
            ValueError,
            match=r"\.opt_state\[0\]: saved a scirs2_optim_jax.*ScaleByAdamState, the target.*Oth",
        ):
            mgr.restore(0, target)


def test_params_only_is_explicit(tmp_path: Path) -> None:
    state = _state()
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(0, state)
        only = mgr.restore(0, params_only=True).state
        _assert_same(only, state.params)
        targeted = mgr.restore(0, jax.eval_shape(lambda: state.params), params_only=True)
        _assert_same(targeted.state, state.params)
        # A params-only target for a full restore is refused, not silently accepted.
        with pytest.raises(ValueError, match="matches the saved params: pass params_only=True"):
            mgr.restore(0, state.params)
        mgr.save(1, {"weights": state.params})
        with pytest.raises(ValueError, match="params_only needs a state with a params"):
            mgr.restore(1, params_only=True)


def test_unknown_types_need_registration_or_a_target(tmp_path: Path) -> None:
    class Mine(NamedTuple):
        a: jax.Array

    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(0, {"x": Mine(jnp.ones(2))})
        with pytest.raises(TypeError, match=r"not a trusted type: register it"):
            mgr.restore(0)
        assert isinstance(mgr.restore(0, {"x": Mine(jnp.zeros(2))}).state["x"], Mine)
        register_type(Mine)
        assert isinstance(mgr.restore(0).state["x"], Mine)


def test_untrusted_module_is_never_imported(tmp_path: Path) -> None:
    from scirs2_optim_jax.checkpoint import treespec

    description = treespec.describe_tree({"a": 1})
    nodes = dict(description.nodes, type="os:system")
    with pytest.raises(TypeError, match="'os:system', which is not a trusted type"):
        treespec.rebuild_tree(treespec.TreeDescription(nodes, description.leaves), [1])


def test_async_save_copies_the_state(tmp_path: Path) -> None:
    state = {"w": np.zeros((256, 256), np.float32)}
    mgr = CheckpointManager(tmp_path)
    assert mgr.save(0, state)
    state["w"][:] = 1.0  # the caller may reuse its buffers at once
    mgr.wait()
    assert mgr.all_steps() == [0] and mgr.latest_step() == 0
    np.testing.assert_array_equal(mgr.restore().state["w"], 0.0)
    mgr.close()
    assert not [p for p in os.listdir(tmp_path) if "tmp" in p]


def test_save_interval_policy_and_force(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, save_interval_steps=5, async_save=False) as mgr:
        saved = [step for step in range(1, 13) if mgr.save(step, {"s": step})]
        assert saved == [5, 10]
        assert mgr.save(12, {"s": 12}, force=True)
        assert mgr.all_steps() == [5, 10, 12]


def test_retention_keeps_last_every_kth_and_newest(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, keep_last=2, keep_every=4) as mgr:
        for step in range(1, 11):
            mgr.save(step, {"s": step})
        mgr.wait()
        assert mgr.all_steps() == [4, 8, 9, 10]
    assert sorted(os.listdir(tmp_path)) == ["10", "4", "8", "9"]  # nothing half-deleted left
    with CheckpointManager(tmp_path, read_only=True) as mgr:
        assert mgr.all_steps() == [4, 8, 9, 10]


@pytest.mark.parametrize(("mode", "kept"), [("min", [2, 5, 8]), ("max", [7, 8])])
def test_retention_keeps_best_by_metric_and_never_the_newest(
    tmp_path: Path, mode: str, kept: list[int]
) -> None:
    losses = [0.9, 0.1, 0.8, 0.7, 0.2, 0.6, 1.5, 0.95]
    with CheckpointManager(tmp_path, keep_best=2, best_metric="loss", best_mode=mode) as mgr:
        for step, loss in enumerate(losses, start=1):
            mgr.save(step, {"s": step}, metrics={"loss": loss})
        mgr.wait()
        # min: the two lowest losses (2, 5) and the newest (8); max: 7, and 8 (best and newest).
        assert mgr.all_steps() == kept
        with pytest.raises(ValueError, match="keep_best ranks by the metric 'loss'"):
            mgr.save(9, {"s": 9}, metrics={"acc": 1.0})


def test_committed_step_is_never_overwritten(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(3, {"w": np.ones(2)})
        with pytest.raises(ValueError, match=r"step 3 is already committed.*never overwritten"):
            mgr.save(3, {"w": np.zeros(2)}, force=True)
        np.testing.assert_array_equal(mgr.restore(3).state["w"], 1.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"step": -1}, ValueError, r"step must be an integer >= 0, got -1"),
        ({"step": "../../etc"}, TypeError, r"step must be an integer, got '\.\./\.\./etc'"),
        ({"step": True}, TypeError, r"step must be an integer, got True"),
        ({"metrics": {"loss": float("nan")}}, ValueError, r"metrics\['loss'\] must be finite"),
        ({"metrics": {"loss": "low"}}, TypeError, r"metrics\['loss'\] must be a number"),
        ({"config": {"fn": print}}, TypeError, r"config\['fn'\] must be JSON data"),
        ({"state": {"s": "text"}}, TypeError, r"leaf at \['s'\]: a str"),
    ],
)
def test_save_rejects_bad_arguments(tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    args = {"step": 0, "state": {"w": np.ones(2)}, **kwargs}
    with CheckpointManager(tmp_path) as mgr:
        with pytest.raises(error, match=match):
            mgr.save(**args)
        assert mgr.all_steps() == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"keep_last": 0}, ValueError, "keep_last must be an integer >= 1, got 0"),
        ({"keep_best": 2}, ValueError, "keep_best needs best_metric"),
        ({"best_mode": "lowest"}, ValueError, "best_mode must be 'min' or 'max'"),
        ({"save_interval_steps": 1.5}, TypeError, "save_interval_steps must be an integer"),
    ],
)
def test_constructor_rejects_bad_arguments(
    tmp_path: Path, kwargs: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        CheckpointManager(tmp_path, **kwargs)


def test_restore_errors_are_clear(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path) as mgr:
        with pytest.raises(FileNotFoundError, match="no checkpoint in"):
            mgr.restore()
        mgr.save(2, {"w": np.ones(2)})
        with pytest.raises(FileNotFoundError, match=r"no committed checkpoint for step 5.*\[2\]"):
            mgr.restore(5)
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        CheckpointManager(tmp_path / "missing", read_only=True)


def test_layout_hooks_convert_to_and_from_canonical(tmp_path: Path) -> None:
    # A stand-in for ZeRO: the optimizer state lives padded to 8 elements in memory.
    def pad(tree: Any) -> Any:
        return jax.tree.map(lambda x: jnp.pad(x.reshape(-1), (0, 8 - x.size)), tree)

    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    canonical = CheckpointState(params, {"m": jnp.arange(6.0).reshape(2, 3) * 2})
    in_memory = canonical._replace(opt_state=pad(canonical.opt_state))
    layout = opt_state_layout(lambda s: jax.tree.map(lambda x: x[:6].reshape(2, 3), s), pad)
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(0, in_memory, layout=layout)
        stored = mgr.restore(0).state  # what is on disk: the canonical tree
        back = mgr.restore(0, layout=layout).state
    _assert_same(stored, canonical)
    _assert_same(back, in_memory)
    pair = (layout.to_canonical, layout.from_canonical)
    with CheckpointManager(tmp_path / "pair", async_save=False) as mgr:
        mgr.save(0, in_memory, layout=pair)
        _assert_same(mgr.restore(0, layout=pair).state, in_memory)
    with pytest.raises(TypeError, match="layout must be None, a Layout or a"):
        CheckpointManager(tmp_path / "bad").save(0, in_memory, layout=print)
    with pytest.raises(TypeError, match="to_canonical must be callable"):
        Layout(1, print)


def test_skipped_steps_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(1, {"w": np.ones(2)})
        mgr.save(2, {"w": np.full(2, 2.0)})
    (tmp_path / "2" / "manifest" / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING), CheckpointManager(tmp_path) as mgr:
        restored = mgr.restore()
    assert restored.step == 1
    assert any("skipping checkpoint step 2" in r.getMessage() for r in caplog.records)


def test_save_is_asynchronous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Hold Orbax's background write of the JSON items until the test releases it: save()
    # must return while the step is still uncommitted.
    import orbax.checkpoint as ocp

    release = threading.Event()
    original = ocp.JsonCheckpointHandler._save_fn

    async def held(self: Any, x: Any, directory: Any) -> None:
        release.wait(timeout=10)
        await original(self, x, directory)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", held)
    with CheckpointManager(tmp_path) as mgr:
        assert mgr.save(0, {"w": np.ones(4)})
        assert not (tmp_path / "0").exists() and not release.is_set()
        release.set()
        mgr.wait()
        assert (tmp_path / "0" / "manifest" / "manifest.json").exists()
