"""Integrity and safety: checksummed manifests, corrupted and truncated checkpoints named and
skipped, the ``ckpt ls``/``ckpt verify`` command, no pickle, nothing outside the directory,
nothing overwritten."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from scirs2_optim_jax.checkpoint import CheckpointCorruptError, CheckpointManager, CheckpointState
from scirs2_optim_jax.checkpoint.commands import add_parser
from scirs2_optim_jax.checkpoint.integrity import array_digest, json_digest


def _save_steps(directory: Path, steps: tuple[int, ...] = (1, 2, 3)) -> None:
    with CheckpointManager(directory, async_save=False) as mgr:
        for step in steps:
            state = {"w": np.full((64, 32), step, np.float32), "b": np.arange(5) * step}
            mgr.save(step, state, metrics={"loss": 1.0 / step})


def _data_files(step_dir: Path) -> list[Path]:
    """The OCDBT data files that hold the arrays (those restore actually reads)."""
    return sorted(p for p in (step_dir / "state" / "d").iterdir() if p.is_file())


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def _truncate_data(step_dir: Path) -> Path:
    target = _data_files(step_dir)[-1]
    _truncate(target)
    return target


def _flip_data(step_dir: Path) -> Path:
    target = max(_data_files(step_dir), key=lambda p: p.stat().st_size)
    _flip_byte(target)
    return target


def _edit_metadata(step_dir: Path) -> Path:
    # Valid JSON, plausible content, but not what was committed.
    target = step_dir / "meta" / "meta.json"
    meta = json.loads(target.read_text())
    meta["metrics"]["loss"] = 0.0
    target.write_text(json.dumps(meta))
    return target


def _drop_manifest(step_dir: Path) -> Path:
    target = step_dir / "manifest" / "manifest.json"
    target.unlink()
    return target


def _truncate_manifest(step_dir: Path) -> Path:
    target = step_dir / "manifest" / "manifest.json"
    _truncate(target)
    return target


def _swap_arrays_from_step_1(step_dir: Path) -> Path:
    # Readable arrays of the right shapes, from another checkpoint: only the checksums can tell.
    shutil.rmtree(step_dir / "state")
    shutil.copytree(step_dir.parent / "1" / "state", step_dir / "state")
    return step_dir / "state"


CORRUPTIONS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated data file": (_truncate_data, "OUT_OF_RANGE|DATA_LOSS"),
    "flipped data byte": (_flip_data, "Error decoding|DATA_LOSS"),
    "edited metadata": (_edit_metadata, "its xxh3_128 checksum does not match the manifest"),
    "missing manifest": (_drop_manifest, "missing"),
    "truncated manifest": (_truncate_manifest, "not valid JSON"),
    "arrays from another step": (
        _swap_arrays_from_step_1,
        r"the array b for \['b'\] does not match its xxh3_128 checksum",
    ),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_is_named_and_newest_good_step_restored(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    _save_steps(tmp_path)
    corrupt, reason = CORRUPTIONS[name]
    bad_file = corrupt(tmp_path / "3")
    with CheckpointManager(tmp_path) as mgr:
        with pytest.raises(CheckpointCorruptError, match=reason) as info:
            mgr.restore(3)
        err = info.value
        assert err.step == 3 and "checkpoint step 3 is corrupt" in str(err)
        assert err.path == str(bad_file)
        with pytest.raises(CheckpointCorruptError):
            mgr.verify(3)
        mgr.verify(2)
        restored = mgr.restore()
    assert restored.step == 2
    np.testing.assert_array_equal(restored.state["w"], 2.0)
    assert f"skipping checkpoint step 3: checkpoint step 3 is corrupt: {bad_file}" in caplog.text


def test_every_step_bad_raises_listing_them(tmp_path: Path) -> None:
    _save_steps(tmp_path, (1, 2))
    _drop_manifest(tmp_path / "1")
    _edit_metadata(tmp_path / "2")
    mgr = CheckpointManager(tmp_path)
    with mgr, pytest.raises(CheckpointCorruptError, match="no checkpoint verifies") as info:
        mgr.restore()
    assert "step 1 is corrupt" in str(info.value) and "step 2 is corrupt" in str(info.value)


def test_manifest_has_a_checksum_per_array_and_for_the_metadata(tmp_path: Path) -> None:
    _save_steps(tmp_path, (4,))
    manifest = json.loads((tmp_path / "4" / "manifest" / "manifest.json").read_text())
    meta = json.loads((tmp_path / "4" / "meta" / "meta.json").read_text())
    assert manifest["step"] == 4 and manifest["hash"] == "xxh3_128"
    assert manifest["arrays"] == {
        "b": array_digest(np.arange(5) * 4),
        "w": array_digest(np.full((64, 32), 4, np.float32)),
    }
    assert manifest["metadata_hash"] == json_digest(meta)
    assert meta["arrays"] == [["b"], ["w"]]


# The metadata and manifest of one step as the first format (sha256, flat names) wrote them.
# Checkpoints written then must keep restoring: test_first_format_steps_still_restore writes
# this step the way that format's save did and restores it.
V1_META = {
    "format": "scirs2_optim_jax.checkpoint/1",
    "step": 5,
    "tree": {
        "nodes": {
            "type": "scirs2_optim_jax.checkpoint.manager:CheckpointState",
            "path": "",
            "aux": None,
            "children": [
                {
                    "type": "builtins:dict",
                    "path": ".params",
                    "aux": {"list": ["w"]},
                    "children": [{"leaf": 0}],
                },
                {
                    "type": "builtins:tuple",
                    "path": ".opt_state",
                    "aux": None,
                    "children": [{"leaf": 1}],
                },
                {"leaf": 2},
                {
                    "type": "builtins:dict",
                    "path": ".data_position",
                    "aux": {"list": ["epoch"]},
                    "children": [{"leaf": 3}],
                },
            ],
        },
        "leaves": [
            {
                "path": ".params['w']",
                "kind": "numpy",
                "shape": [3],
                "dtype": "float32",
                "key_impl": None,
            },
            {
                "path": ".opt_state[0]",
                "kind": "numpy_scalar",
                "shape": [],
                "dtype": "int32",
                "key_impl": None,
            },
            {
                "path": ".rng",
                "kind": "key",
                "shape": [],
                "dtype": "uint32",
                "key_impl": "threefry2x32",
            },
            {
                "path": ".data_position['epoch']",
                "kind": "int",
                "shape": [],
                "dtype": "int64",
                "key_impl": None,
            },
        ],
    },
    "metrics": {"loss": 0.25},
    "config": {"lr": 0.1},
}
V1_MANIFEST = {
    "format": "scirs2_optim_jax.checkpoint/1",
    "step": 5,
    "arrays": {
        "leaf_00000": "90ff15c65b0e4ac6c224eb5ffe2891684a9cbdd2ebf50f5f3a07cedaf7d813c4",
        "leaf_00001": "e80939fbd1653e5ea6bdda7b13bd07b1beb107d6b45dad17ed67bfbac1473003",
        "leaf_00002": "fb37bedbead866a73f965668bc46ab9f9a3d7f00f296f0109c1a03f43ce98869",
        "leaf_00003": "1a58d947d9c46434a9a7d204c1a8eae9171d2ff39f5583ef8e668cb8cc4202d9",
    },
    "metadata_sha256": "bbbc775c6a6a3231205ce029386d456e40320ce51b2a5d0278915006e7a3ce9c",
}


# The same step in the current format: the metadata adds where each array is stored (its tree
# path), the manifest names its hash. Checkpoints written now must keep restoring, so a save
# must still write exactly this.
_GOLDEN_META = {
    **V1_META,
    "format": "scirs2_optim_jax.checkpoint/2",
    "arrays": [["params", "w"], ["opt_state", 0], ["rng"], ["data_position", "epoch"]],
}
_GOLDEN_MANIFEST = {
    "format": "scirs2_optim_jax.checkpoint/2",
    "step": 5,
    "hash": "xxh3_128",
    "arrays": {
        "params/w": "449d52a26b88fa475ed3a0a1cd1dde33",
        "opt_state/0": "baceb5580f28d7b5bf163de4a02eba79",
        "rng": "6fde84c18993bd6cab72e1a4cf27a685",
        "data_position/epoch": "df2e53f3969625e1c1873f7593ccb275",
    },
    "metadata_hash": "7aeb6a3b6634e9d86d9c04d62e5434d5",
}


def test_on_disk_metadata_and_manifest_are_stable(tmp_path: Path) -> None:
    state = CheckpointState(
        {"w": np.arange(3, dtype=np.float32)}, (np.int32(2),), jax.random.key(0), {"epoch": 1}
    )
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(5, state, {"loss": 0.25}, {"lr": 0.1})
        restored = mgr.restore(5)
    assert json.loads((tmp_path / "5" / "meta" / "meta.json").read_text()) == _GOLDEN_META
    manifest = json.loads((tmp_path / "5" / "manifest" / "manifest.json").read_text())
    assert manifest == _GOLDEN_MANIFEST
    assert type(restored.state) is CheckpointState
    assert restored.state.data_position == {"epoch": 1}


def _write_first_format_step(directory: Path) -> None:
    """Step 5 exactly as the first format's save wrote it: the arrays under flat names with
    Orbax's StandardCheckpointHandler, the metadata and the sha256 manifest as JSON items."""
    arrays = {
        "leaf_00000": np.arange(3, dtype=np.float32),
        "leaf_00001": np.asarray(np.int32(2)),
        "leaf_00002": np.asarray(jax.random.key_data(jax.random.key(0))),
        "leaf_00003": np.asarray(1, dtype=np.int64),
    }
    mgr = ocp.CheckpointManager(
        directory,
        item_names=("state", "meta", "manifest"),
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(filename="meta.json"),
            "manifest": ocp.JsonCheckpointHandler(filename="manifest.json"),
        },
    )
    mgr.save(
        5,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(arrays),
            meta=ocp.args.JsonSave(V1_META),
            manifest=ocp.args.JsonSave(V1_MANIFEST),
        ),
    )
    mgr.close()


def test_first_format_steps_still_restore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_first_format_step(tmp_path)
    stored = ocp.StandardCheckpointer().restore(tmp_path / "5" / "state")
    assert sorted(stored) == ["leaf_00000", "leaf_00001", "leaf_00002", "leaf_00003"]
    with CheckpointManager(tmp_path, keep_last=2) as mgr:
        mgr.verify(5)
        old = mgr.restore(5)
        assert type(old.state) is CheckpointState and old.metrics == {"loss": 0.25}
        np.testing.assert_array_equal(old.state.params["w"], np.arange(3, dtype=np.float32))
        assert old.state.opt_state == (np.int32(2),) and old.state.data_position == {"epoch": 1}
        assert jax.random.key_data(old.state.rng).tolist() == [0, 0]
        # A run resumed from it goes on in the current format, beside the old step.
        mgr.save(6, old.state, {"loss": 0.2}, {"lr": 0.1})
        assert mgr.restore().step == 6 and mgr.all_steps() == [5, 6]
    assert json.loads((tmp_path / "6" / "manifest" / "manifest.json").read_text())["hash"] == (
        "xxh3_128"
    )
    assert _cli(["ckpt", "verify", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == ["step 5: ok", "step 6: ok"]
    _edit_metadata(tmp_path / "5")
    with (
        CheckpointManager(tmp_path) as mgr,
        pytest.raises(
            CheckpointCorruptError, match="its sha256 checksum does not match the manifest"
        ),
    ):
        mgr.restore(5)


def test_restore_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a checkpoint must never be unpickled")

    _save_steps(tmp_path, (1,))
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(np, "load", refuse)
    with CheckpointManager(tmp_path) as mgr:
        assert mgr.restore().step == 1


def test_symlinked_step_outside_the_directory_is_refused(tmp_path: Path) -> None:
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    _save_steps(run, (1,))
    _save_steps(elsewhere, (5,))
    (run / "5").symlink_to(elsewhere / "5")
    with CheckpointManager(run) as mgr:
        with pytest.raises(ValueError, match=r"step 5 resolves outside .*run.*refusing it"):
            mgr.restore(5)
        assert mgr.restore().step == 1  # the newest step that is really inside, verified


def test_symlinked_file_inside_a_step_is_refused(tmp_path: Path) -> None:
    _save_steps(tmp_path, (1, 2))
    meta = tmp_path / "2" / "meta" / "meta.json"
    meta.unlink()
    meta.symlink_to(tmp_path / "1" / "meta" / "meta.json")
    mgr = CheckpointManager(tmp_path)
    with mgr, pytest.raises(CheckpointCorruptError, match="a symbolic link"):
        mgr.restore(2)


def test_bad_committed_step_is_moved_aside_not_overwritten(tmp_path: Path) -> None:
    _save_steps(tmp_path, (1, 2))
    bad_file = _edit_metadata(tmp_path / "2")
    edited = bad_file.read_bytes()
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        assert mgr.restore().step == 1
        mgr.save(2, {"w": np.zeros(3)}, force=True)
        assert mgr.restore().step == 2
    quarantined = list((tmp_path / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].name.startswith("2-")
    assert (quarantined[0] / "meta" / "meta.json").read_bytes() == edited


# -- the `ckpt` command ----------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scirs2-optim")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_ls_lists_steps_sizes_metrics_and_verification(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _save_steps(tmp_path)
    _flip_data(tmp_path / "2")
    assert _cli(["ckpt", "ls", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    rows = {int(line.split()[0]): line.split() for line in out.splitlines()[1:]}
    assert sorted(rows) == [1, 2, 3]
    for step, (_, size, status, metric) in rows.items():
        expected = sum(f.stat().st_size for f in (tmp_path / str(step)).rglob("*") if f.is_file())
        assert int(size) == expected
        assert status == ("BAD" if step == 2 else "ok")
        assert metric == f"loss={1.0 / step:.6g}"
    assert "step 2: checkpoint step 2 is corrupt" in err


def test_cli_verify_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _save_steps(tmp_path)
    assert _cli(["ckpt", "verify", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == ["step 1: ok", "step 2: ok", "step 3: ok"]
    _truncate_data(tmp_path / "3")
    assert _cli(["ckpt", "verify", str(tmp_path), "--step", "2"]) == 0
    assert _cli(["ckpt", "verify", str(tmp_path), "--step", "3"]) == 1
    assert _cli(["ckpt", "verify", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "step 3: BAD: checkpoint step 3 is corrupt" in err
    assert _cli(["ckpt", "verify", str(tmp_path), "--step", "9"]) == 1
    assert "no committed checkpoint for step 9" in capsys.readouterr().err


def test_cli_bad_usage_is_one_message_and_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(["ckpt", "ls", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no checkpoint directory at" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:
        _cli(["ckpt", "verify", str(tmp_path), "--step", "-1"])
    assert info.value.code == 2
    assert "must be an integer >= 0, got -1" in capsys.readouterr().err


def test_cli_reads_without_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _save_steps(tmp_path, (1,))
    (tmp_path / "7.orbax-checkpoint-tmp").mkdir()  # a save cut short: ls must leave it be
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    assert _cli(["ckpt", "ls", str(tmp_path)]) == 0
    assert _cli(["ckpt", "verify", str(tmp_path)]) == 0
    after = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    assert before == after
    assert _cli(["ckpt", "ls", str(tmp_path / "1" / "state")]) == 0
    assert "no checkpoints in" in capsys.readouterr().out
    assert os.listdir(tmp_path / "1" / "state")  # untouched


def test_cli_ls_and_verify_print_no_read_only_notice(tmp_path: Path) -> None:
    """Orbax's "Given directory is read only" warning is not shown on every call."""
    _save_steps(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    for action in ("ls", "verify"):
        done = subprocess.run(
            [sys.executable, "-m", "scirs2_optim_jax", "ckpt", action, str(tmp_path)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "read only" not in done.stderr, done.stderr
