"""The `plan` subcommand (scirs2_optim_jax.cli.plan), driven through an argparse parser."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import pytest

from scirs2_optim_jax.cli import plan
from scirs2_optim_jax.cli.plan import add_parser
from scirs2_optim_jax.config import (
    load_config,
    plan_for_config,
    plan_memory,
    production_default,
)
from scirs2_optim_jax.training.demo_models import DEMO_MODELS, demo_model


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scirs2-optim")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_plan_demo_model_prints_plan_compiled_check_and_batch(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SCIRS2_OPTIM_CONFIG", raising=False)
    argv = ["plan", "--json", "--available-memory", "600KiB", "--batch-size", "1024"]
    code = _main([*argv, "--check-compiled"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    model = demo_model("digits_mlp")
    expected = plan_memory(model.params, "adamw")
    assert report["plan"]["total_bytes"] == pytest.approx(expected.total_bytes, rel=0.01)
    compiled = report["compiled_step"]
    persistent = report["plan"]["param_bytes"] + report["plan"]["optimizer_state_bytes"]
    assert compiled["argument_bytes"] - compiled["batch_bytes"] == pytest.approx(
        persistent, rel=0.01
    )
    batch = report["batch"]
    assert batch["fits"] and batch["accumulation_steps"] > 1
    assert batch["micro_batch_size"] * batch["accumulation_steps"] == 1024
    assert report["memory_settings"]["backend_initialized"] is True


def test_plan_compiles_the_whole_step_only_when_asked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SCIRS2_OPTIM_CONFIG", raising=False)
    assert _main(["plan", "--json", "--available-memory", "600KiB"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "compiled_step" not in report and "batch" in report


def test_plan_text_for_a_parameter_count_with_zero(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SCIRS2_OPTIM_CONFIG", raising=False)
    argv = ["plan", "--num-params", "7e9", "--precision", "bf16", "--zero-stage", "1"]
    argv += ["--devices", "8", "--available-memory", "80GiB"]
    assert _main(argv) == 0
    out = capsys.readouterr().out
    config = production_default()
    config = dataclasses.replace(
        config,
        precision=dataclasses.replace(config.precision, mode="bf16"),
        parallel=dataclasses.replace(config.parallel, zero_stage=1, num_devices=8),
    )
    plan = plan_for_config(config, 7_000_000_000)
    # The step's clipping, AdamW and schedule counters are the only difference to a bare
    # AdamW plan.
    bare = plan_memory(7_000_000_000, "adamw", precision="bf16", zero_stage=1, num_devices=8)
    assert 0 < plan.total_bytes - bare.total_bytes < 64
    assert f"({plan.master_weights_bytes:,} B)" in out
    assert f"({plan.total_bytes:,} B)" in out
    assert "state fits in 90% of the available memory" in out


def test_plan_reads_a_config_file_and_hides_its_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        '[optimizer]\nname = "lion"\nlearning_rate = 1e-4\n'
        '[monitoring]\npushgateway_token = "hunter2-token"\n'
    )
    assert _main(["plan", "--config", str(path), "--num-params", "1000", "--json"]) == 0
    out = capsys.readouterr().out
    assert "hunter2-token" not in out
    report = json.loads(out)
    assert report["config"]["optimizer"]["name"] == "lion"
    config = load_config(path, environ={})
    assert report["plan"] == plan_for_config(config, 1000).to_dict()
    # Lion keeps one moment: the plan is a bare Lion plus the step's small counters.
    bare = plan_memory(1000, "lion").optimizer_state_bytes
    assert 0 <= report["plan"]["optimizer_state_bytes"] - bare < 64


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["plan", "--config", "missing.toml"], {}, "no such file: missing.toml"),
        (
            ["plan"],
            {"SCIRS2_OPTIM_OPTIMIZER__LEARNING_RATE": "-1"},
            "optimizer.learning_rate must be a finite number > 0",
        ),
        (["plan", "--available-memory", "lots"], {}, "--available-memory: expected a byte count"),
        (
            ["plan"],
            {"SCIRS2_OPTIM_OPTIMIZER__NAME": "sgd"},
            "optimizer.weight_decay = 0.01 does not apply to 'sgd'",
        ),
    ],
)
def test_plan_bad_config_exits_2_with_one_message(
    argv: list[str],
    env: dict,
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SCIRS2_OPTIM_CONFIG", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("scirs2-optim plan: error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_plan_usage_errors_and_model_names() -> None:
    assert plan.DEMO_MODELS == DEMO_MODELS
    with pytest.raises(SystemExit) as info:
        _main(["plan", "--model", "resnet"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        _main(["plan", "--model", "digits_mlp", "--num-params", "10"])  # mutually exclusive


def test_transformer_demo_model_is_54m_parameters_by_shape_only() -> None:
    model = demo_model("transformer")
    leaves = jax.tree.leaves(model.params)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert sum(x.size for x in leaves) == 54_475_776
    plan = plan_memory(model.params, "adamw", precision="bf16")
    assert plan.master_weights_bytes == 4 * 54_475_776
