"""`scirs2-optim plan --offload`: device and host memory per device, as plan_memory says."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from scirs2_optim_jax.cli.plan import add_parser
from scirs2_optim_jax.config import plan_for_config, plan_memory, production_default
from scirs2_optim_jax.config.planner import OFFLOAD
from scirs2_optim_jax.config.registry import OFFLOAD_COMPUTE
from scirs2_optim_jax.engine.offload import COMPUTE
from scirs2_optim_jax.training.demo_models import demo_model
from tests.helpers import count_compilations


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scirs2-optim")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCIRS2_OPTIM_CONFIG", raising=False)


SEVEN_B = ["--num-params", "7e9", "--precision", "bf16", "--devices", "8"]


def _config(zero_stage: int, offload: str | None) -> object:
    config = production_default()
    return dataclasses.replace(
        config,
        precision=dataclasses.replace(config.precision, mode="bf16"),
        parallel=dataclasses.replace(
            config.parallel, zero_stage=zero_stage, num_devices=8, offload_optimizer=offload
        ),
    )


def test_choices_are_the_engines() -> None:
    # The command line and the config list them without importing JAX: the same values.
    assert OFFLOAD_COMPUTE == OFFLOAD == COMPUTE


@pytest.mark.parametrize("where", ["device", "host"])
def test_plan_offload_prints_device_and_host_memory_per_device(
    where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["plan", *SEVEN_B, "--zero-stage", "2", "--offload", where]
    with count_compilations() as compiles:  # a parameter count plans without compiling
        assert _main([*argv, "--available-memory", "40GiB"]) == 0
    assert compiles == []
    out = capsys.readouterr().out
    plan = plan_for_config(_config(2, where), 7_000_000_000)
    assert plan.offload == where
    bare = plan_memory(
        7_000_000_000, "adamw", precision="bf16", zero_stage=2, num_devices=8, offload=where
    )
    # Params and grads are the bare plan's; the state adds the clip's and schedule's counters.
    assert plan.device_bytes == bare.device_bytes == 14_000_000_000 + 1_750_000_000
    assert 0 <= plan.host_bytes - bare.host_bytes < 64
    for figure in (plan.device_bytes, plan.host_bytes, plan.streamed_bytes):
        assert f"({figure:,} B)" in out
    assert "device memory" in out and "host memory" in out
    assert f"optimizer state offloaded (compute={where})" in out
    assert "host memory for the state of all 8 device(s): " in out
    assert ("streams through device memory" in out) == (where == "device")
    assert "fits in 90% of the available memory" in out

    assert _main([*argv, "--available-memory", "40GiB", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["plan"] == plan.to_dict()
    assert report["plan"]["device_bytes"] == plan.device_bytes
    assert report["plan"]["host_bytes"] == plan.host_bytes
    assert report["host_bytes_all_devices"] == 8 * plan.host_bytes


def test_plan_offload_reads_the_config_and_the_option_overrides_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCIRS2_OPTIM_PARALLEL__OFFLOAD_OPTIMIZER", "device")
    assert _main(["plan", *SEVEN_B, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["offload"] == "device"
    assert _main(["plan", *SEVEN_B, "--json", "--offload", "host"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["offload"] == "host"


def test_plan_offload_check_compiled_matches_the_plan(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["plan", "--json", "--available-memory", "600KiB", "--batch-size", "64"]
    assert _main([*argv, "--offload", "device", "--check-compiled"]) == 0
    report = json.loads(capsys.readouterr().out)
    model = demo_model("digits_mlp")
    plan = report["plan"]
    assert plan["offload"] == "device"
    assert plan["device_bytes"] == plan_memory(model.params, "adamw", offload="device").device_bytes
    compiled = report["compiled_step"]
    # One device: the compiled step's device arguments are the params and the batch, its
    # host arguments the state, each exactly as planned.
    assert compiled["argument_bytes"] - compiled["batch_bytes"] == plan["param_bytes"]
    assert compiled["host_argument_bytes"] == plan["host_bytes"]
    assert report["batch"]["fits"]


def test_plan_offload_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _main(["plan", "--offload", "cpu"])
    assert info.value.code == 2
    assert "invalid choice: 'cpu'" in capsys.readouterr().err


def test_plan_offload_host_of_another_optimizer(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--num-params", "1000", "--optimizer", "lion", "--offload", "host"]
    assert _main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["plan"]["offload"] == "host" and report["plan"]["device_bytes"] == 8000
    # Lion's update reads the params: they go down with the gradients, and come back.
    assert report["plan"]["streamed_bytes"] == 3 * 4000
