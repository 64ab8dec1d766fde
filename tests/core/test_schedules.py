"""Tests for scirs2_optim_jax.schedules: values against optax 0.2.8 and closed forms."""

from __future__ import annotations

import doctest
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scirs2_optim_jax import schedules
from scirs2_optim_jax.schedules import (
    cosine_decay_schedule,
    join_schedules,
    linear_schedule,
    polynomial_schedule,
    step_decay_schedule,
    warmup_cosine,
)

STEPS = np.arange(251, dtype=np.int32)

# (name shared by optax and us, keyword arguments)
OPTAX_CASES = [
    ("constant_schedule", {"value": 0.1}),
    ("constant_schedule", {"value": 3}),
    (
        "polynomial_schedule",
        {"init_value": 1.0, "end_value": 0.01, "power": 2, "transition_steps": 100},
    ),
    (
        "polynomial_schedule",
        {
            "init_value": 0.0,
            "end_value": 1.0,
            "power": 0.5,
            "transition_steps": 120,
            "transition_begin": 30,
        },
    ),
    (
        "polynomial_schedule",
        {"init_value": 0.5, "end_value": 0.1, "power": 3.0, "transition_steps": 0},
    ),
    # transition_steps <= 0 or decay_rate == 0: constant, as optax documents.
    (
        "polynomial_schedule",
        {"init_value": 0.5, "end_value": 0.1, "power": 1, "transition_steps": -3},
    ),
    ("linear_schedule", {"init_value": 0.5, "end_value": 0.1, "transition_steps": -1}),
    ("exponential_decay", {"init_value": 0.5, "transition_steps": 0, "decay_rate": 0.9}),
    ("exponential_decay", {"init_value": 0.5, "transition_steps": -2, "decay_rate": 0.9}),
    ("exponential_decay", {"init_value": 0.5, "transition_steps": 10, "decay_rate": 0.0}),
    # A step count beyond int32.
    ("cosine_decay_schedule", {"init_value": 1.0, "decay_steps": 10**10}),
    ("linear_schedule", {"init_value": 1.0, "end_value": 0.01, "transition_steps": 100}),
    (
        "linear_schedule",
        {"init_value": 0.0, "end_value": 0.1, "transition_steps": 50, "transition_begin": 25},
    ),
    ("cosine_decay_schedule", {"init_value": 1.0, "decay_steps": 100}),
    ("cosine_decay_schedule", {"init_value": 0.5, "decay_steps": 250, "alpha": 0.1}),
    (
        "cosine_decay_schedule",
        {"init_value": 2.0, "decay_steps": 150, "alpha": 0.05, "exponent": 2.0},
    ),
    ("exponential_decay", {"init_value": 1.0, "transition_steps": 10, "decay_rate": 0.9}),
    (
        "exponential_decay",
        {
            "init_value": 0.5,
            "transition_steps": 25,
            "decay_rate": 0.5,
            "transition_begin": 20,
            "staircase": True,
        },
    ),
    (
        "exponential_decay",
        {"init_value": 1.0, "transition_steps": 10, "decay_rate": 0.8, "end_value": 0.2},
    ),
    (
        "exponential_decay",
        {
            "init_value": 0.1,
            "transition_steps": 7,
            "decay_rate": 1.1,
            "transition_begin": 3,
            "end_value": 0.5,
        },
    ),
    ("piecewise_constant_schedule", {"init_value": 1.0}),
    (
        "piecewise_constant_schedule",
        {"init_value": 1.0, "boundaries_and_scales": {100: 0.1, 200: 0.01}},
    ),
    (
        "piecewise_constant_schedule",
        {"init_value": 0.5, "boundaries_and_scales": {51: 0.1, 0: 2.0, 50: 0.5, 250: 0.0}},
    ),
    (
        "warmup_cosine_decay_schedule",
        {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 10, "decay_steps": 100},
    ),
    (
        "warmup_cosine_decay_schedule",
        {
            "init_value": 0.1,
            "peak_value": 1.0,
            "warmup_steps": 50,
            "decay_steps": 200,
            "end_value": 0.05,
            "exponent": 2.0,
        },
    ),
    (
        "warmup_cosine_decay_schedule",
        {
            "init_value": 0.0,
            "peak_value": 0.5,
            "warmup_steps": 0,
            "decay_steps": 120,
            "end_value": 0.01,
        },
    ),
    ("warmup_constant_schedule", {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 20}),
    ("warmup_constant_schedule", {"init_value": 0.5, "peak_value": 0.1, "warmup_steps": 100}),
    ("cosine_onecycle_schedule", {"transition_steps": 200, "peak_value": 1.0}),
    (
        "cosine_onecycle_schedule",
        {
            "transition_steps": 100,
            "peak_value": 0.3,
            "pct_start": 0.25,
            "div_factor": 10.0,
            "final_div_factor": 100.0,
        },
    ),
    ("cosine_onecycle_schedule", {"transition_steps": 250, "peak_value": 2.0, "pct_start": 0.0}),
    (
        "sgdr_schedule",
        {
            "cosine_kwargs": [
                {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 10, "decay_steps": 60},
                {
                    "init_value": 0.1,
                    "peak_value": 0.5,
                    "warmup_steps": 0,
                    "decay_steps": 80,
                    "end_value": 0.01,
                },
                {"init_value": 0.0, "peak_value": 0.2, "warmup_steps": 5, "decay_steps": 50},
            ]
        },
    ),
]


def _optax_values(schedule: Any, steps: np.ndarray = STEPS) -> np.ndarray:
    """optax's values, eagerly; optax itself mixes int32 steps with Python floats."""
    with jax.numpy_dtype_promotion("standard"):
        return np.asarray(jax.vmap(lambda s: jnp.asarray(schedule(s)))(jnp.asarray(steps)))


def _jit_values(schedule: Any, steps: np.ndarray = STEPS) -> np.ndarray:
    """Values of ``schedule`` under jit with a traced scalar step, compiled once."""
    jitted = jax.jit(schedule)
    return np.stack([np.asarray(jitted(np.int32(s))) for s in steps])


def _case_id(case: tuple[str, dict[str, Any]]) -> str:
    name, kwargs = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in kwargs.items() if k != "cosine_kwargs")


@pytest.mark.parametrize("case", OPTAX_CASES, ids=[_case_id(c) for c in OPTAX_CASES])
def test_matches_optax(case: tuple[str, dict[str, Any]]) -> None:
    name, kwargs = case
    ours = getattr(schedules, name)(**kwargs)
    want = _optax_values(getattr(optax, name)(**kwargs))

    eager = ours(jnp.asarray(STEPS))
    assert eager.dtype == jnp.float32
    assert eager.shape == STEPS.shape
    np.testing.assert_allclose(np.asarray(eager), want, rtol=1e-6, atol=0)

    # Under jit XLA turns x / c into x * (1 / c); where a schedule computes 1 + cos(x) near
    # x = pi that last-bit change is amplified (optax's own jitted values move the same
    # way), so allow float32 resolution at the schedule's scale on top of rtol.
    jitted = _jit_values(ours)
    assert jitted.dtype == np.float32
    np.testing.assert_allclose(jitted, want, rtol=1e-6, atol=1e-7 * np.max(np.abs(want)))

    for step in (0, 1, 100, 250):
        scalar = ours(step)
        assert isinstance(scalar, jax.Array)
        assert scalar.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(scalar), want[step], rtol=1e-6)


def test_join_schedules_matches_optax() -> None:
    ours = join_schedules(
        [
            schedules.constant_schedule(0.1),
            linear_schedule(0.1, 1.0, 50),
            cosine_decay_schedule(1.0, 100, alpha=0.01),
        ],
        [30, 80],
    )
    theirs = optax.join_schedules(
        [
            optax.constant_schedule(0.1),
            optax.linear_schedule(0.1, 1.0, 50),
            optax.cosine_decay_schedule(1.0, 100, alpha=0.01),
        ],
        [30, 80],
    )
    want = _optax_values(theirs)
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(STEPS))), want, rtol=1e-6)
    np.testing.assert_allclose(_jit_values(ours), want, rtol=1e-6, atol=1e-7)
    # Each schedule counts its own steps from its boundary.
    assert float(ours(29)) == pytest.approx(0.1)
    assert float(ours(30)) == pytest.approx(0.1)
    assert float(ours(55)) == pytest.approx(0.55)
    assert float(ours(80)) == pytest.approx(1.0)


def test_join_schedules_accepts_foreign_schedules() -> None:
    schedule = join_schedules([lambda count: 2, optax.constant_schedule(0.5)], [3])
    values = schedule(jnp.arange(5))
    assert values.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(values), [2.0, 2.0, 2.0, 0.5, 0.5])


def test_polynomial_stays_finite_under_jit_at_the_end() -> None:
    # 1 - t/T with the division done as t * (1/T) lands just below 0 at t == T = 120, and
    # optax's jitted schedule returns NaN there from step 150 on.
    schedule = polynomial_schedule(0.0, 1.0, power=0.5, transition_steps=120, transition_begin=30)
    values = _jit_values(schedule, np.arange(140, 160, dtype=np.int32))
    np.testing.assert_allclose(values[10:], 1.0)


def _warmup_cosine_closed_form(
    base_lr: float, total_steps: int, warmup_steps: int, min_lr_ratio: float, steps: np.ndarray
) -> np.ndarray:
    """The production formula in float64, one step at a time."""
    low = base_lr * min_lr_ratio
    out = []
    for s in steps.tolist():
        if s < warmup_steps:
            out.append(base_lr * s / warmup_steps)
        elif s >= total_steps:
            out.append(low)
        else:
            progress = (s - warmup_steps) / (total_steps - warmup_steps)
            out.append(low + (base_lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return np.array(out)


# (base_lr, total_steps, warmup_ratio, min_lr_ratio, expected warmup steps)
WARMUP_COSINE_CASES = [
    (1e-3, 1000, 0.06, 0.01, 60),
    (0.1, 200, 0.0, 0.0, 0),
    (0.5, 10, 0.95, 0.1, 10),  # ceil(9.5): the warmup covers every step
    (2.0, 250, 0.07, 0.5, 18),  # ceil(17.5)
    (3e-4, 100, 0.07, 0.01, 7),  # 0.07 * 100 == 7.000000000000001 in floating point
    (1.0, 150, 0.3, 1.0, 45),  # constant after the warmup
]

WARMUP_COSINE_STEPS = np.arange(1050, dtype=np.int32)


@pytest.mark.parametrize(
    ("base_lr", "total_steps", "warmup_ratio", "min_lr_ratio", "warmup_steps"),
    WARMUP_COSINE_CASES,
)
def test_warmup_cosine_closed_form(
    base_lr: float, total_steps: int, warmup_ratio: float, min_lr_ratio: float, warmup_steps: int
) -> None:
    schedule = warmup_cosine(base_lr, total_steps, warmup_ratio, min_lr_ratio)
    steps = WARMUP_COSINE_STEPS  # one shape for every case, so eager ops compile once
    want = _warmup_cosine_closed_form(base_lr, total_steps, warmup_steps, min_lr_ratio, steps)
    eager = schedule(jnp.asarray(steps))
    assert eager.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(eager), want, rtol=2e-6, atol=1e-9 * base_lr)
    np.testing.assert_allclose(_jit_values(schedule, steps), want, rtol=2e-6, atol=1e-9 * base_lr)

    low = base_lr * min_lr_ratio
    first = 0.0 if warmup_steps > 0 else base_lr
    assert float(schedule(0)) == pytest.approx(first, rel=1e-6)
    if warmup_steps > 0:
        assert float(schedule(warmup_steps - 1)) == pytest.approx(
            base_lr * (warmup_steps - 1) / warmup_steps, rel=1e-6
        )
    if warmup_steps < total_steps:
        assert float(schedule(warmup_steps)) == pytest.approx(base_lr, rel=1e-6)
    assert float(schedule(total_steps)) == pytest.approx(low, rel=1e-6)
    assert float(schedule(total_steps + 1000)) == pytest.approx(low, rel=1e-6)


@pytest.mark.parametrize(
    ("init_value", "step_size", "decay_rate"), [(1.0, 30, 0.1), (0.5, 7, 0.9), (2e-3, 1, 1.01)]
)
def test_step_decay_closed_form(init_value: float, step_size: int, decay_rate: float) -> None:
    schedule = step_decay_schedule(init_value, step_size, decay_rate)
    want = init_value * decay_rate ** (STEPS // step_size).astype(np.float64)
    eager = schedule(jnp.asarray(STEPS))
    assert eager.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(eager), want, rtol=2e-6)
    np.testing.assert_allclose(_jit_values(schedule), want, rtol=2e-6)


def test_step_decay_is_exponential_decay_with_staircase() -> None:
    ours = step_decay_schedule(0.3, 12, 0.7)(jnp.asarray(STEPS))
    theirs = _optax_values(optax.exponential_decay(0.3, 12, 0.7, staircase=True))
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-6)


@pytest.mark.parametrize(
    "make_schedule",
    [
        lambda: warmup_cosine(0.2, 30, warmup_ratio=0.1, min_lr_ratio=0.05),
        lambda: schedules.cosine_onecycle_schedule(30, 0.3),
        lambda: schedules.step_decay_schedule(0.1, 10, 0.5),
    ],
    ids=["warmup_cosine", "cosine_onecycle_schedule", "step_decay_schedule"],
)
def test_schedule_drives_optax_sgd_under_jit(make_schedule: Any) -> None:
    schedule = make_schedule()
    tx = optax.sgd(schedule)
    params = {"w": jnp.array([1.0, -2.0])}
    num_steps = 30

    @jax.jit
    def train(params: Any) -> Any:
        def step(carry: Any, _: Any) -> tuple[Any, None]:
            params, state = carry
            grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=num_steps)
        return params

    final = train(params)["w"]
    # Each step multiplies w by 1 - 2 * lr(count) for count = 0, 1, ...
    rates = np.asarray(schedule(jnp.arange(num_steps)), dtype=np.float64)
    want = np.array([1.0, -2.0]) * np.prod(1.0 - 2.0 * rates)
    assert final.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(final), want, rtol=1e-5)


# (factory, keyword arguments, argument named in the message, value shown in the message)
BAD_ARGUMENTS = [
    (schedules.constant_schedule, {"value": math.nan}, "value", "nan"),
    (
        schedules.polynomial_schedule,
        {
            "init_value": 1.0,
            "end_value": 0.0,
            "power": 1,
            "transition_steps": 5,
            "transition_begin": -5,
        },
        "transition_begin",
        "-5",
    ),
    (
        schedules.polynomial_schedule,
        {"init_value": 1.0, "end_value": 0.0, "power": -1, "transition_steps": 10},
        "power",
        "-1",
    ),
    (
        schedules.polynomial_schedule,
        {"init_value": 1.0, "end_value": 0.0, "power": 1, "transition_steps": 2.5},
        "transition_steps",
        "2.5",
    ),
    (
        schedules.linear_schedule,
        {"init_value": 1.0, "end_value": 0.0, "transition_steps": 10, "transition_begin": -1},
        "transition_begin",
        "-1",
    ),
    (
        schedules.linear_schedule,
        {"init_value": math.inf, "end_value": 0.0, "transition_steps": 10},
        "init_value",
        "inf",
    ),
    (schedules.cosine_decay_schedule, {"init_value": 1.0, "decay_steps": 0}, "decay_steps", "0"),
    (
        schedules.cosine_decay_schedule,
        {"init_value": 1.0, "decay_steps": 10, "exponent": 0.0},
        "exponent",
        "0.0",
    ),
    (
        schedules.exponential_decay,
        {"init_value": 1.0, "transition_steps": 10, "decay_rate": 0.5, "transition_begin": -1},
        "transition_begin",
        "-1",
    ),
    (
        schedules.exponential_decay,
        {"init_value": 1.0, "transition_steps": 10, "decay_rate": -0.5},
        "decay_rate",
        "-0.5",
    ),
    (
        schedules.exponential_decay,
        {"init_value": 1.0, "transition_steps": 10, "decay_rate": 0.5, "end_value": math.nan},
        "end_value",
        "nan",
    ),
    (
        schedules.piecewise_constant_schedule,
        {"init_value": 1.0, "boundaries_and_scales": {10: -0.1}},
        "boundaries_and_scales[10]",
        "-0.1",
    ),
    (
        schedules.piecewise_constant_schedule,
        {"init_value": 1.0, "boundaries_and_scales": {-5: 0.1}},
        "boundaries_and_scales",
        "-5",
    ),
    (
        schedules.warmup_cosine_decay_schedule,
        {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 10, "decay_steps": 10},
        "decay_steps",
        "10",
    ),
    (
        schedules.warmup_cosine_decay_schedule,
        {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": -1, "decay_steps": 10},
        "warmup_steps",
        "-1",
    ),
    (
        schedules.warmup_constant_schedule,
        {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 0},
        "warmup_steps",
        "0",
    ),
    (
        schedules.cosine_onecycle_schedule,
        {"transition_steps": 0, "peak_value": 1.0},
        "transition_steps",
        "0",
    ),
    (
        schedules.cosine_onecycle_schedule,
        {"transition_steps": 100, "peak_value": 1.0, "pct_start": 1.0},
        "pct_start",
        "1.0",
    ),
    (
        schedules.cosine_onecycle_schedule,
        {"transition_steps": 100, "peak_value": 1.0, "div_factor": 0.0},
        "div_factor",
        "0.0",
    ),
    (schedules.sgdr_schedule, {"cosine_kwargs": []}, "cosine_kwargs", "[]"),
    (
        schedules.sgdr_schedule,
        {"cosine_kwargs": [{"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 0}]},
        "cosine_kwargs[0]",
        "decay_steps",
    ),
    (
        schedules.sgdr_schedule,
        {
            "cosine_kwargs": [
                {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 0, "decay_steps": 10},
                {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 0, "decay_steps": 0},
            ]
        },
        "decay_steps",
        "0",
    ),
    (
        schedules.join_schedules,
        {"schedules": [lambda c: 1.0, lambda c: 2.0], "boundaries": [1, 2]},
        "boundaries",
        "[1, 2]",
    ),
    (
        schedules.join_schedules,
        {"schedules": [lambda c: 1.0, lambda c: 2.0, lambda c: 3.0], "boundaries": [50, 20]},
        "boundaries",
        "[50, 20]",
    ),
    (
        schedules.join_schedules,
        {"schedules": [lambda c: 1.0, lambda c: 2.0], "boundaries": [-3]},
        "boundaries[0]",
        "-3",
    ),
    (
        schedules.step_decay_schedule,
        {"init_value": 1.0, "step_size": 0, "decay_rate": 0.5},
        "step_size",
        "0",
    ),
    (
        schedules.step_decay_schedule,
        {"init_value": 1.0, "step_size": 10, "decay_rate": 0.0},
        "decay_rate",
        "0.0",
    ),
    (warmup_cosine, {"base_lr": 0.0, "total_steps": 100}, "base_lr", "0.0"),
    (warmup_cosine, {"base_lr": math.inf, "total_steps": 100}, "base_lr", "inf"),
    (warmup_cosine, {"base_lr": 0.1, "total_steps": 0}, "total_steps", "0"),
    (warmup_cosine, {"base_lr": 0.1, "total_steps": 10.5}, "total_steps", "10.5"),
    (
        warmup_cosine,
        {"base_lr": 0.1, "total_steps": 100, "warmup_ratio": 1.0},
        "warmup_ratio",
        "1.0",
    ),
    (
        warmup_cosine,
        {"base_lr": 0.1, "total_steps": 100, "warmup_ratio": -0.1},
        "warmup_ratio",
        "-0.1",
    ),
    (
        warmup_cosine,
        {"base_lr": 0.1, "total_steps": 100, "min_lr_ratio": 1.5},
        "min_lr_ratio",
        "1.5",
    ),
]


@pytest.mark.parametrize(
    ("factory", "kwargs", "name", "value"),
    BAD_ARGUMENTS,
    ids=[f"{f.__name__}-{n}-{v}" for f, _, n, v in BAD_ARGUMENTS],
)
def test_bad_arguments_raise(factory: Any, kwargs: dict[str, Any], name: str, value: str) -> None:
    with pytest.raises(ValueError) as info:
        factory(**kwargs)
    message = str(info.value)
    assert message.startswith(f"{factory.__name__}: ")
    assert name in message
    assert value in message


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        (warmup_cosine, {"base_lr": 0.1, "total_steps": True}),
        (warmup_cosine, {"base_lr": "0.1", "total_steps": 10}),
        (
            schedules.exponential_decay,
            {"init_value": 1.0, "transition_steps": 5, "decay_rate": 0.5, "staircase": 1},
        ),
        (schedules.join_schedules, {"schedules": [1.0], "boundaries": []}),
    ],
)
def test_wrong_types_raise_type_error(factory: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match=f"^{factory.__name__}: "):
        factory(**kwargs)


def test_integral_floats_are_accepted_as_step_counts() -> None:
    schedule = cosine_decay_schedule(1.0, decay_steps=1e2)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)


def test_docstring_examples_run() -> None:
    result = doctest.testmod(schedules, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_numpy_and_jax_scalars_are_accepted_as_arguments() -> None:
    ours = linear_schedule(np.float64(1.0), jnp.asarray(0.0), np.int64(10))
    want = linear_schedule(1.0, 0.0, 10)
    np.testing.assert_array_equal(np.asarray(ours(STEPS)), np.asarray(want(STEPS)))


def test_value_arguments_may_be_traced() -> None:
    @jax.jit
    def value(peak: jax.Array, count: jax.Array) -> jax.Array:
        return schedules.warmup_cosine_decay_schedule(0.0, peak, 5, 25)(count)

    assert float(value(jnp.float32(2.0), jnp.int32(5))) == pytest.approx(2.0)
    assert float(value(jnp.float32(2.0), jnp.int32(15))) == pytest.approx(1.0)
    assert float(value(jnp.float32(0.0), jnp.int32(15))) == 0.0
