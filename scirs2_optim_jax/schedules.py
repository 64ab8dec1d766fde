"""Learning-rate schedules: pure functions of the step count.

Each factory validates its arguments once, at construction, and returns a function
``count -> value`` that uses no Python control flow on ``count``, so it can be called with a
traced integer step inside ``jax.jit`` (as ``optax.sgd(schedule)`` does) or with an array of
steps. The count is cast to float32 before any arithmetic and values come back as float32
arrays, which keeps the schedules valid under ``jax_numpy_dtype_promotion="strict"``.

The schedules that optax 0.2.8 also has take the same arguments, in the same order and with
the same defaults, and return the same values. What optax documents, they accept (a
``transition_steps <= 0`` or a zero ``decay_rate`` gives a constant schedule, as in optax);
where optax silently accepts an argument that makes no sense (a negative
``transition_begin``, a negative ``decay_rate``...), these raise a ``ValueError`` naming
the function, the argument and the value; each docstring says which.

Step counts enter the arithmetic as floats, so a count beyond the int32 range
(``decay_steps=10**10``) works under ``jax.jit`` as it does in optax.

Arguments that set values (``init_value``, ``peak_value``...) may also be JAX tracers, for
a schedule built inside a traced function; they are then accepted unchecked. Arguments that
count steps must be concrete integers (a float such as ``1e4`` with an integral value is
accepted).
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scirs2_optim_jax.validation import (
    check_in_range,
    check_non_negative,
    check_one_of,
    check_positive,
    check_whole_number,
)

__all__ = [
    "Schedule",
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "exponential_decay",
    "join_schedules",
    "linear_schedule",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "sgdr_schedule",
    "step_decay_schedule",
    "warmup_constant_schedule",
    "warmup_cosine",
    "warmup_cosine_decay_schedule",
    "warmup_stable_decay",
]

WSD_DECAYS: tuple[str, ...] = ("linear", "cosine", "1-sqrt")
"""The decay shapes of :func:`warmup_stable_decay`."""

Schedule = Callable[[jax.typing.ArrayLike], jax.Array]


# --- validation at construction -------------------------------------------------------------


def _check_finite(fn: str, name: str, value: Any) -> None:
    """Raises unless ``value`` is a finite real scalar; a tracer is accepted unchecked."""
    if isinstance(value, jax.core.Tracer):
        return
    is_scalar_array = (
        isinstance(value, (np.ndarray, np.generic, jax.Array))
        and np.ndim(value) == 0
        and np.asarray(value).dtype.kind in "iuf"
    )
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) or is_scalar_array):
        raise TypeError(
            f"{fn}: {name} must be a finite number, got {type(value).__name__} {value!r}"
        )
    if not math.isfinite(float(value)):
        raise ValueError(f"{fn}: {name} must be a finite number, got {value!r}")


def _scalar(value: Any) -> Any:
    """A value argument ready for arithmetic with float32 arrays.

    Python numbers stay Python numbers (weakly typed, so they adopt float32 and an integer
    exponent stays an exact integer power); concrete NumPy/JAX scalars become Python numbers;
    tracers are cast to float32.
    """
    if isinstance(value, jax.core.Tracer):
        return jnp.asarray(value).astype(jnp.float32)
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        return np.asarray(value).item()
    return value


def _concrete(fn: str, name: str, value: Any) -> float:
    """``value`` as a Python float, for arguments that decide a number of steps."""
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"{fn}: {name} must be a concrete number, not a traced value")
    return float(value)


def _steps(count: jax.typing.ArrayLike) -> jax.Array:
    """The step count as float32 (exact for counts below 2**24)."""
    return jnp.asarray(count).astype(jnp.float32)


def _full(count: jax.typing.ArrayLike, value: Any) -> jax.Array:
    """``value`` as float32, broadcast to the shape of ``count``."""
    return jnp.broadcast_to(jnp.asarray(value).astype(jnp.float32), jnp.shape(count))


# --- schedules --------------------------------------------------------------------------------


def constant_schedule(value: jax.typing.ArrayLike) -> Schedule:
    """A schedule that returns ``value`` at every step.

    Args:
        value: the value to return; a finite number.

    Returns:
        A function mapping the step count to ``value`` as float32, with the count's shape.

    Raises:
        ValueError: if ``value`` is not finite.

    Example:
        >>> schedule = constant_schedule(0.1)
        >>> round(float(schedule(0)), 6), round(float(schedule(1000)), 6)
        (0.1, 0.1)
    """
    _check_finite("constant_schedule", "value", value)
    value = _scalar(value)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        return _full(count, value)

    return schedule


def _polynomial(
    fn: str,
    init_value: Any,
    end_value: Any,
    power: Any,
    transition_steps: Any,
    transition_begin: Any,
) -> Schedule:
    _check_finite(fn, "init_value", init_value)
    _check_finite(fn, "end_value", end_value)
    check_positive(fn, "power", power)
    steps = check_whole_number(
        fn, "transition_steps", transition_steps, positive=False, signed=True
    )
    begin = float(check_whole_number(fn, "transition_begin", transition_begin, positive=False))
    init, end, power = _scalar(init_value), _scalar(end_value), _scalar(power)

    if steps <= 0:  # optax: "the entire annealing process is disabled"

        def hold(count: jax.typing.ArrayLike) -> jax.Array:
            return _full(count, init)

        return hold

    steps = float(steps)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        elapsed = jnp.clip(_steps(count) - begin, 0, steps)
        # Under jit XLA divides by multiplying with 1/steps, so 1 - elapsed/steps can come
        # out just below 0 at the end, which a fractional power turns into NaN.
        remaining = jnp.maximum(1 - elapsed / steps, 0)
        return (init - end) * remaining**power + end

    return schedule


def polynomial_schedule(
    init_value: jax.typing.ArrayLike,
    end_value: jax.typing.ArrayLike,
    power: jax.typing.ArrayLike,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    """Polynomial transition from ``init_value`` to ``end_value``.

    With ``B = transition_begin`` and ``T = transition_steps``, the value at step ``t`` is
    ``init_value`` for ``t <= B``, ``(init_value - end_value) * (1 - (t - B) / T) ** power +
    end_value`` for ``B <= t <= B + T``, and ``end_value`` afterwards.

    As in optax, ``transition_steps <= 0`` turns the transition off: the schedule holds
    ``init_value``. Unlike optax, a negative ``transition_begin`` or a ``power <= 0`` (which
    would make the value infinite at the end) raises instead of being silently replaced.

    Args:
        init_value: value before and at the start of the transition; a finite number.
        end_value: value at the end of the transition and after; a finite number.
        power: exponent of the polynomial; a finite number > 0.
        transition_steps: length of the transition; an integer (``<= 0``: no transition).
        transition_begin: steps to hold ``init_value`` before the transition starts; an
            integer >= 0.

    Returns:
        A function mapping the step count to the value, as float32.

    Raises:
        ValueError: if an argument is out of range, e.g.
            ``polynomial_schedule: transition_begin must be an integer >= 0, got -5``.

    Example:
        >>> schedule = polynomial_schedule(1.0, 0.0, power=2, transition_steps=10)
        >>> [round(float(schedule(t)), 4) for t in (0, 5, 10, 20)]
        [1.0, 0.25, 0.0, 0.0]
    """
    return _polynomial(
        "polynomial_schedule", init_value, end_value, power, transition_steps, transition_begin
    )


def linear_schedule(
    init_value: jax.typing.ArrayLike,
    end_value: jax.typing.ArrayLike,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    """Linear transition from ``init_value`` to ``end_value``.

    The :func:`polynomial_schedule` with ``power=1``: ``init_value`` until
    ``transition_begin``, then a straight line reaching ``end_value`` after
    ``transition_steps`` more steps, then ``end_value``. ``transition_steps <= 0`` holds
    ``init_value`` (as in optax); a negative ``transition_begin`` raises.

    Args:
        init_value: value before the transition; a finite number.
        end_value: value at the end of the transition and after; a finite number.
        transition_steps: length of the transition; an integer (``<= 0``: no transition).
        transition_begin: steps to hold ``init_value`` first; an integer >= 0.

    Returns:
        A function mapping the step count to the value, as float32.

    Raises:
        ValueError: if an argument is out of range, e.g.
            ``linear_schedule: transition_begin must be an integer >= 0, got -1``.

    Example:
        >>> schedule = linear_schedule(0.0, 1.0, transition_steps=4, transition_begin=2)
        >>> [round(float(schedule(t)), 4) for t in range(8)]
        [0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    return _polynomial(
        "linear_schedule", init_value, end_value, 1, transition_steps, transition_begin
    )


def _cosine_decay(
    fn: str, init_value: Any, decay_steps: Any, alpha: Any, exponent: Any, *, steps_name: str
) -> Schedule:
    _check_finite(fn, "init_value", init_value)
    steps = float(check_whole_number(fn, steps_name, decay_steps, positive=True))
    _check_finite(fn, "alpha", alpha)
    check_positive(fn, "exponent", exponent)
    init, alpha, exponent = _scalar(init_value), _scalar(alpha), _scalar(exponent)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = jnp.minimum(_steps(count), steps)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * t / steps))
        return init * ((1 - alpha) * cosine**exponent + alpha)

    return schedule


def cosine_decay_schedule(
    init_value: jax.typing.ArrayLike,
    decay_steps: int,
    alpha: jax.typing.ArrayLike = 0.0,
    exponent: jax.typing.ArrayLike = 1.0,
) -> Schedule:
    """Cosine decay from ``init_value`` to ``alpha * init_value`` over ``decay_steps`` steps.

    The value at step ``t`` is ``init_value * ((1 - alpha) * c ** exponent + alpha)`` with
    ``c = (1 + cos(pi * min(t, decay_steps) / decay_steps)) / 2``, so it stays at
    ``alpha * init_value`` after ``decay_steps``.

    Args:
        init_value: value at step 0; a finite number.
        decay_steps: length of the decay; an integer > 0 (optax raises too).
        alpha: final value as a fraction of ``init_value``; a finite number (above 1 the
            schedule rises).
        exponent: power applied to the cosine factor; a finite number > 0 (optax accepts
            any, but ``exponent <= 0`` is infinite or constant at the end).

    Returns:
        A function mapping the step count to the value, as float32.

    Raises:
        ValueError: if an argument is out of range, e.g.
            ``cosine_decay_schedule: decay_steps must be an integer > 0, got 0``.

    Example:
        >>> schedule = cosine_decay_schedule(1.0, decay_steps=100, alpha=0.1)
        >>> [round(float(schedule(t)), 4) for t in (0, 50, 100, 200)]
        [1.0, 0.55, 0.1, 0.1]

    Reference: Loshchilov and Hutter, "SGDR: Stochastic Gradient Descent with Warm
    Restarts", 2017.
    """
    return _cosine_decay(
        "cosine_decay_schedule", init_value, decay_steps, alpha, exponent, steps_name="decay_steps"
    )


def exponential_decay(
    init_value: jax.typing.ArrayLike,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: jax.typing.ArrayLike | None = None,
) -> Schedule:
    """Exponential decay: the value is multiplied by ``decay_rate`` every ``transition_steps``.

    The value at step ``t`` is ``init_value`` for ``t <= transition_begin`` and
    ``init_value * decay_rate ** p`` afterwards, with ``p = (t - transition_begin) /
    transition_steps`` (rounded down when ``staircase``). When ``end_value`` is given, it
    bounds the value: from below if ``decay_rate < 1``, from above otherwise.

    As in optax, ``transition_steps <= 0`` or ``decay_rate == 0`` give a constant schedule
    (``init_value``). Unlike optax, a negative ``decay_rate`` (which gives NaN) and a
    negative ``transition_begin`` (which optax silently replaces by 0) raise.

    Args:
        init_value: value until ``transition_begin``; a finite number.
        transition_steps: steps per factor of ``decay_rate``; an integer (``<= 0``: constant).
        decay_rate: factor per ``transition_steps`` steps; a finite number >= 0 (above 1 the
            value grows; 0: constant).
        transition_begin: steps to hold ``init_value`` first; an integer >= 0.
        staircase: if True, the decay happens in discrete jumps; a bool.
        end_value: optional bound on the value; a finite number or None.

    Returns:
        A function mapping the step count to the value, as float32.

    Raises:
        ValueError: if an argument is out of range, e.g.
            ``exponential_decay: decay_rate must be a finite number >= 0, got -0.5``.

    Example:
        >>> schedule = exponential_decay(1.0, transition_steps=10, decay_rate=0.5,
        ...                              staircase=True, end_value=0.2)
        >>> [round(float(schedule(t)), 4) for t in (0, 9, 10, 25, 100)]
        [1.0, 1.0, 0.5, 0.25, 0.2]
    """
    fn = "exponential_decay"
    _check_finite(fn, "init_value", init_value)
    steps = check_whole_number(
        fn, "transition_steps", transition_steps, positive=False, signed=True
    )
    check_non_negative(fn, "decay_rate", decay_rate)
    begin = float(check_whole_number(fn, "transition_begin", transition_begin, positive=False))
    if not isinstance(staircase, bool):
        raise TypeError(f"{fn}: staircase must be a bool, got {staircase!r}")
    if end_value is not None:
        _check_finite(fn, "end_value", end_value)
    init, rate = _scalar(init_value), _scalar(decay_rate)
    end = None if end_value is None else _scalar(end_value)
    if steps <= 0 or (not isinstance(rate, jax.Array) and rate == 0):
        # What optax does (and documents in its tests): the decay is off.
        return constant_schedule(init_value)
    steps = float(steps)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        elapsed = _steps(count) - begin
        exponent = elapsed / steps
        if staircase:
            exponent = jnp.floor(exponent)
        value = jnp.where(elapsed <= 0, init, init * jnp.power(rate, exponent))
        if end is not None:
            # A decaying schedule is bounded below by end_value, a growing one above.
            value = jnp.where(rate < 1, jnp.maximum(value, end), jnp.minimum(value, end))
        return value

    return schedule


def piecewise_constant_schedule(
    init_value: jax.typing.ArrayLike,
    boundaries_and_scales: dict[int, float] | None = None,
) -> Schedule:
    """Piecewise constant schedule: ``init_value`` scaled at given steps.

    At step ``t`` the value is ``init_value`` times the product of every ``scale`` whose
    ``boundary <= t``.

    Unlike optax, a negative boundary raises (it would silently apply from step 0); as in
    optax, so does a negative scale.

    Args:
        init_value: value before the first boundary; a finite number.
        boundaries_and_scales: a mapping ``{boundary: scale}`` with integer boundaries >= 0
            and finite scales >= 0, or None for a constant schedule.

    Returns:
        A function mapping the step count to the value, as float32.

    Raises:
        ValueError: if a boundary or scale is out of range, e.g.
            ``piecewise_constant_schedule: boundaries_and_scales[10] must be a finite
            number >= 0, got -0.1``.

    Example:
        >>> schedule = piecewise_constant_schedule(1.0, {100: 0.1, 200: 0.5})
        >>> [round(float(schedule(t)), 4) for t in (0, 99, 100, 199, 200)]
        [1.0, 1.0, 0.1, 0.1, 0.05]
    """
    fn = "piecewise_constant_schedule"
    _check_finite(fn, "init_value", init_value)
    if boundaries_and_scales is None:
        boundaries_and_scales = {}
    if not isinstance(boundaries_and_scales, Mapping):
        raise TypeError(
            f"{fn}: boundaries_and_scales must be a dict {{step: scale}} or None, got "
            f"{type(boundaries_and_scales).__name__} {boundaries_and_scales!r}"
        )
    jumps = []
    for boundary, scale in boundaries_and_scales.items():
        step = check_whole_number(
            fn, "a boundary in boundaries_and_scales", boundary, positive=False
        )
        check_non_negative(fn, f"boundaries_and_scales[{boundary!r}]", scale)
        jumps.append((float(step), _scalar(scale)))
    jumps.sort(key=lambda jump: jump[0])
    init = _scalar(init_value)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = _steps(count)
        value = _full(count, init)
        for step, scale in jumps:
            value = jnp.where(t >= step, value * scale, value)
        return value

    return schedule


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Runs ``schedules`` one after the other, switching at ``boundaries``.

    Before ``boundaries[0]`` the value is ``schedules[0](t)``; from ``boundaries[i]`` on (up to
    the next boundary) it is ``schedules[i + 1](t - boundaries[i])``, so each schedule counts
    its own steps from 0.

    Unlike optax, the boundaries must be integers >= 0 in strictly increasing order (a
    repeated or decreasing boundary would skip a schedule) and there must be exactly one
    fewer than schedules (optax silently drops the extra ones).

    Args:
        schedules: a non-empty sequence of callables ``count -> value``.
        boundaries: ``len(schedules) - 1`` strictly increasing integers >= 0.

    Returns:
        A function mapping the step count to the value, as float32.

    Raises:
        ValueError: if the lengths do not match or the boundaries are out of order, e.g.
            ``join_schedules: boundaries must be strictly increasing, got [50, 20]``.

    Example:
        >>> schedule = join_schedules(
        ...     [linear_schedule(0.0, 1.0, 10), cosine_decay_schedule(1.0, 90)], [10])
        >>> [round(float(schedule(t)), 4) for t in (0, 5, 10, 55, 100)]
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    fn = "join_schedules"
    schedules = list(schedules)
    boundaries = list(boundaries)
    if not schedules:
        raise ValueError(f"{fn}: schedules must be a non-empty sequence, got {schedules!r}")
    for i, sched in enumerate(schedules):
        if not callable(sched):
            raise TypeError(f"{fn}: schedules[{i}] must be callable, got {sched!r}")
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"{fn}: boundaries must have len(schedules) - 1 = {len(schedules) - 1} entries, "
            f"got {len(boundaries)}: {boundaries!r}"
        )
    steps = [
        check_whole_number(fn, f"boundaries[{i}]", b, positive=False)
        for i, b in enumerate(boundaries)
    ]
    if any(later <= earlier for earlier, later in itertools.pairwise(steps)):
        raise ValueError(f"{fn}: boundaries must be strictly increasing, got {boundaries!r}")

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        count = jnp.asarray(count)
        value = jnp.asarray(schedules[0](count)).astype(jnp.float32)
        for boundary, later in zip(steps, schedules[1:], strict=True):
            after = jnp.asarray(later(count - boundary)).astype(jnp.float32)
            value = jnp.where(count < boundary, value, after)
        return value

    return schedule


def _warmup_cosine_decay(
    fn: str,
    init_value: Any,
    peak_value: Any,
    warmup_steps: Any,
    decay_steps: Any,
    end_value: Any,
    exponent: Any,
) -> Schedule:
    _check_finite(fn, "init_value", init_value)
    _check_finite(fn, "peak_value", peak_value)
    warmup = check_whole_number(fn, "warmup_steps", warmup_steps, positive=False)
    total = check_whole_number(fn, "decay_steps", decay_steps, positive=True)
    if total <= warmup:
        raise ValueError(
            f"{fn}: decay_steps must be an integer > warmup_steps (= {warmup}), got {decay_steps!r}"
        )
    _check_finite(fn, "end_value", end_value)
    check_positive(fn, "exponent", exponent)
    peak, end = _scalar(peak_value), _scalar(end_value)
    if isinstance(peak, jax.Array) or isinstance(end, jax.Array):
        safe_peak = jnp.where(peak == 0, 1.0, peak)
        alpha = jnp.where(peak == 0, 0.0, end / safe_peak)
    else:
        # A zero peak makes the decay phase zero whatever end_value says (as in optax).
        alpha = 0.0 if peak == 0 else end / peak
    decay = _cosine_decay(fn, peak, total - warmup, alpha, exponent, steps_name="decay_steps")
    if warmup == 0:
        return decay
    rise = _polynomial(fn, init_value, peak, 1, warmup, 0)
    return join_schedules([rise, decay], [warmup])


def warmup_cosine_decay_schedule(
    init_value: jax.typing.ArrayLike,
    peak_value: jax.typing.ArrayLike,
    warmup_steps: int,
    decay_steps: int,
    end_value: jax.typing.ArrayLike = 0.0,
    exponent: jax.typing.ArrayLike = 1.0,
) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value``, then cosine decay to ``end_value``.

    The warmup takes ``warmup_steps`` steps; the cosine decay (see
    :func:`cosine_decay_schedule`) takes the remaining ``decay_steps - warmup_steps``, so
    ``end_value`` is reached at step ``decay_steps`` and held afterwards. ``warmup_steps=0``
    starts at ``peak_value``. If ``peak_value`` is 0 the decay phase is 0 (as in optax).

    Args:
        init_value: value at step 0; a finite number.
        peak_value: value at the end of the warmup; a finite number.
        warmup_steps: length of the warmup; an integer >= 0.
        decay_steps: total length, warmup included; an integer > ``warmup_steps``.
        end_value: value at ``decay_steps`` and after; a finite number.
        exponent: power applied to the cosine factor; a finite number > 0.

    Returns:
        A function mapping the step count to the value, as float32.

    Raises:
        ValueError: if an argument is out of range, e.g. ``warmup_cosine_decay_schedule:
            decay_steps must be an integer > warmup_steps (= 10), got 10``.

    Example:
        >>> schedule = warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=10, decay_steps=110)
        >>> [round(float(schedule(t)), 4) for t in (0, 5, 10, 60, 110, 200)]
        [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]

    Reference: Loshchilov and Hutter, "SGDR: Stochastic Gradient Descent with Warm
    Restarts", 2017.
    """
    return _warmup_cosine_decay(
        "warmup_cosine_decay_schedule",
        init_value,
        peak_value,
        warmup_steps,
        decay_steps,
        end_value,
        exponent,
    )


def warmup_constant_schedule(
    init_value: jax.typing.ArrayLike,
    peak_value: jax.typing.ArrayLike,
    warmup_steps: int,
) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value``, then ``peak_value`` forever.

    Unlike optax, ``warmup_steps`` must be > 0: optax's ``warmup_steps=0`` holds
    ``init_value`` forever and never reaches ``peak_value``; use
    :func:`constant_schedule` for no warmup.

    Args:
        init_value: value at step 0; a finite number.
        peak_value: value from step ``warmup_steps`` on; a finite number.
        warmup_steps: length of the warmup; an integer > 0.

    Returns:
        A function mapping the step count to the value, as float32.

    Raises:
        ValueError: if an argument is out of range, e.g.
            ``warmup_constant_schedule: warmup_steps must be an integer > 0, got 0``.

    Example:
        >>> schedule = warmup_constant_schedule(0.0, 1.0, warmup_steps=4)
        >>> [round(float(schedule(t)), 4) for t in range(6)]
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    fn = "warmup_constant_schedule"
    check_whole_number(fn, "warmup_steps", warmup_steps, positive=True)
    return _polynomial(fn, init_value, peak_value, 1, warmup_steps, 0)


def cosine_onecycle_schedule(
    transition_steps: int,
    peak_value: jax.typing.ArrayLike,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    """One-cycle schedule: cosine rise to ``peak_value``, then cosine fall to a tiny value.

    With ``T = transition_steps`` and ``S = int(pct_start * T)``: the value goes from
    ``peak_value / div_factor`` at step 0 to ``peak_value`` at step ``S``, then down to
    ``peak_value / (div_factor * final_div_factor)`` at step ``T`` and stays there; both
    phases follow half a cosine. ``pct_start=0`` starts at the peak.

    Unlike optax, ``pct_start`` outside ``[0, 1)`` and ``div_factor`` or
    ``final_div_factor <= 0`` raise (optax then mixes up or divides by zero).

    Args:
        transition_steps: length of the cycle; an integer > 0.
        peak_value: value at step ``S``; a finite number.
        pct_start: fraction of the cycle spent rising; a number in [0, 1).
        div_factor: ``peak_value / div_factor`` is the value at step 0; a finite number > 0.
        final_div_factor: the final value is the initial one divided by this; a finite
            number > 0.

    Returns:
        A function mapping the step count to the value, as float32.

    Raises:
        ValueError: if an argument is out of range, e.g.
            ``cosine_onecycle_schedule: pct_start must be a number in [0, 1), got 1.0``.

    Example:
        >>> schedule = cosine_onecycle_schedule(100, 1.0, pct_start=0.5, div_factor=10.0,
        ...                                     final_div_factor=100.0)
        >>> [round(float(schedule(t)), 4) for t in (0, 25, 50, 75, 100)]
        [0.1, 0.55, 1.0, 0.5005, 0.001]

    Reference: Smith and Topin, "Super-Convergence: Very Fast Training of Neural Networks
    Using Large Learning Rates", 2017.
    """
    fn = "cosine_onecycle_schedule"
    total = check_whole_number(fn, "transition_steps", transition_steps, positive=True)
    _check_finite(fn, "peak_value", peak_value)
    check_in_range(fn, "pct_start", pct_start, 0.0, 1.0)
    check_positive(fn, "div_factor", div_factor)
    check_positive(fn, "final_div_factor", final_div_factor)
    peak, div, final_div = _scalar(peak_value), _scalar(div_factor), _scalar(final_div_factor)
    rise_end = int(_concrete(fn, "pct_start", pct_start) * total)
    start, final = peak / div, peak / (div * final_div)
    # (first step, step after the last, value at the first step, value it tends to)
    phases = [(0.0, float(rise_end), start, peak), (float(rise_end), float(total), peak, final)]

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = jnp.maximum(_steps(count), 0)
        value = _full(count, final)
        for begin, end, high, low in phases:
            frac = (t - begin) / max(end - begin, 1)
            # Half a cosine from `high` (frac = 0) to `low` (frac = 1).
            blend = low + (high - low) / 2 * (jnp.cos(jnp.pi * frac) + 1)
            value = jnp.where((t >= begin) & (t < end), blend, value)
        return value

    return schedule


def sgdr_schedule(cosine_kwargs: Iterable[dict[str, jax.typing.ArrayLike]]) -> Schedule:
    """SGD with warm restarts: one :func:`warmup_cosine_decay_schedule` cycle after another.

    Each cycle lasts its own ``decay_steps`` and counts its steps from 0; the last cycle's
    final value is held after it ends.

    Args:
        cosine_kwargs: a non-empty iterable of dicts, each the keyword arguments of one
            :func:`warmup_cosine_decay_schedule` (``decay_steps`` required).

    Returns:
        A function mapping the step count to the value, as float32.

    Raises:
        ValueError: if ``cosine_kwargs`` is empty or a cycle's arguments are invalid, e.g.
            ``sgdr_schedule: cosine_kwargs[1]: warmup_cosine_decay_schedule: decay_steps must
            be an integer > 0, got 0``.

    Example:
        >>> cycle = dict(init_value=0.0, peak_value=1.0, warmup_steps=10, decay_steps=50)
        >>> schedule = sgdr_schedule([cycle, cycle])
        >>> [round(float(schedule(t)), 4) for t in (0, 10, 50, 55, 60, 100)]
        [0.0, 1.0, 0.0, 0.5, 1.0, 0.0]

    Reference: Loshchilov and Hutter, "SGDR: Stochastic Gradient Descent with Warm
    Restarts", 2017.
    """
    fn = "sgdr_schedule"
    cycles = list(cosine_kwargs)
    if not cycles:
        raise ValueError(f"{fn}: cosine_kwargs must hold at least one dict, got {cycles!r}")
    schedules, boundaries, elapsed = [], [], 0
    for i, kwargs in enumerate(cycles):
        if not isinstance(kwargs, Mapping) or "decay_steps" not in kwargs:
            raise ValueError(
                f"{fn}: cosine_kwargs[{i}] must be a dict with a 'decay_steps' key, got {kwargs!r}"
            )
        try:
            schedules.append(warmup_cosine_decay_schedule(**kwargs))
        except (TypeError, ValueError) as err:
            raise type(err)(f"{fn}: cosine_kwargs[{i}]: {err}") from None
        elapsed += int(kwargs["decay_steps"])
        boundaries.append(elapsed)
    return join_schedules(schedules, boundaries[:-1])


def step_decay_schedule(init_value: float, step_size: int, decay_rate: float) -> Schedule:
    """Step decay: ``init_value * decay_rate ** floor(count / step_size)``.

    The value is multiplied by ``decay_rate`` every ``step_size`` steps (PyTorch's
    ``StepLR``). optax has no equivalent; it is :func:`exponential_decay` with
    ``staircase=True``.

    Args:
        init_value: value for the first ``step_size`` steps; a finite number.
        step_size: steps between two decays; an integer > 0.
        decay_rate: factor applied at each decay; a finite number > 0 (above 1 the value
            grows).

    Returns:
        A function mapping the step count to the value, as float32.

    Raises:
        ValueError: if an argument is out of range, e.g.
            ``step_decay_schedule: step_size must be an integer > 0, got 0``.

    Example:
        >>> schedule = step_decay_schedule(1.0, step_size=30, decay_rate=0.1)
        >>> [round(float(schedule(t)), 4) for t in (0, 29, 30, 59, 60)]
        [1.0, 1.0, 0.1, 0.1, 0.01]
    """
    fn = "step_decay_schedule"
    _check_finite(fn, "init_value", init_value)
    size = check_whole_number(fn, "step_size", step_size, positive=True)
    check_positive(fn, "decay_rate", decay_rate)
    init, rate = _scalar(init_value), _scalar(decay_rate)
    # exp(k * log(rate)) with the log taken in float64: raising float32(rate) to the k-th
    # power would multiply the rounding error of the rate by k.
    log_rate = jnp.log(rate) if isinstance(rate, jax.Array) else math.log(rate)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        decays = jnp.floor(jnp.maximum(_steps(count), 0) / size)
        return init * jnp.exp(decays * log_rate)

    return schedule


def warmup_cosine(
    base_lr: float,
    total_steps: int,
    warmup_ratio: float = 0.06,
    min_lr_ratio: float = 0.01,
) -> Schedule:
    """Our production schedule: linear warmup from 0, cosine decay to a floor at the end.

    With ``W = ceil(warmup_ratio * total_steps)`` warmup steps, ``T = total_steps`` and
    ``low = base_lr * min_lr_ratio``, the value at step ``s`` is

    - ``base_lr * s / W`` for ``s < W`` (0 at step 0),
    - ``low + (base_lr - low) * (1 + cos(pi * (s - W) / (T - W))) / 2`` for ``W <= s < T``,
    - ``low`` for ``s >= T``.

    ``warmup_ratio=0`` means no warmup (``base_lr`` at step 0); if the warmup covers every
    step (``W == T``) the value drops to ``low`` at step ``T``. Rounding noise in the
    product is ignored when taking the ceiling, so ``0.07 * 100`` gives 7 warmup steps, not 8.

    Args:
        base_lr: peak learning rate, reached at step ``W``; a finite number > 0.
        total_steps: step at which ``low`` is reached; an integer > 0.
        warmup_ratio: fraction of ``total_steps`` spent warming up; a number in [0, 1).
        min_lr_ratio: final learning rate as a fraction of ``base_lr``; a number in [0, 1].

    Returns:
        A function mapping the step count to the learning rate, as float32.

    Raises:
        ValueError: if an argument is out of range, e.g.
            ``warmup_cosine: total_steps must be an integer > 0, got 0``.

    Example:
        >>> schedule = warmup_cosine(1.0, total_steps=110, warmup_ratio=0.09, min_lr_ratio=0.1)
        >>> [round(float(schedule(t)), 4) for t in (0, 5, 10, 60, 110, 500)]
        [0.0, 0.5, 1.0, 0.55, 0.1, 0.1]
    """
    fn = "warmup_cosine"
    check_positive(fn, "base_lr", base_lr)
    total = check_whole_number(fn, "total_steps", total_steps, positive=True)
    check_in_range(fn, "warmup_ratio", warmup_ratio, 0.0, 1.0)
    check_in_range(fn, "min_lr_ratio", min_lr_ratio, 0.0, 1.0, include_high=True)
    base = _scalar(base_lr)
    low = base * _scalar(min_lr_ratio)
    exact = _concrete(fn, "warmup_ratio", warmup_ratio) * total
    nearest = round(exact)
    warmup = nearest if math.isclose(exact, nearest, rel_tol=1e-9) else math.ceil(exact)
    warmup_len, decay_len = max(warmup, 1), max(total - warmup, 1)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        s = _steps(count)
        rise = base * (s / warmup_len)
        # (1 + cos(pi * progress)) / 2 written as sin(pi * (1 - progress) / 2) ** 2: the same
        # value, but without the cancellation near the end, where it is small.
        left = jnp.clip((total - s) / decay_len, 0, 1)
        fall = low + (base - low) * jnp.sin(jnp.pi / 2 * left) ** 2
        return jnp.where(s < warmup, rise, jnp.where(s >= total, low, fall))

    return schedule


def warmup_stable_decay(
    peak_value: jax.typing.ArrayLike,
    warmup_steps: int,
    decay_steps: int,
    total_steps: int,
    end_value: jax.typing.ArrayLike = 0.0,
    decay: str = "linear",
) -> Schedule:
    """Warmup-stable-decay (WSD): linear warmup, a long flat stage, a short final decay.

    With ``W = warmup_steps``, ``D = decay_steps``, ``T = total_steps`` and the decay's
    start ``S = T - D``, the value at step ``t`` is

    - ``peak_value * t / W`` for ``t < W`` (0 at step 0);
    - ``peak_value`` for ``W <= t < S``;
    - ``end_value + (peak_value - end_value) * f((t - S) / D)`` for ``S <= t < T``, with
      ``f(p) = 1 - p`` (``decay="linear"``), ``(1 + cos(pi * p)) / 2`` (``"cosine"``) or
      ``1 - sqrt(p)`` (``"1-sqrt"``);
    - ``end_value`` for ``t >= T``.

    The flat stage does not depend on the run's length, so a run can be extended (or
    checkpoints branched into decays) without redoing it; only the last ``D`` steps need
    to know where the run ends. ``W = 0`` starts at the peak; ``D = 0`` drops to
    ``end_value`` at ``T``. Negative steps count as step 0. optax has no WSD schedule.

    Args:
        peak_value: value of the flat stage; a finite number.
        warmup_steps: length of the warmup; an integer >= 0.
        decay_steps: length of the final decay; an integer >= 0.
        total_steps: step at which ``end_value`` is reached; an integer > 0, at least
            ``warmup_steps + decay_steps``.
        end_value: value at ``total_steps`` and after; a finite number.
        decay: shape of the decay: ``"linear"``, ``"cosine"`` or ``"1-sqrt"``.

    Returns:
        A function mapping the step count to the value, as float32.

    Raises:
        ValueError: if an argument is out of range, e.g. ``warmup_stable_decay:
            warmup_steps + decay_steps must be <= total_steps (= 100), got 20 + 90 = 110``.

    Example:
        >>> schedule = warmup_stable_decay(1.0, warmup_steps=10, decay_steps=20, total_steps=100)
        >>> [round(float(schedule(t)), 4) for t in (0, 5, 10, 50, 80, 90, 100, 200)]
        [0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.0, 0.0]

    Reference: Hu et al., "MiniCPM: Unveiling the Potential of Small Language Models with
    Scalable Training Strategies", 2024; Hägele et al., "Scaling Laws and Compute-Optimal
    Training Beyond Fixed Training Durations", 2024 (the ``1-sqrt`` decay).
    """
    fn = "warmup_stable_decay"
    _check_finite(fn, "peak_value", peak_value)
    warmup = check_whole_number(fn, "warmup_steps", warmup_steps, positive=False)
    decay_len = check_whole_number(fn, "decay_steps", decay_steps, positive=False)
    total = check_whole_number(fn, "total_steps", total_steps, positive=True)
    if warmup + decay_len > total:
        raise ValueError(
            f"{fn}: warmup_steps + decay_steps must be <= total_steps (= {total}), "
            f"got {warmup} + {decay_len} = {warmup + decay_len}"
        )
    _check_finite(fn, "end_value", end_value)
    check_one_of(fn, "decay", decay, WSD_DECAYS)
    peak, end = _scalar(peak_value), _scalar(end_value)
    start = total - decay_len

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = jnp.maximum(_steps(count), 0)
        rise = peak * (t / max(warmup, 1))
        # Written with the remaining fraction r = 1 - p = (T - t) / D, so that the value
        # has no cancellation near the end, where it is small.
        remaining = jnp.clip((total - t) / max(decay_len, 1), 0, 1)
        if decay == "linear":
            shape = remaining
        elif decay == "cosine":
            shape = jnp.sin(jnp.pi / 2 * remaining) ** 2  # = (1 + cos(pi * p)) / 2
        else:
            shape = remaining / (1 + jnp.sqrt(1 - remaining))  # = 1 - sqrt(p)
        fall = end + (peak - end) * shape
        value = jnp.where(t < start, peak, jnp.where(t < total, fall, end))
        return jnp.where(t < warmup, rise, value).astype(jnp.float32)

    return schedule
