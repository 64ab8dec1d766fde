"""What a step stores and how a save runs: arrays under the state's own tree paths (plain
Orbax reads them), background saves that block only for the host arrays and report their
failures, no second host copy, and restores that hash each array as it is read."""

from __future__ import annotations

import concurrent.futures
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import scirs2_optim_jax as so
from scirs2_optim_jax.checkpoint import (
    CheckpointManager,
    CheckpointSaveError,
    CheckpointState,
    integrity,
    layout,
    storage,
    writer,
)
from scirs2_optim_jax.checkpoint.metadata import storage_name


def _adamw_state() -> CheckpointState:
    params = {
        "dense": {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)},
        "head": {"kernel": jnp.full((2, 1), 0.5)},
    }
    tx = optax.chain(so.clip_by_global_norm(1.0), so.adamw(1e-2))
    _, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    return CheckpointState(params, opt_state, jax.random.key(3), {"epoch": 2, "batch": 5})


def test_plain_orbax_restores_the_state_as_a_readable_tree(tmp_path: Path) -> None:
    """A user without this package loads a step with plain Orbax: as a nested tree named by
    the state's own paths, onto a target of the state's structure, or only the params."""
    state = _adamw_state()
    with CheckpointManager(tmp_path) as mgr:
        mgr.save(3, state, {"loss": 0.5})
    path = tmp_path / "3" / "state"

    # No target: nested dicts and lists, named by the tree paths.
    tree = ocp.StandardCheckpointer().restore(path)
    assert sorted(tree) == ["data_position", "opt_state", "params", "rng"]
    np.testing.assert_array_equal(
        tree["params"]["dense"]["kernel"], state.params["dense"]["kernel"]
    )
    adam = state.opt_state[1][0]
    assert tree["opt_state"][0] is None  # clip_by_global_norm's EmptyState
    np.testing.assert_array_equal(
        tree["opt_state"][1][0]["mu"]["dense"]["kernel"], adam.mu["dense"]["kernel"]
    )
    np.testing.assert_array_equal(
        tree["opt_state"][1][0]["nu"]["head"]["kernel"], adam.nu["head"]["kernel"]
    )
    assert int(tree["opt_state"][1][0]["count"]) == 1
    np.testing.assert_array_equal(tree["rng"], jax.random.key_data(state.rng))
    assert int(tree["data_position"]["batch"]) == 5

    # A target of the same structure (the typed key as its key data): the state's own types.
    like = state._replace(rng=jax.random.key_data(state.rng))
    restored = ocp.StandardCheckpointer().restore(path, jax.eval_shape(lambda: like))
    assert type(restored) is CheckpointState
    assert type(restored.opt_state[1][0]) is type(adam)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(like), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    # Only the parameters.
    params_only = ocp.PyTreeCheckpointer().restore(
        path,
        args=ocp.args.PyTreeRestore(
            item={"params": jax.eval_shape(lambda: state.params)}, partial_restore=True
        ),
    )
    assert jax.tree.structure(params_only["params"]) == jax.tree.structure(state.params)
    np.testing.assert_array_equal(params_only["params"]["head"]["kernel"], 0.5)


@pytest.mark.parametrize(
    "state",
    [
        {"a.b": np.ones(2), "a": {"b": np.zeros(2)}},  # Orbax joins the keys with dots
        {"a/b": np.ones(2), "a": {"b": np.zeros(2)}},  # the manifest joins them with slashes
        {"": np.ones(2), "a": np.zeros(2)},  # an empty name
    ],
    ids=["dots", "slashes", "empty"],
)
def test_colliding_paths_are_stored_under_flat_names(tmp_path: Path, state: dict) -> None:
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(1, state)
        restored = mgr.restore(1).state
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(got, want)
    stored = ocp.StandardCheckpointer().restore(tmp_path / "1" / "state")
    assert sorted(stored) == ["leaf_00000", "leaf_00001"]


def test_storage_paths_name_the_keys_of_every_container() -> None:
    from flax import nnx

    state = {"model": nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0))), "list": [np.ones(1)]}
    host = [np.asarray(x) for x in jax.tree.leaves(state)]
    tree, paths = storage.storage_tree(state, host)
    assert [storage_name(p) for p in paths] == [
        "list/0",
        "model/bias/value",
        "model/kernel/value",
    ]
    assert storage.lookup(tree, ("model", "kernel", "value")) is host[2]


def _hold_hashing(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Makes every background checksum wait until the returned event is set."""
    release = threading.Event()
    digest = writer.array_digest

    def held(array: np.ndarray, algorithm: str) -> str:
        assert release.wait(timeout=30)
        return digest(array, algorithm)

    monkeypatch.setattr(writer, "array_digest", held)
    return release


def test_save_returns_before_hashing_and_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = _hold_hashing(monkeypatch)
    state = {"w": jnp.arange(1000.0)}
    with CheckpointManager(tmp_path) as mgr:
        start = time.perf_counter()
        assert mgr.save(1, state)
        assert time.perf_counter() - start < 5
        assert not (tmp_path / "1").exists()
        assert mgr.all_steps() == [1] and not mgr.should_save(1) and mgr.should_save(2)
        release.set()
        mgr.wait()
        assert (tmp_path / "1" / "manifest" / "manifest.json").exists()
        np.testing.assert_array_equal(mgr.restore(1).state["w"], np.arange(1000.0))


def test_donating_the_saved_buffers_at_once_is_safe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The save references the host-resident jax array; the loop donates it right away.
    release = _hold_hashing(monkeypatch)
    x = jnp.arange(100_000, dtype=jnp.float32)
    step = jax.jit(lambda a: a * 2 + 1, donate_argnums=0)
    with CheckpointManager(tmp_path) as mgr:
        mgr.save(1, {"w": x})
        y = jax.block_until_ready(step(x))
        y = jax.block_until_ready(step(y))
        release.set()
        restored = mgr.restore(1).state["w"]
    np.testing.assert_array_equal(restored, np.arange(100_000, dtype=np.float32))
    np.testing.assert_array_equal(y, np.arange(100_000, dtype=np.float32) * 4 + 3)


def test_host_resident_jax_arrays_are_referenced_not_copied() -> None:
    x = jnp.ones((256, 256))
    mutable = np.ones(4)
    host = layout.host_arrays(["['x']", "['m']"], [x, mutable])
    assert host[0].ctypes.data == x.unsafe_buffer_pointer() and not host[0].flags.writeable
    assert not np.shares_memory(host[1], mutable)  # the caller may change it


def test_orbax_writes_and_the_checksums_read_the_same_host_arrays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No second host copy: Orbax writes from the arrays save() took, which are hashed in
    place; a host-resident jax array is the jax buffer itself."""
    written: list[int] = []
    hashed: list[int] = []
    serialize = ocp.type_handlers.NumpyHandler.serialize
    digest = writer.array_digest

    async def spy_serialize(self: Any, values: Any, infos: Any, args: Any = None) -> Any:
        written.extend(v.ctypes.data for v in values)
        return await serialize(self, values, infos, args)

    def spy_digest(array: np.ndarray, algorithm: str) -> str:
        hashed.append(array.ctypes.data)
        return digest(array, algorithm)

    monkeypatch.setattr(ocp.type_handlers.NumpyHandler, "serialize", spy_serialize)
    monkeypatch.setattr(writer, "array_digest", spy_digest)
    state = {"a": jnp.ones((128, 64)), "b": jnp.arange(512.0)}
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(1, state)
    buffers = {x.unsafe_buffer_pointer() for x in state.values()}
    assert set(written) == set(hashed) == buffers


def _fail_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(array: np.ndarray, algorithm: str) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(writer, "array_digest", broken)


def _until_raised(call: Callable[[], object]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        call()  # raises once the background save has failed
        time.sleep(0.01)


CALLS: dict[str, Callable[[CheckpointManager], object]] = {
    "save": lambda mgr: mgr.save(2, {"w": np.ones(2)}),
    "wait": lambda mgr: mgr.wait(),
    "restore": lambda mgr: mgr.restore(),
    "close": lambda mgr: mgr.close(),
    "should_save": lambda mgr: _until_raised(lambda: mgr.should_save(2)),
    "all_steps": lambda mgr: _until_raised(mgr.all_steps),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_a_background_failure_is_raised_by_the_next_call(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    call: str,
) -> None:
    mgr = CheckpointManager(tmp_path)
    with monkeypatch.context() as patch:
        _fail_hashing(patch)
        assert mgr.save(1, {"w": np.ones(2)})  # returns: the failure comes later
        with caplog.at_level(logging.ERROR), pytest.raises(CheckpointSaveError) as info:
            CALLS[call](mgr)
    err = info.value
    assert err.step == 1 and isinstance(err.__cause__, OSError)
    assert "saving checkpoint step 1 in" in str(err) and "OSError: disk full" in str(err)
    assert "saving checkpoint step 1" in caplog.text  # logged when it happened, too
    if call == "close":
        mgr = CheckpointManager(tmp_path)
    assert mgr.all_steps() == [] and not (tmp_path / "1").exists()
    # Nothing of the failed save is left for a later save to trip over.
    assert list(tmp_path.glob("1.orbax-checkpoint-tmp*")) == []
    mgr.wait()  # raised once, not again
    mgr.save(3, {"w": np.full(2, 3.0)})
    assert mgr.restore().step == 3
    mgr.close()


def test_a_synchronous_save_raises_its_failure_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_hashing(monkeypatch)
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        with pytest.raises(CheckpointSaveError, match="disk full"):
            mgr.save(1, {"w": np.ones(2)})
        assert mgr.all_steps() == []


def test_restore_hashes_each_array_as_it_is_read(tmp_path: Path) -> None:
    state = {f"w{i}": np.full((64, 64), i, np.float32) for i in range(6)}
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(1, state)
    seen: list[np.ndarray] = []
    tree = storage.read_tree(tmp_path / "1" / "state", on_read=seen.append)
    assert len(seen) == 6 and {id(a) for a in seen} == {id(a) for a in tree.values()}

    class CountingPool(concurrent.futures.ThreadPoolExecutor):
        submitted = 0

        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            CountingPool.submitted += 1
            return super().submit(fn, *args, **kwargs)

    with CountingPool(2) as pool:
        verified = integrity.verify_step(1, tmp_path / "1", pool)
    assert CountingPool.submitted == 6
    for i, value in enumerate(verified.values):
        np.testing.assert_array_equal(value, i)


def test_a_save_in_flight_when_the_program_ends_is_committed(tmp_path: Path) -> None:
    # No wait() and no close(): the interpreter waits for the background save on exit.
    code = (
        "import numpy as np\n"
        "from scirs2_optim_jax.checkpoint import CheckpointManager\n"
        f"mgr = CheckpointManager({str(tmp_path)!r})\n"
        "mgr.save(7, {'w': np.arange(300_000.0)})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    with CheckpointManager(tmp_path, read_only=True) as mgr:
        assert [(info.step, info.ok) for info in mgr.info()] == [(7, True)]
        np.testing.assert_array_equal(mgr.restore().state["w"], np.arange(300_000.0))


def test_arrays_are_written_in_small_data_files(tmp_path: Path) -> None:
    # 4 MiB data files: tensorstore holds a data file's compressed bytes until it is written,
    # so small files keep a save's extra host memory small.
    rng = np.random.default_rng(0)
    state = {f"w{i}": rng.standard_normal(2**20).astype(np.float32) for i in range(6)}  # 24 MiB
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(1, state)
    stored = tmp_path / "1" / "state"
    data = [p.stat().st_size for p in stored.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert len([size for size in data if size > 2**20]) >= 2  # not one 24 MiB file
    restored = ocp.StandardCheckpointer().restore(stored)
    for name, value in state.items():
        np.testing.assert_array_equal(restored[name], value)


def test_an_array_larger_than_a_data_file_is_not_split(tmp_path: Path) -> None:
    # Orbax's chunks must divide the array: a prime length would mean one-element chunks.
    prime = 2_097_169  # 8 MiB of float32 and a little more: larger than a data file
    assert all(prime % k for k in range(2, 1449))
    state = {"odd": np.arange(prime, dtype=np.float32), "small": np.ones(3)}
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(1, state)
        np.testing.assert_array_equal(mgr.restore(1).state["odd"], state["odd"])
    stored = ocp.PyTreeCheckpointer().metadata(tmp_path / "1" / "state").item_metadata
    assert stored["odd"].storage.chunk_shape == (prime,)
