"""The files of one checkpoint step beside its arrays: the metadata and the manifest.

A checkpoint is the step directory ``<directory>/<step>/`` with three Orbax items:

* ``state/``: the arrays of the canonical state, stored under the state's own tree paths
  (``params/dense/kernel``, ``opt_state/1/0/mu/dense/kernel``, ...; see
  :mod:`~scirs2_optim_jax.checkpoint.storage`), so plain Orbax reads them as a nested tree;
* ``meta/meta.json``: the step metadata, a JSON object with ``format``, ``step``, ``tree``
  (the description of the tree, :mod:`~scirs2_optim_jax.checkpoint.treespec`), ``arrays``
  (where each leaf is stored: its storage path as a list of keys, in leaf order),
  ``metrics`` (name -> number, or null) and ``config`` (the run config, plain JSON);
* ``manifest/manifest.json``: the checksums of the arrays and of the metadata, and the
  name of the hash that made them
  (:mod:`~scirs2_optim_jax.checkpoint.integrity` builds and checks them).

Steps of the first format (:data:`FORMAT_V1`) stored every leaf under a flat name
(``leaf_00000``, ``leaf_00001``, ... in the order of ``jax.tree.leaves``) and have no
``arrays`` entry; they still restore.

This module checks what a save puts into the metadata, builds it, and reads the JSON files
back, raising :class:`~scirs2_optim_jax.checkpoint.CheckpointCorruptError` for a file that is
missing, unreadable or not a JSON object.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scirs2_optim_jax.checkpoint import treespec as ts
from scirs2_optim_jax.checkpoint.errors import CheckpointCorruptError, short_reason

__all__ = [
    "FORMAT",
    "FORMAT_V1",
    "MANIFEST",
    "MANIFEST_FILE",
    "META",
    "META_FILE",
    "STATE",
    "build_meta",
    "check_config",
    "check_metrics",
    "leaf_name",
    "manifest_file",
    "meta_file",
    "read_description",
    "read_json",
    "read_storage_paths",
    "storage_name",
]

FORMAT = "scirs2_optim_jax.checkpoint/2"
FORMAT_V1 = "scirs2_optim_jax.checkpoint/1"
STATE, META, MANIFEST = "state", "meta", "manifest"
META_FILE, MANIFEST_FILE = "meta.json", "manifest.json"


def leaf_name(index: int) -> str:
    """The flat storage name of the ``index``-th leaf of the state (:data:`FORMAT_V1`, and
    states whose tree paths cannot name their arrays).

    Example:
        >>> leaf_name(7)
        'leaf_00007'
    """
    return f"leaf_{index:05d}"


def storage_name(path: tuple[str | int, ...] | list[str | int]) -> str:
    """The name of the array stored at ``path`` in the manifest: its keys joined by ``/``.

    Example:
        >>> storage_name(("opt_state", 1, 0, "mu", "w"))
        'opt_state/1/0/mu/w'
    """
    return "/".join(str(key) for key in path)


def meta_file(step_dir: Path) -> Path:
    """The metadata file of the step directory ``step_dir``.

    Example:
        >>> meta_file(Path("/ckpt/12")).as_posix()
        '/ckpt/12/meta/meta.json'
    """
    return step_dir / META / META_FILE


def manifest_file(step_dir: Path) -> Path:
    """The manifest file of the step directory ``step_dir``.

    Example:
        >>> manifest_file(Path("/ckpt/12")).as_posix()
        '/ckpt/12/manifest/manifest.json'
    """
    return step_dir / MANIFEST / MANIFEST_FILE


def check_metrics(fn: str, metrics: Any) -> dict[str, float] | None:
    """Returns ``metrics`` as a dict of name -> finite float (None stays None).

    Raises:
        TypeError, ValueError: naming ``fn`` and the first bad key or value.

    Example:
        >>> import numpy as np
        >>> check_metrics("save", {"loss": np.float32(0.5), "step": 3})
        {'loss': 0.5, 'step': 3.0}
    """
    if metrics is None:
        return None
    if not isinstance(metrics, Mapping):
        raise TypeError(f"{fn}: metrics must be a mapping of name -> number, got {metrics!r}")
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(name, str):
            raise TypeError(f"{fn}: metrics keys must be strings, got {name!r}")
        if isinstance(value, bool) or np.ndim(value) != 0:
            raise TypeError(f"{fn}: metrics[{name!r}] must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{fn}: metrics[{name!r}] must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{fn}: metrics[{name!r}] must be finite, got {value!r}")
        out[name] = number
    return out


def check_config(fn: str, config: Any) -> None:
    """Raises unless ``config`` is plain JSON data (dict, list, str, finite number, bool, None).

    Example:
        >>> check_config("save", {"lr": 1e-3, "layers": [64, 64]})
        >>> check_config("save", {"lr": float("nan")})
        Traceback (most recent call last):
        ...
        ValueError: save: config['lr'] must be a finite number, got nan
    """
    _check_json(fn, "config", config, "")


def _check_json(fn: str, name: str, value: Any, path: str) -> None:
    """Raises TypeError naming the first part of ``value`` that is not plain JSON."""
    where = f"{name}{path}"
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{fn}: {where} must be a finite number, got {value!r}")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(fn, name, item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{fn}: {where} has a non-string key {key!r}")
            _check_json(fn, name, item, f"{path}[{key!r}]")
        return
    raise TypeError(
        f"{fn}: {where} must be JSON data (dict, list, str, number, bool, None), "
        f"got {type(value).__name__} {value!r}"
    )


def build_meta(
    step: int,
    description: ts.TreeDescription,
    metrics: dict[str, float] | None,
    config: Any,
    paths: list[tuple[str | int, ...]],
) -> dict[str, Any]:
    """Returns the metadata saved as ``meta/meta.json`` of step ``step``.

    Args:
        step: the step.
        description: the description of the saved tree.
        metrics: the checked metrics snapshot, or None.
        config: the checked run config.
        paths: where each leaf is stored in the ``state`` item, in leaf order.

    Example:
        >>> meta = build_meta(3, ts.describe_tree({"w": 1.0}), {"loss": 0.5}, None, [("w",)])
        >>> meta["format"], meta["step"], meta["arrays"], meta["metrics"]
        ('scirs2_optim_jax.checkpoint/2', 3, [['w']], {'loss': 0.5})
    """
    return {
        "format": FORMAT,
        "step": step,
        "tree": description.to_json(),
        "arrays": [list(path) for path in paths],
        "metrics": metrics,
        "config": config,
    }


def read_json(step: int, file: Path) -> dict[str, Any]:
    """Reads the JSON object in ``file`` of step ``step``.

    Raises:
        CheckpointCorruptError: the file is missing, unreadable, not JSON or not an object.

    Example:
        >>> read_json(4, Path("/nonexistent/4/meta/meta.json"))
        Traceback (most recent call last):
        ...
        scirs2_optim_jax.checkpoint.errors.CheckpointCorruptError: checkpoint step 4 is \
corrupt: /nonexistent/4/meta/meta.json: missing
    """
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointCorruptError(step, str(file), "missing") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointCorruptError(step, str(file), short_reason(err)) from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise CheckpointCorruptError(step, str(file), f"not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointCorruptError(step, str(file), "not a JSON object")
    return data


def read_description(step: int, file: Path, meta: dict[str, Any]) -> ts.TreeDescription:
    """The tree description in the metadata ``meta`` read from ``file`` of step ``step``.

    Raises:
        CheckpointCorruptError: the metadata has no valid description.

    Example:
        >>> meta = build_meta(0, ts.describe_tree({"w": 1.0}), None, None, [("w",)])
        >>> [leaf.path for leaf in read_description(0, Path("meta.json"), meta).leaves]
        ["['w']"]
    """
    try:
        return ts.TreeDescription.from_json(meta["tree"])
    except (KeyError, ValueError) as err:
        raise CheckpointCorruptError(step, str(file), str(err)) from None


def read_storage_paths(
    step: int, file: Path, meta: dict[str, Any], num_leaves: int
) -> list[tuple[str | int, ...]]:
    """Where each of the ``num_leaves`` leaves is stored, from the metadata ``meta``.

    A :data:`FORMAT_V1` step has flat names (:func:`leaf_name`); a later one lists the
    storage path of every leaf, a non-empty list of string keys and integer indices.

    Raises:
        CheckpointCorruptError: the list is missing, malformed, of another length, or names
            two leaves alike.

    Example:
        >>> meta = build_meta(0, ts.describe_tree({"w": 1.0}), None, None, [("w",)])
        >>> read_storage_paths(0, Path("meta.json"), meta, 1)
        [('w',)]
        >>> read_storage_paths(0, Path("meta.json"), {"format": FORMAT_V1}, 2)
        [('leaf_00000',), ('leaf_00001',)]
    """
    if meta.get("format") == FORMAT_V1:
        return [(leaf_name(i),) for i in range(num_leaves)]
    paths = meta.get("arrays")
    if not isinstance(paths, list) or len(paths) != num_leaves:
        raise CheckpointCorruptError(
            step, str(file), f"expected the storage paths of {num_leaves} arrays"
        )
    out: list[tuple[str | int, ...]] = []
    for path in paths:
        valid = (
            isinstance(path, list)
            and path
            and all(
                isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool))
                for key in path
            )
        )
        if not valid:
            raise CheckpointCorruptError(step, str(file), f"malformed storage path {path!r}")
        out.append(tuple(path))
    if len({storage_name(path) for path in out}) != len(out):
        raise CheckpointCorruptError(step, str(file), "two arrays share a storage path")
    return out
