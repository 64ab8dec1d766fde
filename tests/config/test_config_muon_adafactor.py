"""muon and adafactor from the registry, the builder, the planner, select_optimizer and the
command line."""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import pytest

import scirs2_optim_jax as so
from scirs2_optim_jax import cli
from scirs2_optim_jax.cli.plan import add_parser
from scirs2_optim_jax.config import (
    OptimizerConfig,
    RunConfig,
    build_optimizer,
    make_optimizer,
    optimizer_arguments,
    plan_for_config,
    plan_memory,
    production_default,
    registry,
    select_optimizer,
)

GiB = 2**30


@pytest.mark.parametrize("name", ["muon", "adafactor"])
def test_registry_names_them_and_the_builder_makes_them(name: str) -> None:
    assert name in registry.OPTIMIZERS and name in cli.TRAIN_OPTIMIZERS
    tx, schedule = make_optimizer(name, 1e-2, steps=100, max_global_norm=1.0)
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert float(schedule(50)) > 0


def test_config_fields_map_to_their_arguments() -> None:
    muon = OptimizerConfig(name="muon", momentum=0.9, b1=0.8, weight_decay=0.1, mu_dtype="bfloat16")
    assert optimizer_arguments(muon) == {
        "beta": 0.9,
        "adam_b1": 0.8,
        "weight_decay": 0.1,
        "mu_dtype": "bfloat16",
    }
    ada = OptimizerConfig(name="adafactor", momentum=0.9, weight_decay=0.01, mu_dtype="bfloat16")
    assert optimizer_arguments(ada) == {
        "momentum": 0.9,
        "weight_decay_rate": 0.01,
        "dtype_momentum": "bfloat16",
    }
    with pytest.raises(ValueError, match=r"optimizer\.nu_dtype = 'bfloat16' does not apply"):
        optimizer_arguments(OptimizerConfig(name="adafactor", nu_dtype="bfloat16"))
    config = RunConfig(optimizer=muon)
    params = {"w": jnp.ones((4, 3))}
    state = build_optimizer(config).init(params)
    assert "bfloat16" in {x.dtype.name for x in jax.tree.leaves(state)}


def test_plan_memory_by_name_is_the_state() -> None:
    params = {
        "w": jax.ShapeDtypeStruct((256, 512), jnp.float32),
        "b": jax.ShapeDtypeStruct((512,), jnp.float32),
    }
    for name in ("muon", "adafactor"):
        state = jax.eval_shape(getattr(so, name)(1e-3).init, params)
        actual = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
        assert plan_memory(params, name).optimizer_state_bytes == actual, name
    # Adafactor: 256 + 512 row/column floats for w, a full second moment for b, a count.
    assert plan_memory(params, "adafactor").optimizer_state_bytes == 4 * (256 + 512 + 512 + 1)
    # ZeRO shards b's moment but keeps the factored statistics whole (and the count).
    zero = plan_memory(params, "adafactor", zero_stage=1, num_devices=8)
    assert zero.optimizer_state_bytes == 4 * (256 + 512 + 512 // 8 + 1)


def test_select_optimizer_falls_back_to_adafactor_when_adamw_cannot_fit() -> None:
    fits = select_optimizer(7_000_000_000, 2048, 30 * GiB, "tpu", num_devices=8)
    assert fits.rule == "large_accelerator" and fits.zero_stage == 2
    tight = select_optimizer(7_000_000_000, 2048, 22 * GiB, "tpu", num_devices=8)
    assert tight.rule == "large_accelerator_factored" and tight.fits
    assert tight.optimizer == OptimizerConfig(name="adafactor", learning_rate=1e-2)
    assert tight.zero_stage == 2 and tight.plan.total_bytes <= 22 * GiB
    assert "Adafactor" in tight.reason
    build_optimizer(tight.apply(production_default(), batch_size=2048))
    # Neither fits 18 GiB; AdamW with its state offloaded to the host does (bf16 params,
    # a ZeRO-2 slice of the gradients).
    offloaded = select_optimizer(7_000_000_000, 2048, 18 * GiB, "tpu", num_devices=8)
    assert offloaded.rule == "large_accelerator_offload" and offloaded.offload == "host"
    assert offloaded.optimizer.name == "adamw" and offloaded.fits
    hopeless = select_optimizer(7_000_000_000, 2048, 12 * GiB, "tpu", num_devices=8)
    assert hopeless.rule == "large_accelerator" and not hopeless.fits


def _plan(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scirs2-optim")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_plan_command_counts_their_state(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SCIRS2_OPTIM_CONFIG", raising=False)
    for name in ("muon", "adafactor"):
        argv = ["plan", "--json", "--optimizer", name, "--num-params", "1000"]
        argv += ["--zero-stage", "1", "--devices", "8"]
        assert _plan(argv) == 0
        report = json.loads(capsys.readouterr().out)
        config = production_default()
        config = dataclasses.replace(
            config,
            optimizer=OptimizerConfig(name=name, learning_rate=config.optimizer.learning_rate),
            parallel=dataclasses.replace(config.parallel, zero_stage=1, num_devices=8),
        )
        expected = plan_for_config(config, 1000)
        assert report["plan"]["optimizer_state_bytes"] == expected.optimizer_state_bytes


@pytest.mark.parametrize("name", ["muon", "adafactor"])
def test_train_command_runs_them(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--optimizer", name, "--steps", "20", "--batch-size", "32"]
    code = cli.main([*argv, "--log-every", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert name in out
