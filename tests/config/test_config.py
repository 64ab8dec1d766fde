"""Typed config: files, environment, validation, secrets, optimizer building, flags, selection."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml

from scirs2_optim_jax import optimizers
from scirs2_optim_jax.config import (
    OPTIMIZER_NAMES,
    REDACTED,
    ClippingConfig,
    FeatureFlags,
    MonitoringConfig,
    OptimizerConfig,
    PrecisionConfig,
    RunConfig,
    ScheduleConfig,
    build_loss_scale,
    build_optimizer,
    build_schedule,
    checkpoint_record,
    config_from_record,
    load_config,
    production_default,
    resolve_optimizer,
    select_optimizer,
)
from scirs2_optim_jax.precision import MasterWeightsState
from scirs2_optim_jax.schedules import warmup_cosine
from scirs2_optim_jax.transforms import ScaleByAdamState, ScaleByLionState, clip_by_global_norm

FILE_DATA = {
    "name": "bert",
    "seed": 3,
    "optimizer": {"name": "lamb", "learning_rate": 2e-3, "weight_decay": 0.01},
    "schedule": {"total_steps": 5000, "warmup_ratio": 0.1},
    "precision": {"mode": "bf16"},
    "parallel": {"zero_stage": 1, "num_devices": 8},
    "resources": {"device_memory_bytes": "16GiB"},
    "monitoring": {"pushgateway_token": "tok-123-secret"},
}


def _write(tmp_path: Path, suffix: str, data: dict) -> Path:
    path = tmp_path / f"run{suffix}"
    if suffix == ".toml":
        lines = []
        top = {k: v for k, v in data.items() if not isinstance(v, dict)}
        lines += [f"{k} = {json.dumps(v)}" for k, v in top.items()]
        for section, values in data.items():
            if isinstance(values, dict):
                lines.append(f"[{section}]")
                lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        path.write_text("\n".join(lines) + "\n")
    elif suffix == ".yaml":
        path.write_text(yaml.safe_dump(data))
    else:
        path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_load_config_from_each_file_format(tmp_path: Path, suffix: str) -> None:
    config = load_config(_write(tmp_path, suffix, FILE_DATA), environ={})
    assert config.name == "bert" and config.seed == 3
    assert config.optimizer == OptimizerConfig(name="lamb", learning_rate=2e-3, weight_decay=0.01)
    assert config.schedule.total_steps == 5000 and config.schedule.warmup_ratio == 0.1
    assert config.precision.mode == "bf16"
    assert (config.parallel.zero_stage, config.parallel.num_devices) == (1, 8)
    assert config.resources.device_memory_bytes == 16 * 2**30
    assert config.monitoring.pushgateway_token == "tok-123-secret"
    # Unspecified fields keep the production defaults.
    assert config.checkpoint == production_default().checkpoint


def test_yaml_exponent_written_without_a_dot_is_read_as_a_number(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("optimizer:\n  learning_rate: 1e-4\n")  # PyYAML reads this as a string
    assert load_config(path, environ={}).optimizer.learning_rate == 1e-4


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {
        "SCIRS2_OPTIM_OPTIMIZER__LEARNING_RATE": "5e-4",
        "SCIRS2_OPTIM_PARALLEL__ZERO_STAGE": "2",
        "SCIRS2_OPTIM_PRECISION__MASTER_WEIGHTS": "false",
        "SCIRS2_OPTIM_CLIPPING__MAX_GLOBAL_NORM": "none",
        "SCIRS2_OPTIM_BATCH_SIZE": "1024",
        "SCIRS2_OPTIM_RUN_ID": "left alone: no double underscore, not a field",
    }
    config = load_config(_write(tmp_path, ".toml", FILE_DATA), environ=env)
    assert config.optimizer.learning_rate == 5e-4
    assert config.optimizer.name == "lamb"  # from the file
    assert config.parallel.zero_stage == 2 and config.parallel.num_devices == 8
    assert config.precision.master_weights is False
    assert config.clipping.max_global_norm is None
    assert config.batch_size == 1024


def test_config_file_can_be_named_by_the_environment(tmp_path: Path) -> None:
    path = _write(tmp_path, ".json", FILE_DATA)
    assert load_config(environ={"SCIRS2_OPTIM_CONFIG": str(path)}).name == "bert"


@pytest.mark.parametrize(
    ("env", "error", "message"),
    [
        (
            {"SCIRS2_OPTIM_OPTIMIZER__LEARNING_RATE": "-1"},
            ValueError,
            "config: optimizer.learning_rate must be a finite number > 0, got '-1' "
            "(from environment variable SCIRS2_OPTIM_OPTIMIZER__LEARNING_RATE)",
        ),
        (
            {"SCIRS2_OPTIM_OPTIMIZER__NAME": "adamx"},
            ValueError,
            "config: optimizer.name must be one of 'adamw', 'adam'",
        ),
        (
            {"SCIRS2_OPTIM_PARALLEL__ZERO_STAGE": "3"},
            ValueError,
            "config: parallel.zero_stage must be one of 0, 1, 2, got '3'",
        ),
        (
            {"SCIRS2_OPTIM_CHECKPOINT__ASYNC_SAVE": "maybe"},
            ValueError,
            "config: checkpoint.async_save must be a bool (true/false), got 'maybe'",
        ),
        (
            {"SCIRS2_OPTIM_OPTIMISER__NAME": "adam"},
            ValueError,
            "environment variable SCIRS2_OPTIM_OPTIMISER__NAME names no config section 'optimiser'",
        ),
        (
            {"SCIRS2_OPTIM_OPTIMIZER__LR": "0.1"},
            ValueError,
            "config: unknown field optimizer.lr (known: b1, b2, eps, learning_rate",
        ),
        (
            {"SCIRS2_OPTIM_SEED": "1.5"},
            ValueError,
            "config: seed must be an integer, got '1.5'",
        ),
        (
            {"SCIRS2_OPTIM_RESOURCES__DEVICE_MEMORY_BYTES": "lots"},
            ValueError,
            "config: resources.device_memory_bytes must be a byte count",
        ),
    ],
)
def test_bad_environment_values_name_the_field_value_and_variable(
    env: dict, error: type, message: str
) -> None:
    with pytest.raises(error) as info:
        load_config(environ=env)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        ({"optimizer": {"learning_rate": "fast"}}, ValueError, "optimizer.learning_rate"),
        ({"optimizer": {"b1": True}}, TypeError, "optimizer.b1 must be a number or none, got True"),
        (
            {"schedule": {"warmup_ratio": 1.0}},
            ValueError,
            "schedule.warmup_ratio must be a number in [0.0, 1.0), got 1.0",
        ),
        ({"monitoring": {"metrics_port": 70000}}, ValueError, "monitoring.metrics_port"),
        ({"optimizer": {"name": "sgd", "lr": 1}}, ValueError, "unknown field optimizer.lr"),
        ({"precision": "bf16"}, TypeError, "config: precision must be a table/mapping, got str"),
    ],
)
def test_bad_file_values_name_the_field_value_and_file(
    tmp_path: Path, data: dict, error: type, message: str
) -> None:
    path = _write(tmp_path, ".json", data)
    with pytest.raises(error) as info:
        load_config(path, environ={})
    assert message in str(info.value)
    assert f"(in {path})" in str(info.value)


def test_unreadable_files_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_config(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "run.toml"
    bad.write_text("optimizer = [")
    with pytest.raises(ValueError, match=r"cannot parse .*run\.toml as TOML"):
        load_config(bad, environ={})
    with pytest.raises(
        ValueError, match=re.escape("must end in .json, .toml, .yaml, .yml, got '.ini'")
    ):
        load_config(tmp_path / "run.ini", environ={})


def test_secrets_never_appear_in_output_logs_or_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = "tok-123-secret"
    config = load_config(_write(tmp_path, ".yaml", FILE_DATA), environ={})
    assert config.monitoring.pushgateway_token == token  # usable by the code that needs it
    views = [
        repr(config),
        str(config),
        repr(config.monitoring),
        json.dumps(config.redacted()),
        yaml.safe_dump(config.redacted()),
        json.dumps(checkpoint_record(config)),
    ]
    with caplog.at_level(logging.INFO):
        logging.getLogger("scirs2.test").info("config: %s", config)
        logging.getLogger("scirs2.test").info("config: %s", config.redacted())
    views.append(caplog.text)
    for view in views:
        assert token not in view
    assert config.redacted()["monitoring"]["pushgateway_token"] == REDACTED
    assert checkpoint_record(config)["secrets_omitted"] == ["monitoring.pushgateway_token"]
    with pytest.raises(TypeError) as info:
        MonitoringConfig(pushgateway_token=12345)  # type: ignore[arg-type]
    assert "12345" not in str(info.value) and REDACTED in str(info.value)


def test_production_defaults() -> None:
    config = production_default()
    assert config.optimizer == OptimizerConfig(name="adamw", learning_rate=3e-4, weight_decay=0.01)
    assert config.schedule == ScheduleConfig(
        name="warmup_cosine", total_steps=100_000, warmup_ratio=0.06, min_lr_ratio=0.01
    )
    assert config.clipping.max_global_norm == 1.0
    assert config.monitoring.enabled and config.monitoring.metrics_port == 9100
    assert config.resources.max_device_memory_fraction == 0.9
    assert config.resources.max_host_memory_fraction == 0.9
    assert config.checkpoint.directory == "checkpoints"
    assert load_config(environ={}) == config


def _run(tx: optax.GradientTransformation, params: Any, steps: int = 4) -> Any:
    state = tx.init(params)
    for i in range(steps):
        grads = jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1)) * 3.0, params)
        updates, state = tx.update(grads, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    return params, state


def test_build_optimizer_equals_the_hand_built_chain(key: jax.Array) -> None:
    params = {"w": jax.random.normal(key, (5, 3)), "b": jnp.ones(3)}
    config = production_default()
    built, _ = _run(build_optimizer(config), params)
    schedule = warmup_cosine(3e-4, 100_000, 0.06, 0.01)
    by_hand = optax.chain(clip_by_global_norm(1.0), optimizers.adamw(schedule, weight_decay=0.01))
    expected, _ = _run(by_hand, params)
    for a, b in zip(jax.tree.leaves(built), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_build_optimizer_wraps_master_weights_for_bf16() -> None:
    config = dataclasses.replace(production_default(), precision=PrecisionConfig(mode="bf16"))
    tx = build_optimizer(config)
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    state = tx.init(params)
    assert isinstance(state, MasterWeightsState)
    assert state.master["w"].dtype == jnp.float32
    assert build_loss_scale(config) is not None
    assert build_loss_scale(production_default()) is None
    no_master = dataclasses.replace(
        config, precision=PrecisionConfig(mode="bf16", master_weights=False)
    )
    assert not isinstance(build_optimizer(no_master).init(params), MasterWeightsState)


def test_every_optimizer_name_builds_and_steps() -> None:
    assert set(OPTIMIZER_NAMES) == set(optimizers.__all__)
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    for name in OPTIMIZER_NAMES:
        config = RunConfig(
            optimizer=OptimizerConfig(name=name, learning_rate=1e-2),
            schedule=ScheduleConfig(name="constant"),
            clipping=ClippingConfig(max_global_norm=None),
        )
        new, _ = _run(build_optimizer(config), params, steps=2)
        assert not np.allclose(np.asarray(new["w"]), np.asarray(params["w"])), name


def test_hyperparameter_that_does_not_apply_is_an_error() -> None:
    config = dataclasses.replace(
        production_default(), optimizer=OptimizerConfig(name="sgd", weight_decay=0.01)
    )
    with pytest.raises(
        ValueError,
        match=r"optimizer\.weight_decay = 0\.01 does not apply to 'sgd' .*set it to none",
    ):
        build_optimizer(config)


def test_feature_flag_from_environment_chooses_the_variant_and_is_recorded() -> None:
    env = {
        "SCIRS2_OPTIM_FEATURES__OPTIMIZER_VARIANT": "lion",
        "SCIRS2_OPTIM_FEATURES__BF16_MOMENTUM": "1",
    }
    config = load_config(environ=env)
    assert config.optimizer.name == "adamw"  # the section is unchanged...
    effective = resolve_optimizer(config)
    assert (effective.name, effective.mu_dtype) == ("lion", "bfloat16")  # ...the run is not
    params = {"w": jnp.ones(3)}
    state = build_optimizer(config).init(params)
    lion_states = [
        s
        for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ScaleByLionState))
        if isinstance(s, ScaleByLionState)
    ]
    assert len(lion_states) == 1 and lion_states[0].mu["w"].dtype == jnp.bfloat16

    record = json.loads(json.dumps(checkpoint_record(config)))
    assert record["config"]["features"] == {"optimizer_variant": "lion", "bf16_momentum": True}
    assert record["resolved_optimizer"]["name"] == "lion"
    restored = config_from_record(record)
    assert restored == config
    a, _ = _run(build_optimizer(config), params)
    b, _ = _run(build_optimizer(restored), params)
    np.testing.assert_array_equal(np.asarray(a["w"]), np.asarray(b["w"]))
    # Without the flag the same config builds AdamW.
    plain = dataclasses.replace(config, features=FeatureFlags())
    adam_states = [
        s
        for s in jax.tree.leaves(
            build_optimizer(plain).init(params), is_leaf=lambda x: isinstance(x, ScaleByAdamState)
        )
        if isinstance(s, ScaleByAdamState)
    ]
    assert len(adam_states) == 1


def test_tampered_checkpoint_record_is_rejected() -> None:
    record = checkpoint_record(RunConfig(features=FeatureFlags(optimizer_variant="lion")))
    record["resolved_optimizer"]["name"] = "adamw"
    with pytest.raises(ValueError, match="differs from what its config resolves to"):
        config_from_record(record)
    with pytest.raises(ValueError, match="must be a checkpoint_record of version 1"):
        config_from_record({"config": {}})


GiB = 2**30


def test_select_optimizer_large_model_on_accelerator() -> None:
    choice = select_optimizer(7_000_000_000, 2048, 80 * GiB, "gpu", num_devices=8)
    assert choice.rule == "large_accelerator"
    assert choice.optimizer == OptimizerConfig(name="adamw", learning_rate=1e-4, weight_decay=0.01)
    assert choice.precision.mode == "bf16" and choice.precision.master_weights
    assert choice.zero_stage == 1 and not choice.gradient_checkpointing
    assert choice.plan.master_weights_bytes == 7_000_000_000 * 4 // 8
    assert choice.fits
    tight = select_optimizer(7_000_000_000, 2048, 30 * GiB, "tpu", num_devices=8)
    assert tight.zero_stage == 2  # stage 1 does not fit 30 GiB; stage 2 does
    assert tight.plan.total_bytes <= 30 * GiB and tight.fits
    config = choice.apply(production_default(), batch_size=2048)
    assert config.parallel.zero_stage == 1 and config.precision.mode == "bf16"
    assert config.batch_size == 2048
    build_optimizer(config)  # the chosen settings build


def test_select_optimizer_medium_and_small_models() -> None:
    gpu = select_optimizer(300_000_000, 4096, 40 * GiB, "cuda")
    assert gpu.rule == "medium" and gpu.optimizer == OptimizerConfig(
        name="lamb", learning_rate=2e-3
    )
    assert gpu.gradient_checkpointing and gpu.precision.mode == "fp32"
    cpu = select_optimizer(300_000_000, 4096, 40 * GiB, "cpu")
    assert cpu.rule == "medium" and not cpu.gradient_checkpointing
    big_on_cpu = select_optimizer(2_000_000_000, 64, 64 * GiB, False)
    assert big_on_cpu.rule == "medium"  # the >1B rule needs an accelerator
    # Exactly 100M is not above; too little host memory to offload the state to.
    small = select_optimizer(100_000_000, 64, 1 * GiB, True, host_memory_bytes=GiB // 4)
    assert small.rule == "small" and small.offload is None
    assert small.optimizer == OptimizerConfig(name="adam", learning_rate=1e-3)
    assert small.precision.mode == "fp32" and small.zero_stage == 0
    assert not small.fits  # 1.6 GB of fp32 Adam state exceeds 1 GiB
    assert "exceeds" in small.reason


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((0, 1, GiB, "gpu"), ValueError, "num_params must be an integer >= 1, got 0"),
        ((10, 0, GiB, "gpu"), ValueError, "batch_size must be an integer >= 1, got 0"),
        ((10, 1, 1.5, "gpu"), TypeError, "available_memory_bytes must be an integer, got 1.5"),
        ((10, 1, GiB, "npu"), ValueError, "accelerator must be a bool or one of cpu, gpu"),
    ],
)
def test_select_optimizer_rejects_bad_arguments(args: tuple, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        select_optimizer(*args)


def test_every_field_and_variable_is_documented() -> None:
    from scirs2_optim_jax.config.fields import field_docs

    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for path, _, _, _ in field_docs(RunConfig):
        assert f"`{path}`" in text, path
        assert "SCIRS2_OPTIM_" + path.replace(".", "__").upper() in text, path


# -- the one registry and builder ----------------------------------------------------------


def test_registry_lists_every_optimizer_once_with_the_fields_its_alias_takes() -> None:
    import inspect

    from scirs2_optim_jax.config import registry

    assert OPTIMIZER_NAMES is registry.OPTIMIZERS
    assert list(registry.OPTIMIZER_FIELDS) == list(registry.OPTIMIZERS)
    for name, fields in registry.OPTIMIZER_FIELDS.items():
        accepted = set(inspect.signature(getattr(optimizers, name)).parameters)
        assert set(fields) <= set(registry.HYPERPARAMETER_FIELDS), name
        assert set(fields.values()) <= accepted, name
        assert (name in registry.WHOLE_LEAF_NORMS) == ("axis_name" in accepted), name


@pytest.mark.parametrize("name", ["warmup-cosine", "warmup_cosine", " One-Cycle ", "linear"])
def test_schedule_names_are_accepted_in_both_spellings(name: str) -> None:
    from scirs2_optim_jax.config import make_schedule, registry

    canonical = registry.canonical_schedule("test", name)
    assert canonical in registry.SCHEDULES
    assert registry.command_line_schedule(name) == canonical.replace("_", "-")
    assert ScheduleConfig(name=name, total_steps=100).name == canonical
    config_schedule = build_schedule(ScheduleConfig(name=name, total_steps=100), 1.0)
    by_name = make_schedule(name, 1.0, 100)
    steps = jnp.arange(0, 101, 10)
    np.testing.assert_allclose(config_schedule(steps), by_name(steps))


def test_unknown_schedule_names_the_choices() -> None:
    from scirs2_optim_jax.config import make_schedule

    with pytest.raises(ValueError, match=r"config: schedule\.name must be one of 'warmup_cosine'"):
        ScheduleConfig(name="step")
    with pytest.raises(ValueError, match=r"make_schedule: schedule must be one of warmup_cosine"):
        make_schedule("step", 1.0, 10)


def test_build_optimizer_is_make_optimizer_for_a_config() -> None:
    from scirs2_optim_jax.config import make_optimizer, optimizer_arguments

    config = dataclasses.replace(
        production_default(),
        optimizer=OptimizerConfig(name="lamb", learning_rate=2e-3, weight_decay=0.1),
        schedule=ScheduleConfig(name="linear", total_steps=50, min_lr_ratio=0.2),
    )
    by_config = build_optimizer(config)
    by_name, _ = make_optimizer(
        "lamb",
        2e-3,
        50,
        schedule="linear",
        hyperparameters=optimizer_arguments(config.optimizer),
        max_global_norm=1.0,
        min_lr_ratio=0.2,
    )
    params = {"w": jnp.linspace(-1.0, 1.0, 6), "b": jnp.ones(3)}
    a, _ = _run(by_config, params, steps=3)
    b, _ = _run(by_name, params, steps=3)
    for key in params:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))


def test_make_optimizer_rejects_what_the_alias_does_not_take() -> None:
    from scirs2_optim_jax.config import make_optimizer

    with pytest.raises(ValueError, match="make_optimizer: sgd takes no hyperparameter 'b1'"):
        make_optimizer("sgd", 0.1, 10, hyperparameters={"b1": 0.9})
    with pytest.raises(ValueError, match="make_optimizer: optimizer must be one of adamw"):
        make_optimizer("adamx", 0.1, 10)


def test_demo_models_moved_to_training_and_warn_from_config() -> None:
    from scirs2_optim_jax import config
    from scirs2_optim_jax.training import demo_models

    with pytest.warns(DeprecationWarning, match="training.demo_models.demo_model"):
        assert config.demo_model is demo_models.demo_model
    with pytest.warns(DeprecationWarning):
        assert config.DEMO_MODELS == demo_models.DEMO_MODELS
