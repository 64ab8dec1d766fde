"""``scirs2-optim train --offload-optimizer {device,host}``: the optimizer state in host
memory trains the same model, checkpoints resume across the flag, bad values are usage
errors.

Measured on the 8 fake CPU devices: ``device`` gives bit-identical parameters (the same
program, the state streamed in and out); ``host`` runs the same step on the host's CPU from
gradients computed by a separate device program, about 4e-7 apart after 20 steps.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scirs2_optim_jax as so
from scirs2_optim_jax import cli, engine
from scirs2_optim_jax.checkpoint import CheckpointManager
from scirs2_optim_jax.cli.train_options import TRAIN_OFFLOAD
from scirs2_optim_jax.cli.train_settings import train_settings
from scirs2_optim_jax.parallel import make_data_mesh
from scirs2_optim_jax.training import train_digits
from scirs2_optim_jax.training.checkpointing import RunCheckpoints
from scirs2_optim_jax.training.spec import OFFLOAD_OPTIMIZER, TrainSpec

SMALL = ["--batch-size", "32", "--log-every", "0"]
FAST = {"steps": 20, "batch_size": 32, "log_every": 0}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def sha(out: str) -> str:
    last = out.splitlines()[-1]
    assert last.startswith("params_sha256: "), out
    return last.split()[-1]


def row(out: str, label: str) -> str:
    for line in out.splitlines():
        if line.strip().startswith(label + " "):
            return line.strip()[len(label) :].strip()
    raise AssertionError(f"no row {label!r} in:\n{out}")


def assert_params_close(actual: Any, expected: Any, rtol: float) -> None:
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=1e-6)


def test_choices_agree() -> None:
    assert TRAIN_OFFLOAD == OFFLOAD_OPTIMIZER


@pytest.mark.parametrize("compute", ["device", "host"])
def test_cli_offload_trains_the_same_model(
    compute: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = ["train", "--steps", "20", *SMALL]
    code, out, err = run_cli(run, capsys)
    assert code == 0, err
    plain = sha(out)
    with pytest.raises(AssertionError):
        row(out, "offload")

    code, out, err = run_cli([*run, "--offload-optimizer", compute], capsys)
    assert code == 0, err
    assert out.splitlines()[0].endswith(f"optimizer state offloaded (update on the {compute})")
    assert row(out, "offload").startswith(f"{compute}: state in host memory")
    if compute == "device":
        # The same program with the state streamed in and out: bit for bit.
        assert sha(out) == plain
    expected = train_digits(**FAST)
    offloaded = train_digits(**FAST, offload_optimizer=compute)
    assert offloaded.offload_optimizer == compute
    assert_params_close(offloaded.params, expected.params, rtol=1e-5)
    assert offloaded.final_loss == pytest.approx(expected.final_loss, rel=1e-5)
    assert offloaded.test_accuracy == expected.test_accuracy
    assert offloaded.params_sha256 == sha(out)


@pytest.mark.parametrize("compute", ["device", "host"])
def test_offload_under_zero(compute: str) -> None:
    kwargs = {**FAST, "devices": 4, "zero_stage": 2}
    expected = train_digits(**kwargs)
    offloaded = train_digits(**kwargs, offload_optimizer=compute)
    assert_params_close(offloaded.params, expected.params, rtol=1e-5)
    if compute == "device":
        assert offloaded.params_sha256 == expected.params_sha256


def test_resume_across_the_flag_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stopped offloaded, resumed without it (and the reverse): the uninterrupted run's
    parameters, bit for bit (compute="device" is)."""
    run = ["train", "--steps", "30", *SMALL, "--save-every", "10"]
    code, out, err = run_cli(run, capsys)
    assert code == 0, err
    uninterrupted = sha(out)

    for first, second, name in (
        (["--offload-optimizer", "device"], [], "a"),
        ([], ["--offload-optimizer", "device"], "b"),
    ):
        directory = str(tmp_path / name)
        code, out, err = run_cli(
            [*run, *first, "--checkpoint-dir", directory, "--stop-at", "20"], capsys
        )
        assert code == 0, err
        with CheckpointManager(directory, read_only=True) as manager:
            config = manager.restore().config
        assert config["offload_optimizer"] == ("device" if first else None)
        code, out, err = run_cli([*run, *second, "--checkpoint-dir", directory, "--resume"], capsys)
        assert code == 0, err
        assert f"resumed from checkpoint step 20 in {directory}" in out
        assert sha(out) == uninterrupted


@pytest.mark.parametrize(
    ("first", "second", "devices", "zero_stage"),
    [
        ("host", None, 1, 0),
        (None, "host", 1, 0),
        ("host", "device", 4, 2),
        ("device", "host", 4, 1),
    ],
)
def test_resume_across_offload_settings(
    first: str | None, second: str | None, devices: int, zero_stage: int, tmp_path: Path
) -> None:
    kwargs = {**FAST, "devices": devices, "zero_stage": zero_stage}
    expected = train_digits(**kwargs)
    directory = str(tmp_path / "ckpt")
    stopped = train_digits(
        **kwargs, offload_optimizer=first, checkpoint_dir=directory, stop_at=10, save_every=5
    )
    assert stopped.step == 10 and stopped.checkpoint_step == 10
    resumed = train_digits(
        **kwargs, offload_optimizer=second, checkpoint_dir=directory, resume=True, save_every=5
    )
    assert (resumed.start_step, resumed.step) == (10, 20)
    assert_params_close(resumed.params, expected.params, rtol=1e-5)
    assert resumed.final_loss == pytest.approx(expected.final_loss, rel=1e-5)


def test_restored_state_is_where_the_optimizer_keeps_it(tmp_path: Path) -> None:
    """The run's checkpoints restore the optimizer state into host memory for an offloaded
    run, device memory otherwise (RunCheckpoints, the piece train_digits resumes with)."""
    spec = TrainSpec.create(steps=4)
    plain, _ = spec.make_optimizer()
    params = {"w": jnp.arange(3.0)}

    def open_run(tx: Any, resume: bool) -> RunCheckpoints:
        return RunCheckpoints(
            tmp_path,
            spec=spec,
            mesh=make_data_mesh(1),
            zero_stage=0,
            params_like=params,
            tx=tx,
            save_every=1,
            async_save=False,
            resume=resume,
        )

    run = open_run(so.offload(plain, compute="host"), False)
    run.save(1, params, so.offload(plain, compute="host").init(params), None)
    run.close()
    for tx in (plain, so.offload(plain), so.offload(plain, compute="host")):
        run = open_run(tx, True)
        restored = run.restore()
        run.close()
        assert restored is not None
        _, _, opt_state = restored
        described = engine.offload_of(tx)
        for leaf in jax.tree.leaves(opt_state):
            if described is None:
                assert leaf.sharding.memory_kind == "device"
            elif described.compute == "device":
                assert leaf.sharding.memory_kind == "pinned_host"
            else:
                assert leaf.sharding.device_set == {engine.host_device()}


def test_bad_value_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--steps", "5", "--offload-optimizer", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert "--offload-optimizer: invalid choice: 'cpu'" in err
    assert "'device'" in err and "'host'" in err
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--offload-optimizer {device,host}" in out


def _args(**given: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scirs2-optim")
    cli.train_options.add_parser(parser.add_subparsers(dest="command"), handler=print)
    argv = ["train"]
    for name, value in given.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return parser.parse_args(argv)


def test_settings_from_options_and_config(tmp_path: Path) -> None:
    assert train_settings(_args(), {})["train"]["offload_optimizer"] is None
    settings = train_settings(_args(offload_optimizer="host"), {})
    assert settings["train"]["offload_optimizer"] == "host"
    config = tmp_path / "run.toml"
    config.write_text('[parallel]\noffload_optimizer = "device"\n')
    settings = train_settings(_args(config=config), {})
    assert settings["train"]["offload_optimizer"] == "device"
    settings = train_settings(_args(config=config, offload_optimizer="host"), {})
    assert settings["train"]["offload_optimizer"] == "host"
    with pytest.raises(ValueError, match=r"--offload-optimizer host .* one process.*2"):
        train_settings(_args(offload_optimizer="host", devices=2), {}, processes=2)
    assert (
        train_settings(_args(offload_optimizer="device", devices=2), {}, 2)["train"][
            "offload_optimizer"
        ]
        == "device"
    )
    with pytest.raises(ValueError, match=r"offload_optimizer must be one of device, host"):
        train_digits(steps=2, offload_optimizer="cpu")
