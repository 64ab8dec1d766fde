"""adopt, schedule_free_adamw / _sgd and warmup_stable_decay from the config, the builder and
``scirs2-optim train``."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import scirs2_optim_jax as so
from scirs2_optim_jax import cli
from scirs2_optim_jax.config import (
    ClippingConfig,
    OptimizerConfig,
    RunConfig,
    ScheduleConfig,
    build_optimizer,
    build_schedule,
    load_config,
    make_optimizer,
    make_schedule,
    optimizer_arguments,
    plan_memory,
    registry,
)

NEW_OPTIMIZERS = ("adopt", "schedule_free_adamw", "schedule_free_sgd")


@pytest.mark.parametrize(
    "spelling", ["warmup_stable_decay", "warmup-stable-decay", " Warmup-Stable-Decay"]
)
def test_wsd_is_named_in_both_spellings(spelling: str) -> None:
    assert registry.canonical_schedule("test", spelling) == "warmup_stable_decay"
    assert registry.command_line_schedule(spelling) == "warmup-stable-decay"
    assert ScheduleConfig(name=spelling).name == "warmup_stable_decay"
    assert "warmup-stable-decay" in cli.TRAIN_SCHEDULES


def test_make_schedule_wsd_is_the_schedule_with_the_ratios_as_steps() -> None:
    steps = jnp.arange(0, 121, dtype=jnp.int32)
    built = make_schedule("warmup-stable-decay", 2.0, 100, warmup_ratio=0.07, min_lr_ratio=0.1)
    # 7 warmup steps (not 8: 0.07 * 100 is rounded first), the last 20% (20 steps) decaying.
    direct = so.warmup_stable_decay(2.0, 7, 20, 100, 0.2)
    np.testing.assert_array_equal(built(steps), direct(steps))
    cosine = make_schedule("warmup_stable_decay", 1.0, 100, decay_ratio=0.5, decay_shape="1-sqrt")
    np.testing.assert_allclose(
        cosine(steps), so.warmup_stable_decay(1.0, 6, 50, 100, 0.01, "1-sqrt")(steps)
    )
    from_config = build_schedule(
        ScheduleConfig(name="warmup_stable_decay", total_steps=100, warmup_ratio=0.07), 2.0
    )
    np.testing.assert_array_equal(
        from_config(steps), make_schedule("warmup_stable_decay", 2.0, 100, warmup_ratio=0.07)(steps)
    )


def test_make_schedule_wsd_errors_name_the_arguments() -> None:
    with pytest.raises(
        ValueError, match=r"make_schedule: warmup_ratio \+ decay_ratio must be <= 1"
    ):
        make_schedule("warmup_stable_decay", 1.0, 100, warmup_ratio=0.5, decay_ratio=0.6)
    with pytest.raises(ValueError, match="make_schedule: decay_shape must be one of linear"):
        make_schedule("warmup_stable_decay", 1.0, 100, decay_shape="step")
    with pytest.raises(ValueError, match="make_schedule: decay_ratio must be a number in"):
        make_schedule("warmup_stable_decay", 1.0, 100, decay_ratio=1.5)
    # A one-step run still builds: the warmup takes the step, the decay none.
    assert float(make_schedule("warmup_stable_decay", 1.0, 1)(1)) == pytest.approx(0.01)


@pytest.mark.parametrize("name", NEW_OPTIMIZERS)
def test_registry_names_the_new_optimizers_and_the_builder_makes_them(name: str) -> None:
    assert name in registry.OPTIMIZERS and name in cli.TRAIN_OPTIMIZERS
    config = RunConfig(
        optimizer=OptimizerConfig(name=name, learning_rate=1e-2, b1=0.8, mu_dtype="bfloat16"),
        schedule=ScheduleConfig(name="warmup_stable_decay", total_steps=50),
        clipping=ClippingConfig(max_global_norm=1.0),
    )
    kwargs = optimizer_arguments(config.optimizer)
    expected_dtype = "state_dtype" if name.startswith("schedule_free") else "mu_dtype"
    assert kwargs == {"b1": 0.8, expected_dtype: "bfloat16"}
    tx = build_optimizer(config)
    params = {"w": jnp.linspace(-1.0, 1.0, 6), "b": jnp.ones(3)}
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(jax.tree.map(jnp.sign, p), s, p))
    for _ in range(3):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
    bf16 = [x for x in jax.tree.leaves(state) if x.dtype == jnp.bfloat16 and x.ndim > 0]
    assert bf16, "mu_dtype did not reach the state"
    if name.startswith("schedule_free"):
        assert so.schedule_free_eval_params(state, params)["w"].shape == (6,)


def test_make_optimizer_equals_the_alias_on_the_schedule() -> None:
    tx, schedule = make_optimizer(
        "schedule_free_adamw",
        3e-3,
        40,
        schedule="warmup_stable_decay",
        hyperparameters={"b2": 0.99},
    )
    reference = so.schedule_free_adamw(schedule, b2=0.99)
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    grads = {"w": jnp.linspace(0.5, -0.5, 6)}
    a, _ = tx.update(grads, tx.init(params), params)
    b, _ = reference.update(grads, reference.init(params), params)
    np.testing.assert_array_equal(a["w"], b["w"])


def test_config_file_names_the_new_optimizer_and_schedule(tmp_path) -> None:
    path = tmp_path / "run.json"
    path.write_text(
        json.dumps(
            {
                "optimizer": {
                    "name": "adopt",
                    "learning_rate": 1e-3,
                    "b2": 0.9999,
                    "weight_decay": None,
                },
                "schedule": {"name": "warmup-stable-decay", "total_steps": 1000},
            }
        )
    )
    config = load_config(path)
    assert (config.optimizer.name, config.schedule.name) == ("adopt", "warmup_stable_decay")
    assert isinstance(build_optimizer(config), optax.GradientTransformation)


def test_plan_memory_counts_the_state_of_the_new_optimizers() -> None:
    n = 1_000_000
    # ADOPT: mu and nu (float32) plus a count; schedule-free AdamW: z and nu plus scalars.
    assert plan_memory(n, "adopt").optimizer_state_bytes == 8 * n + 4
    free = plan_memory(n, "schedule_free_adamw").optimizer_state_bytes
    assert 8 * n <= free <= 8 * n + 64
    assert plan_memory(n, "schedule_free_adamw", mu_dtype="bfloat16").optimizer_state_bytes < free


@pytest.mark.parametrize(
    ("optimizer", "schedule"),
    [
        ("adopt", "warmup-stable-decay"),
        ("schedule_free_adamw", "warmup_stable_decay"),
        ("schedule_free_sgd", "warmup-constant"),
    ],
)
def test_train_command_runs_the_new_optimizers(
    optimizer: str, schedule: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--optimizer", optimizer, "--schedule", schedule, "--steps", "20"]
    code = cli.main([*argv, "--batch-size", "32", "--log-every", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert optimizer in out and schedule.replace("_", "-") in out


def test_train_command_refuses_unknown_schedules_with_the_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["train", "--schedule", "warmup_plateau"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'warmup_plateau'" in err and "warmup-stable-decay" in err
