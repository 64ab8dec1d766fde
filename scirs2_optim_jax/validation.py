"""Argument and tree validation done at the boundary, before anything is traced.

Factories call the ``check_*`` functions on their hyperparameters; every message names the
function, the argument, the value and what was expected, e.g.
``ValueError: adamw: learning_rate must be a finite number >= 0 or a schedule, got -0.1``.

Values that are JAX tracers (hyperparameters injected by ``optax.inject_hyperparams`` inside
a jitted step) cannot be inspected and are accepted as they are: they were validated when
the hyperparameter state was created.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, overload

import jax
import numpy as np

__all__ = [
    "check_bool",
    "check_callable",
    "check_dtype",
    "check_finite_or_schedule",
    "check_in_range",
    "check_int",
    "check_learning_rate",
    "check_mask",
    "check_non_negative",
    "check_one_of",
    "check_positive",
    "check_tree_matches",
    "check_whole_number",
    "reraise_with_context",
]


def _concrete_scalar(fn: str, name: str, value: Any) -> float | None:
    """Returns ``value`` as a Python float, or None when it is traced and cannot be read."""
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be a number, got the bool {value!r}")
    if isinstance(value, (int, float, np.number)):
        return float(value)
    if isinstance(value, (np.ndarray, jax.Array)):
        if np.ndim(value) != 0:
            raise ValueError(
                f"{fn}: {name} must be a scalar, got an array of shape {np.shape(value)}"
            )
        # jax.dtypes knows bfloat16 and the other ml_dtypes as numbers; NumPy does not.
        if not jax.dtypes.issubdtype(np.asarray(value).dtype, np.number):
            raise TypeError(f"{fn}: {name} must be a number, got dtype {np.asarray(value).dtype}")
        return float(np.asarray(value))
    raise TypeError(f"{fn}: {name} must be a number, got {type(value).__name__} {value!r}")


def _finite(fn: str, name: str, value: Any, expected: str) -> float | None:
    x = _concrete_scalar(fn, name, value)
    if x is not None and not math.isfinite(x):
        raise ValueError(f"{fn}: {name} must be {expected}, got {value!r}")
    return x


def check_positive(fn: str, name: str, value: Any) -> None:
    """Raises unless ``value`` is a finite number > 0."""
    expected = "a finite number > 0"
    x = _finite(fn, name, value, expected)
    if x is not None and not x > 0:
        raise ValueError(f"{fn}: {name} must be {expected}, got {value!r}")


def check_non_negative(fn: str, name: str, value: Any) -> None:
    """Raises unless ``value`` is a finite number >= 0."""
    expected = "a finite number >= 0"
    x = _finite(fn, name, value, expected)
    if x is not None and not x >= 0:
        raise ValueError(f"{fn}: {name} must be {expected}, got {value!r}")


def check_in_range(
    fn: str,
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    include_low: bool = True,
    include_high: bool = False,
) -> None:
    """Raises unless ``value`` lies in the interval from ``low`` to ``high``."""
    interval = f"{'[' if include_low else '('}{low}, {high}{']' if include_high else ')'}"
    expected = f"a number in {interval}"
    x = _finite(fn, name, value, expected)
    if x is None:
        return
    above = x >= low if include_low else x > low
    below = x <= high if include_high else x < high
    if not (above and below):
        raise ValueError(f"{fn}: {name} must be {expected}, got {value!r}")


def check_finite_or_schedule(fn: str, name: str, value: Any) -> None:
    """Raises unless ``value`` is a finite number (of either sign) or a callable schedule.

    Example:
        >>> check_finite_or_schedule("f", "decay", -0.5)
        >>> check_finite_or_schedule("f", "decay", float("nan"))
        Traceback (most recent call last):
        ...
        ValueError: f: decay must be a finite number or a schedule (callable), got nan
    """
    if callable(value):
        return
    expected = "a finite number or a schedule (callable)"
    try:
        _finite(fn, name, value, expected)
    except TypeError:
        raise TypeError(f"{fn}: {name} must be {expected}, got {value!r}") from None


def check_learning_rate(fn: str, name: str, value: Any) -> None:
    """Raises unless ``value`` is a finite number >= 0 or a callable schedule."""
    if callable(value):
        return
    expected = "a finite number >= 0 or a schedule (callable)"
    try:
        x = _finite(fn, name, value, expected)
    except TypeError:
        raise TypeError(f"{fn}: {name} must be {expected}, got {value!r}") from None
    if x is not None and not x >= 0:
        raise ValueError(f"{fn}: {name} must be {expected}, got {value!r}")


def check_schedule_or_non_negative(fn: str, name: str, value: Any) -> None:
    """Like :func:`check_learning_rate`; used for weight decay, which may also be scheduled."""
    check_learning_rate(fn, name, value)


def check_bool(fn: str, name: str, value: Any) -> None:
    """Raises unless ``value`` is a Python bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be a bool, got {value!r}")


def check_dtype(fn: str, name: str, value: Any, *, allow_complex: bool = False) -> Any:
    """Returns ``value`` as a canonical floating ``jnp.dtype`` (None stays None).

    With ``allow_complex``, complex dtypes are accepted too (optax accepts them for the
    momentum of complex parameters: ``mu_dtype``, ``accumulator_dtype``).

    Example:
        >>> check_dtype("scale_by_adam", "mu_dtype", "complex64", allow_complex=True)
        dtype('complex64')
        >>> check_dtype("cast", "dtype", "int32")
        Traceback (most recent call last):
        ...
        ValueError: cast: dtype must be a floating dtype or None, got 'int32'
    """
    if value is None:
        return None
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        # optax.inject_hyperparams takes a dtype class (jnp.float32, callable) for a schedule
        # and passes jnp.float32(count) on: its dtype is the one meant, as optax reads it.
        value = value.dtype
    try:
        dtype = jax.dtypes.canonicalize_dtype(value)
    except TypeError:
        raise TypeError(f"{fn}: {name} must be a dtype or None, got {value!r}") from None
    if allow_complex and jax.dtypes.issubdtype(dtype, np.complexfloating):
        return dtype
    if not jax.dtypes.issubdtype(dtype, np.floating):
        kind = "floating or complex" if allow_complex else "floating"
        raise ValueError(f"{fn}: {name} must be a {kind} dtype or None, got {value!r}")
    return dtype


def check_mask(fn: str, name: str, value: Any) -> None:
    """Raises unless ``value`` is None, a bool, a callable, or a pytree (of bools)."""
    if value is None or isinstance(value, bool) or callable(value):
        return
    for path, leaf in jax.tree_util.tree_flatten_with_path(value)[0]:
        if not isinstance(leaf, (bool, np.bool_)):
            raise TypeError(
                f"{fn}: {name} must be a pytree of bools or a callable, got "
                f"{type(leaf).__name__} at {jax.tree_util.keystr(path) or '<root>'}"
            )


def _describe(leaf: Any) -> str:
    shape = getattr(leaf, "shape", None)
    dtype = getattr(leaf, "dtype", None)
    if shape is None:
        return type(leaf).__name__
    return f"{dtype}{list(shape)}"


def check_tree_matches(
    fn: str, tree: Any, reference: Any, *, tree_name: str = "updates", ref_name: str = "state"
) -> None:
    """Raises ``ValueError`` naming the first tree path where ``tree`` differs from ``reference``.

    Compares structure and leaf shapes (not dtypes: gradients may be bf16 while the state is
    fp32). Runs at trace time on static information only, so it costs nothing in the step.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    ref_leaves, ref_treedef = jax.tree_util.tree_flatten_with_path(reference)
    if treedef == ref_treedef:
        for (path, leaf), (_, ref) in zip(leaves, ref_leaves, strict=True):
            if np.shape(leaf) != np.shape(ref):
                raise ValueError(
                    f"{fn}: {tree_name} do not match the {ref_name}: at "
                    f"{jax.tree_util.keystr(path) or '<root>'} got {_describe(leaf)}, "
                    f"expected {_describe(ref)}"
                )
        return
    paths = [jax.tree_util.keystr(p) for p, _ in leaves]
    ref_paths = [jax.tree_util.keystr(p) for p, _ in ref_leaves]
    # Name what is missing or extra by path, not by position: a missing key shifts every
    # later leaf, so the first positional difference is usually a leaf that is fine.
    missing = [path for path in ref_paths if path not in set(paths)]
    extra = [path for path in paths if path not in set(ref_paths)]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{_listed(missing)} missing (the {ref_name} has it)")
        if extra:
            parts.append(f"{_listed(extra)} not in the {ref_name}")
        raise ValueError(
            f"{fn}: {tree_name} do not match the {ref_name}: {'; '.join(parts)} "
            f"({len(paths)} leaves vs {len(ref_paths)})"
        )
    raise ValueError(
        f"{fn}: {tree_name} do not match the {ref_name}: same leaf paths but different "
        f"container types ({treedef} vs {ref_treedef})"
    )


def _listed(paths: list[str], limit: int = 3) -> str:
    shown = ", ".join(path or "<root>" for path in paths[:limit])
    more = len(paths) - limit
    return shown + (f" and {more} more" if more > 0 else "")


@contextlib.contextmanager
def reraise_with_context(fn: str) -> Iterator[None]:
    """Prefixes validation errors raised by inner factories with the public alias's name."""
    try:
        yield
    except (ValueError, TypeError) as err:
        raise type(err)(f"{fn}: {err}") from None


def resolve_mask(mask: Any, params: Any) -> Any:
    """Returns the mask as a pytree: calls it with ``params`` when it is a callable."""
    return mask(params) if callable(mask) else mask


ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], jax.Array]


@overload
def check_int(
    fn: str,
    name: str,
    value: Any,
    minimum: int | None = None,
    maximum: int | None = None,
    *,
    allow_none: Literal[False] = False,
) -> int: ...


@overload
def check_int(
    fn: str,
    name: str,
    value: Any,
    minimum: int | None = None,
    maximum: int | None = None,
    *,
    allow_none: bool,
) -> int | None: ...


def check_int(
    fn: str,
    name: str,
    value: Any,
    minimum: int | None = None,
    maximum: int | None = None,
    *,
    allow_none: bool = False,
) -> int | None:
    """Returns ``value`` as a Python int, raising unless it is an integer in range.

    Accepts Python and NumPy integers (anything with ``__index__``), not bools or floats.

    Args:
        fn, name: the function and argument named in the error.
        value: the value to check.
        minimum, maximum: inclusive bounds; None: unbounded on that side.
        allow_none: None is accepted (and returned).

    Returns:
        ``int(value)``, or None when ``value`` is None and ``allow_none``.

    Raises:
        TypeError: ``value`` is not an integer (``f"{fn}: {name} must be an integer, got ..."``).
        ValueError: it is out of range (``"... must be an integer >= 1, got 0"``).

    Example:
        >>> check_int("f", "steps", np.int64(3), 1)
        3
        >>> check_int("f", "steps", 0, 1)
        Traceback (most recent call last):
        ...
        ValueError: f: steps must be an integer >= 1, got 0
    """
    if value is None and allow_none:
        return None
    optional = " or None" if allow_none else ""
    if isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be an integer{optional}, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{fn}: {name} must be an integer{optional}, got {value!r}") from None
    low_ok = minimum is None or number >= minimum
    high_ok = maximum is None or number <= maximum
    if not (low_ok and high_ok):
        if minimum is not None and maximum is not None:
            bound = f"in [{minimum}, {maximum}]"
        elif minimum is not None:
            bound = f">= {minimum}"
        else:
            bound = f"<= {maximum}"
        raise ValueError(f"{fn}: {name} must be an integer {bound}{optional}, got {value!r}")
    return number


def check_one_of(fn: str, name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raises ``ValueError`` unless ``value`` is one of ``choices`` (listed in the message).

    Example:
        >>> check_one_of("f", "mode", "fp8", ("fp32", "bf16"))
        Traceback (most recent call last):
        ...
        ValueError: f: mode must be one of fp32, bf16, got 'fp8'
    """
    if isinstance(value, bool) or value not in choices:
        raise ValueError(
            f"{fn}: {name} must be one of {', '.join(map(str, choices))}, got {value!r}"
        )


def check_callable(fn: str, name: str, value: Any, *, allow_none: bool = False) -> None:
    """Raises ``TypeError`` unless ``value`` is callable (or None, with ``allow_none``).

    Example:
        >>> check_callable("f", "on_log", print)
        >>> check_callable("f", "on_log", 3, allow_none=True)
        Traceback (most recent call last):
        ...
        TypeError: f: on_log must be a callable or None, got 3
    """
    if value is None and allow_none:
        return
    if not callable(value):
        expected = "a callable or None" if allow_none else "a callable"
        raise TypeError(f"{fn}: {name} must be {expected}, got {value!r}")


def check_whole_number(
    fn: str, name: str, value: Any, *, positive: bool, signed: bool = False
) -> int:
    """Returns ``value`` as an int, raising unless it is an integer > 0 (or >= 0).

    Unlike :func:`check_int`, whole floats (``1000.0``) are accepted, as optax's schedules
    accept them for step counts; tracers are refused (a step count shapes the schedule).
    With ``signed``, any integer is accepted (``positive`` is then ignored): optax's
    schedules document some step counts ``<= 0`` as "no transition".

    Example:
        >>> check_whole_number("f", "transition_steps", 1000.0, positive=True)
        1000
        >>> check_whole_number("f", "transition_steps", -1, positive=False, signed=True)
        -1
    """
    expected = "an integer" if signed else "an integer > 0" if positive else "an integer >= 0"
    if isinstance(value, (bool, jax.core.Tracer)):
        raise TypeError(f"{fn}: {name} must be {expected}, got {type(value).__name__} {value!r}")
    if isinstance(value, (float, np.floating)):
        if not (math.isfinite(value) and float(value).is_integer()):
            raise ValueError(f"{fn}: {name} must be {expected}, got {value!r}")
        number = int(value)
    else:
        try:
            number = operator.index(value)
        except TypeError:
            raise TypeError(
                f"{fn}: {name} must be {expected}, got {type(value).__name__} {value!r}"
            ) from None
    if not signed and number < (1 if positive else 0):
        raise ValueError(f"{fn}: {name} must be {expected}, got {value!r}")
    return number
