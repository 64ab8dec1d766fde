"""Typed, validated config sections: the machinery behind :mod:`scirs2_optim_jax.config.schema`.

A section is a frozen dataclass deriving from :class:`Section`. Each field's annotation is
its type (``bool``, ``int``, ``float``, ``str``, a ``Literal`` of choices, or one of those
``| None``); :func:`setting` attaches its documentation, its range check, and whether it is
a byte count (accepts ``"16GiB"``) or a secret (never printed). On construction every value
is converted to the field's type (strings from the environment included) and checked, and a
bad one raises naming the field and the value::

    ValueError: config: optimizer.learning_rate must be a finite number > 0, got -0.1

A secret's value is never echoed: not in errors, ``repr`` or :meth:`Section.to_dict` with
``redact=True``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

__all__ = [
    "REDACTED",
    "Section",
    "at_least",
    "in_range",
    "parse_bytes",
    "positive",
    "setting",
]

REDACTED = "<redacted>"

Check = Callable[[Any], str | None]  # returns what was expected when the value is bad

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NONE = {"", "none", "null"}
_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_BYTES_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str) -> int:
    """Parses a byte count such as ``"512"``, ``"1.5GB"`` or ``"16GiB"`` (case-insensitive).

    Args:
        text: a number, optionally followed by B, KB, MB, GB, TB (powers of 1000) or KiB,
            MiB, GiB, TiB (powers of 1024).

    Returns:
        The number of bytes, rounded down to an integer.

    Raises:
        ValueError: if ``text`` is not such a count.

    Example:
        >>> parse_bytes("16GiB"), parse_bytes("1.5 GB"), parse_bytes("4096")
        (17179869184, 1500000000, 4096)
    """
    match = _BYTES_RE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _BYTE_UNITS:
        raise ValueError(f"expected a byte count such as 4096, 1.5GB or 16GiB, got {text!r}")
    return int(float(match.group(1)) * _BYTE_UNITS[unit])


def positive(x: Any) -> str | None:
    """Check: a finite number > 0."""
    return None if math.isfinite(x) and x > 0 else "a finite number > 0"


def at_least(minimum: int) -> Check:
    """Check: a number >= ``minimum``."""

    def check(x: Any) -> str | None:
        return None if x >= minimum else f"an integer >= {minimum}"

    return check


def in_range(
    low: float, high: float, *, include_low: bool = True, include_high: bool = False
) -> Check:
    """Check: a number in the interval from ``low`` to ``high``."""
    interval = f"{'[' if include_low else '('}{low}, {high}{']' if include_high else ')'}"

    def check(x: Any) -> str | None:
        above = x >= low if include_low else x > low
        below = x <= high if include_high else x < high
        return None if math.isfinite(x) and above and below else f"a number in {interval}"

    return check


def setting(
    default: Any,
    doc: str,
    *,
    check: Check | None = None,
    secret: bool = False,
    byte_count: bool = False,
    normalize: Callable[[Any], Any] | None = None,
) -> Any:
    """Declares a section field: its default, documentation and validation.

    Args:
        default: the default value.
        doc: one line for the documentation and error messages.
        check: a range check applied to non-None values after type conversion.
        secret: never print the value (``repr``, errors, redacted views).
        byte_count: an integer that may be written as ``"16GiB"``.
        normalize: applied to a value before conversion, e.g. to accept another spelling
            of a choice (it returns values it does not know unchanged).

    Returns:
        A ``dataclasses.field``.
    """
    metadata = {
        "doc": doc,
        "check": check,
        "secret": secret,
        "byte_count": byte_count,
        "normalize": normalize,
    }
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


def _show(value: Any, secret: bool) -> str:
    return REDACTED if secret and value is not None else repr(value)


def _describe_type(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if tp is bool:
        return "a bool (true/false)"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    return str(tp)


def _split_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _convert_scalar(value: Any, tp: Any, byte_count: bool) -> Any:
    """Converts ``value`` to ``tp``; raises ``_Mismatch`` when it cannot."""
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if value == choice and type(value) is type(choice):
                return choice
            if isinstance(value, str) and value.strip().lower() == str(choice).lower():
                return choice
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _Mismatch
    if isinstance(value, bool):
        raise _Mismatch
    if tp is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.strip().replace("_", "")
            if re.fullmatch(r"[+-]?[0-9]+", text):
                return int(text)
            if byte_count:
                try:
                    return parse_bytes(text)
                except ValueError:
                    raise _Mismatch from None
            try:
                number = float(text)
            except ValueError:
                raise _Mismatch from None
            if number.is_integer():
                return int(number)
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 (PyYAML) reads 1e-3 as a string; accept numbers written as text.
            try:
                return float(value.strip())
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    raise TypeError(f"unsupported config field type {tp!r}")


class _Mismatch(Exception):
    pass


def convert(path: str, value: Any, tp: Any, field: dataclasses.Field) -> Any:
    """Converts and checks one field value; raises naming ``path`` and the value."""
    secret = field.metadata.get("secret", False)
    byte_count = field.metadata.get("byte_count", False)
    normalize = field.metadata.get("normalize")
    if normalize is not None:
        value = normalize(value)
    inner, optional = _split_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in _NONE):
        if optional:
            return None
        raise TypeError(f"config: {path} must be {_describe_type(inner)}, got None")
    try:
        result = _convert_scalar(value, inner, byte_count)
    except _Mismatch:
        expected = _describe_type(inner)
        if byte_count:
            expected = "a byte count (an integer, or text such as 16GiB)"
        if optional:
            expected += " or none"
        error = (
            ValueError
            if isinstance(value, str) or typing.get_origin(inner) is Literal
            else TypeError
        )
        raise error(f"config: {path} must be {expected}, got {_show(value, secret)}") from None
    check = field.metadata.get("check")
    if check is not None:
        expected = check(result)
        if expected is not None:
            raise ValueError(f"config: {path} must be {expected}, got {_show(value, secret)}")
    return result


class Section:
    """Base of the config sections: converts and validates every field on construction.

    Subclasses are frozen dataclasses with a ``SECTION`` class variable (their key in the
    file, ``""`` for the top level).
    """

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        prefix = f"{self.SECTION}." if self.SECTION else ""
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            tp = hints[field.name]
            if isinstance(tp, type) and issubclass(tp, Section):
                if not isinstance(value, tp):
                    raise TypeError(
                        f"config: {field.name} must be a {tp.__name__}, got {type(value).__name__}"
                    )
                continue
            object.__setattr__(self, field.name, convert(prefix + field.name, value, tp, field))
        self._check()

    def _check(self) -> None:
        """Cross-field checks; overridden by sections that need them."""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, base: Section | None = None) -> Section:
        """Builds the section from a mapping, over ``base`` (default: the field defaults).

        Raises:
            ValueError: for an unknown key (naming it and the known ones) or a bad value.
        """
        if not isinstance(data, Mapping):
            where = cls.SECTION or "the top level"
            raise TypeError(f"config: {where} must be a table/mapping, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in names:
                prefix = f"{cls.SECTION}." if cls.SECTION else ""
                raise ValueError(
                    f"config: unknown field {prefix}{key!s} (known: {', '.join(sorted(names))})"
                )
            tp = hints[key]
            if isinstance(tp, type) and issubclass(tp, Section):
                sub_base = getattr(base, key) if base is not None else None
                values[key] = tp.from_mapping(value, base=sub_base)
            else:
                values[key] = value
        if base is not None:
            return dataclasses.replace(base, **values)  # type: ignore[type-var]
        return cls(**values)

    def to_dict(self, *, redact: bool = True) -> dict[str, Any]:
        """The section as plain data (JSON/TOML/YAML-ready); secrets redacted by default.

        Args:
            redact: replace each set secret by ``"<redacted>"``.

        Returns:
            A dict of the field values, nested for sub-sections.
        """
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if isinstance(value, Section):
                out[field.name] = value.to_dict(redact=redact)
            elif redact and field.metadata.get("secret") and value is not None:
                out[field.name] = REDACTED
            else:
                out[field.name] = value
        return out

    def secret_paths(self) -> list[str]:
        """Dotted paths of the secret fields, set or not."""
        paths = []
        prefix = f"{self.SECTION}." if self.SECTION else ""
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if isinstance(value, Section):
                paths.extend(value.secret_paths())
            elif field.metadata.get("secret"):
                paths.append(prefix + field.name)
        return paths


def field_docs(cls: type[Section]) -> list[tuple[str, str, Any, str]]:
    """``(dotted path, type, default, doc)`` for every field of ``cls``, depth first."""
    hints = typing.get_type_hints(cls)
    rows = []
    prefix = f"{cls.SECTION}." if cls.SECTION else ""
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        tp = hints[field.name]
        if isinstance(tp, type) and issubclass(tp, Section):
            rows.extend(field_docs(tp))
            continue
        default = field.default
        if field.metadata.get("secret") and default is not None:
            default = REDACTED
        rows.append(
            (
                prefix + field.name,
                _describe_type(_split_optional(tp)[0]),
                default,
                field.metadata.get("doc", ""),
            )
        )
    return rows
