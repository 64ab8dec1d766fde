"""warmup_stable_decay against its closed form, under jit with int32 counts, and its checks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import scirs2_optim_jax as so


def closed_form(t: int, peak: float, w: int, d: int, total: int, end: float, decay: str) -> float:
    """The definition, in float64: warmup, flat, decay over the last d steps, then end."""
    t = max(t, 0)
    start = total - d
    if t < w:
        return peak * t / w
    if t < start:
        return peak
    if t >= total:
        return end
    p = (t - start) / d
    shape = {"linear": 1 - p, "cosine": (1 + math.cos(math.pi * p)) / 2, "1-sqrt": 1 - math.sqrt(p)}
    return end + (peak - end) * shape[decay]


# (peak, warmup, decay, total, end)
SHAPES = {
    "typical": (3e-3, 100, 200, 1000, 3e-5),
    "no_warmup": (1.0, 0, 10, 50, 0.0),
    "no_decay": (1.0, 5, 0, 20, 0.25),
    "no_flat_stage": (2.0, 7, 13, 20, 0.5),
    "one_step_phases": (1.0, 1, 1, 3, 0.0),
    "rising_end": (0.1, 4, 6, 30, 0.3),
}


def _boundaries(w: int, d: int, total: int) -> list[int]:
    start = total - d
    points = {0, 1, w - 1, w, w + 1, start - 1, start, start + 1, total - 1, total, total + 1}
    points |= {start + d // 3, start + d // 2, 10 * total, -5}
    return sorted(points)


@pytest.mark.parametrize("decay", so.schedules.WSD_DECAYS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_matches_the_closed_form_under_jit_with_int32_counts(shape: str, decay: str) -> None:
    peak, w, d, total, end = SHAPES[shape]
    schedule = so.warmup_stable_decay(peak, w, d, total, end, decay)
    steps = _boundaries(w, d, total)
    expected = [closed_form(t, peak, w, d, total, end, decay) for t in steps]
    jitted = jax.jit(schedule)
    at_each = [float(jitted(jnp.asarray(t, jnp.int32))) for t in steps]
    at_once = jax.jit(jax.vmap(schedule))(jnp.asarray(steps, jnp.int32))
    eager = [float(schedule(t)) for t in steps]
    for got in (at_each, np.asarray(at_once), eager):
        np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-7 * max(abs(peak), 1))
    assert at_once.dtype == jnp.float32
    assert jitted(jnp.asarray(5, jnp.int32)).dtype == jnp.float32


@pytest.mark.parametrize("decay", so.schedules.WSD_DECAYS)
def test_every_step_of_a_run_matches(decay: str) -> None:
    peak, w, d, total, end = 1.0, 30, 70, 300, 0.01
    steps = np.arange(0, total + 20, dtype=np.int32)
    got = jax.jit(so.warmup_stable_decay(peak, w, d, total, end, decay))(steps)
    expected = [closed_form(int(t), peak, w, d, total, end, decay) for t in steps]
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-7)
    # Monotone: up during the warmup, flat, down during the decay.
    diffs = np.diff(np.asarray(got, np.float64))
    assert (diffs[: w - 1] > 0).all() and (diffs[total - d : total] < 0).all()
    assert (diffs[w : total - d] == 0).all() and (diffs[total:] == 0).all()


def test_decay_shapes_differ_as_expected_halfway() -> None:
    values = {
        decay: float(so.warmup_stable_decay(1.0, 0, 100, 100, 0.0, decay)(50))
        for decay in so.schedules.WSD_DECAYS
    }
    assert values["linear"] == pytest.approx(0.5)
    assert values["cosine"] == pytest.approx(0.5, abs=1e-6)
    assert values["1-sqrt"] == pytest.approx(1 - math.sqrt(0.5))


def test_small_values_near_the_end_keep_their_relative_precision() -> None:
    for decay in so.schedules.WSD_DECAYS:
        schedule = jax.jit(so.warmup_stable_decay(1.0, 0, 100_000, 100_000, 0.0, decay))
        got = float(schedule(jnp.asarray(99_999, jnp.int32)))
        expected = closed_form(99_999, 1.0, 0, 100_000, 100_000, 0.0, decay)
        assert got == pytest.approx(expected, rel=1e-3), decay


def test_traced_peak_and_use_as_a_learning_rate() -> None:
    @jax.jit
    def value_at(peak, count):
        return so.warmup_stable_decay(peak, 10, 10, 40, 0.0)(count)

    assert float(value_at(jnp.float32(2.0), jnp.int32(20))) == pytest.approx(2.0)
    tx = so.adamw(so.warmup_stable_decay(0.1, 2, 2, 6), weight_decay=0.0)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    step = jax.jit(tx.update)
    rates = []
    for _ in range(8):
        updates, state = step({"w": jnp.ones(2)}, state, params)
        rates.append(-float(updates["w"][0]))
    # Adam's direction is 1 for a constant gradient, so the update is the learning rate.
    expected = [closed_form(t, 0.1, 2, 2, 6, 0.0, "linear") for t in range(8)]
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-8)
    injected = optax.inject_hyperparams(so.adamw)(learning_rate=so.warmup_stable_decay(1, 1, 1, 3))
    assert injected.init(params).hyperparams["learning_rate"] == 0.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"warmup_steps": 20, "decay_steps": 90, "total_steps": 100},
            ValueError,
            r"warmup_stable_decay: warmup_steps \+ decay_steps must be <= total_steps "
            r"\(= 100\), got 20 \+ 90 = 110",
        ),
        ({"warmup_steps": -1}, ValueError, "warmup_stable_decay: warmup_steps must be an integer"),
        ({"decay_steps": -3}, ValueError, "decay_steps must be an integer >= 0, got -3"),
        ({"total_steps": 0}, ValueError, "total_steps must be an integer > 0, got 0"),
        ({"warmup_steps": 2.5}, ValueError, "warmup_steps must be an integer >= 0, got 2.5"),
        ({"decay_steps": True}, TypeError, "decay_steps must be an integer >= 0, got bool"),
        ({"peak_value": float("nan")}, ValueError, "peak_value must be a finite number, got nan"),
        ({"peak_value": "high"}, TypeError, "peak_value must be a finite number, got str"),
        ({"end_value": float("inf")}, ValueError, "end_value must be a finite number, got inf"),
        (
            {"decay": "exponential"},
            ValueError,
            "warmup_stable_decay: decay must be one of linear, cosine, 1-sqrt, got 'exponential'",
        ),
    ],
    ids=lambda x: "" if not isinstance(x, dict) else "-".join(x),
)
def test_arguments_are_checked(kwargs: dict, error, match: str) -> None:
    arguments = {"peak_value": 1.0, "warmup_steps": 10, "decay_steps": 10, "total_steps": 100}
    with pytest.raises(error, match=match):
        so.warmup_stable_decay(**{**arguments, **kwargs})


def test_whole_float_step_counts_are_accepted() -> None:
    schedule = so.warmup_stable_decay(1.0, 10.0, 20.0, 1e2)
    assert float(schedule(50)) == pytest.approx(1.0)
