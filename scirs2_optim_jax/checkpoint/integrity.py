"""Verification: proving that a checkpoint step is the one that was written.

Every committed checkpoint carries a manifest: the sha256 of each array's canonical bytes
(a header with its dtype and shape, then its C-ordered little-endian data) and the sha256 of
the metadata JSON (in canonical form: sorted keys, no spaces). The manifest is written in the
same atomic commit as the data, and :func:`verify_step` recomputes every checksum before a
restore returns any value.

A step is corrupt (:class:`~scirs2_optim_jax.checkpoint.CheckpointCorruptError`, naming the
step, the file and the reason) when any of these holds: something inside it is a symbolic
link; its manifest or metadata is missing, unreadable or not a JSON object; the manifest has
another format or step, or no array checksums; the metadata does not match its checksum or
has no valid tree description; the manifest and the metadata list different arrays; an array
cannot be read, is missing, has another shape than recorded, or does not match its checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orbax.checkpoint as ocp

from scirs2_optim_jax.checkpoint import metadata as md
from scirs2_optim_jax.checkpoint import treespec as ts
from scirs2_optim_jax.checkpoint.errors import CheckpointCorruptError, short_reason
from scirs2_optim_jax.checkpoint.metadata import FORMAT

__all__ = [
    "FORMAT",
    "VerifiedStep",
    "array_sha256",
    "build_manifest",
    "canonical_json",
    "json_sha256",
    "verify_step",
]


def array_sha256(array: np.ndarray) -> str:
    """Returns the sha256 hex digest of an array's dtype, shape and C-ordered bytes.

    Args:
        array: a numpy array (any dtype numpy or ml_dtypes knows, any rank).

    Returns:
        64 lowercase hex characters; equal for equal arrays, different when a byte, the
        dtype or the shape differs.

    Example:
        >>> import numpy as np
        >>> a = np.arange(4, dtype=np.float32)
        >>> array_sha256(a) == array_sha256(a.copy()), array_sha256(a) == array_sha256(a[::-1])
        (True, False)
    """
    data = np.ascontiguousarray(array)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    digest = hashlib.sha256(f"{data.dtype.name}{list(data.shape)}".encode())
    digest.update(data.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def canonical_json(value: Any) -> str:
    """Serialises ``value`` as JSON with sorted keys and no whitespace (NaN refused).

    Example:
        >>> canonical_json({"b": 1, "a": [1.5, None]})
        '{"a":[1.5,null],"b":1}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def json_sha256(value: Any) -> str:
    """Returns the sha256 hex digest of :func:`canonical_json` of ``value``.

    Example:
        >>> json_sha256({"a": 1}) == json_sha256({"a": 1}), json_sha256({"a": 2})[:8]
        (True, '7e8059f4')
    """
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def build_manifest(step: int, arrays: dict[str, np.ndarray], metadata: Any) -> dict[str, Any]:
    """Returns the manifest of one checkpoint: a checksum per array and of the metadata.

    Args:
        step: the step the checkpoint belongs to.
        arrays: the stored arrays by their storage name.
        metadata: the JSON metadata stored beside them.

    Returns:
        A JSON-ready dict with ``format``, ``step``, ``arrays`` (name -> sha256) and
        ``metadata_sha256``.

    Example:
        >>> import numpy as np
        >>> m = build_manifest(3, {"leaf_00000": np.zeros(2)}, {"step": 3})
        >>> m["step"], sorted(m["arrays"]), len(m["metadata_sha256"])
        (3, ['leaf_00000'], 64)
    """
    return {
        "format": FORMAT,
        "step": step,
        "arrays": {name: array_sha256(value) for name, value in arrays.items()},
        "metadata_sha256": json_sha256(metadata),
    }


class VerifiedStep(NamedTuple):
    """What :func:`verify_step` read and checked.

    Attributes:
        meta: the step metadata (``meta/meta.json``).
        description: the description of the saved tree, from the metadata.
        arrays: the stored arrays by storage name (``leaf_00000``...), as numpy arrays.
    """

    meta: dict[str, Any]
    description: ts.TreeDescription
    arrays: dict[str, np.ndarray]


def verify_step(step: int, step_dir: Path) -> VerifiedStep:
    """Reads every file of the step directory ``step_dir`` and checks it against its manifest.

    Args:
        step: the step the directory holds.
        step_dir: the step directory, ``<directory>/<step>``.

    Returns:
        A :class:`VerifiedStep` with the metadata, the tree description and the arrays.

    Raises:
        CheckpointCorruptError: the first thing found wrong (module doc), naming the step and
            the file.

    Example:
        >>> import tempfile, numpy as np
        >>> from scirs2_optim_jax.checkpoint import CheckpointManager
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with CheckpointManager(tmp, async_save=False) as mgr:
        ...         _ = mgr.save(5, {"w": np.ones(2)})
        ...     verified = verify_step(5, Path(tmp) / "5")
        >>> verified.meta["step"], verified.arrays["leaf_00000"].tolist()
        (5, [1.0, 1.0])
    """
    _check_no_links(step, step_dir)
    manifest = md.read_json(step, md.manifest_file(step_dir))
    meta = md.read_json(step, md.meta_file(step_dir))
    expected = _check_manifest(step, step_dir, manifest, meta)
    description = md.read_description(step, md.meta_file(step_dir), meta)
    names = [md.leaf_name(i) for i in range(len(description.leaves))]
    if sorted(names) != sorted(expected):
        raise CheckpointCorruptError(
            step,
            str(md.manifest_file(step_dir)),
            "the manifest and the metadata list different arrays",
        )
    state_dir = step_dir / md.STATE
    arrays = _read_arrays(step, state_dir, names) if names else {}
    for name, spec in zip(names, description.leaves, strict=True):
        _check_array(step, step_dir, name, spec, arrays.get(name), expected[name])
    return VerifiedStep(meta, description, arrays)


def _check_no_links(step: int, step_dir: Path) -> None:
    """Refuses a step with a symbolic link anywhere inside (it could point outside)."""
    for dirpath, dirnames, filenames in os.walk(step_dir):
        for name in dirnames + filenames:
            entry = Path(dirpath) / name
            if entry.is_symlink():
                raise CheckpointCorruptError(
                    step, str(entry), f"a symbolic link (to {os.readlink(entry)}); refused"
                )


def _check_manifest(
    step: int, step_dir: Path, manifest: dict[str, Any], meta: dict[str, Any]
) -> dict[str, Any]:
    """Checks the manifest's format and step and the metadata's checksum; returns the array
    checksums by storage name."""
    if manifest.get("format") != FORMAT or manifest.get("step") != step:
        raise CheckpointCorruptError(
            step,
            str(md.manifest_file(step_dir)),
            f"expected format {FORMAT!r} for step {step}, got "
            f"{manifest.get('format')!r} for step {manifest.get('step')!r}",
        )
    expected = manifest.get("arrays")
    if not isinstance(expected, dict):
        raise CheckpointCorruptError(step, str(md.manifest_file(step_dir)), "no array checksums")
    try:
        metadata_ok = json_sha256(meta) == manifest.get("metadata_sha256")
    except ValueError:
        metadata_ok = False
    if not metadata_ok:
        raise CheckpointCorruptError(
            step, str(md.meta_file(step_dir)), "its sha256 does not match the manifest"
        )
    return expected


def _check_array(
    step: int, step_dir: Path, name: str, spec: ts.LeafSpec, value: Any, checksum: Any
) -> None:
    """Checks one stored array against what the metadata and the manifest recorded."""
    state_dir = step_dir / md.STATE
    if not isinstance(value, np.ndarray):
        raise CheckpointCorruptError(
            step, str(state_dir), f"the array {name} for {spec.path} is missing"
        )
    # A typed PRNG key is stored as its key data, whose shape has the implementation's
    # trailing dimension.
    if value.shape != spec.shape and spec.kind != ts.PRNG_KEY:
        raise CheckpointCorruptError(
            step,
            str(state_dir),
            f"the array {name} for {spec.path} has shape {value.shape}, expected {spec.shape}",
        )
    if array_sha256(value) != checksum:
        raise CheckpointCorruptError(
            step,
            str(state_dir),
            f"the array {name} for {spec.path} does not match its sha256 in "
            f"{md.manifest_file(step_dir)}",
        )


_FILE_IN_MESSAGE = re.compile(r'local file "([^"]+)"')


def _file_in(err: BaseException, default: Path) -> str:
    """The last file a tensorstore error names, else ``default``."""
    files = [f for f in _FILE_IN_MESSAGE.findall(str(err)) if not f.endswith("/")]
    return files[-1] if files else str(default)


def _read_arrays(step: int, state_dir: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Reads the stored arrays as numpy arrays, raising CheckpointCorruptError on bad files.

    One array is read alone first: when the storage is damaged, that read fails with no
    sibling reads in flight (which would outlive Orbax's event loop and print errors).
    """
    checkpointer = ocp.PyTreeCheckpointer()

    def read(subset: list[str]) -> dict[str, np.ndarray]:
        args = ocp.args.PyTreeRestore(
            item={name: 0 for name in subset},
            restore_args={name: ocp.RestoreArgs(restore_type=np.ndarray) for name in subset},
            partial_restore=True,
        )
        return dict(checkpointer.restore(state_dir, args=args))

    try:
        read(names[:1])
        return read(names)
    except Exception as err:  # tensorstore and orbax raise many types on bad files
        raise CheckpointCorruptError(step, _file_in(err, state_dir), short_reason(err)) from None
    finally:
        checkpointer.close()
