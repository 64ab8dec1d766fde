"""Verification: proving that a checkpoint step is the one that was written.

Every committed checkpoint carries a manifest: the checksum of each array's canonical bytes
(a header with its dtype and shape, then its C-ordered little-endian data), the checksum of
the metadata JSON (in canonical form: sorted keys, no spaces), and the name of the hash that
made them: ``xxh3_128`` (XXH3, 128 bits, from ``xxhash``; it runs at memory speed) for steps
written now, ``sha256`` for steps of the first format, which still verify. The manifest is
written in the same atomic commit as the data; a save computes it in the background while
Orbax writes the arrays, and :func:`verify_step` recomputes every checksum before a restore
returns any value, hashing each array in a thread pool as soon as it has been read.

A step is corrupt (:class:`~scirs2_optim_jax.checkpoint.CheckpointCorruptError`, naming the
step, the file and the reason) when any of these holds: something inside it is a symbolic
link; its manifest or metadata is missing, unreadable or not a JSON object; the manifest has
another format or step, an unknown hash, or no array checksums; the metadata does not match
its checksum, has another format than the manifest, or has no valid tree description or
storage paths; the manifest and the metadata list different arrays; an array cannot be
read, is missing, has another shape than recorded, or does not match its checksum.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xxhash

from scirs2_optim_jax.checkpoint import metadata as md
from scirs2_optim_jax.checkpoint import storage
from scirs2_optim_jax.checkpoint import treespec as ts
from scirs2_optim_jax.checkpoint.errors import CheckpointCorruptError, short_reason
from scirs2_optim_jax.checkpoint.metadata import FORMAT, FORMAT_V1

__all__ = [
    "FORMAT",
    "HASH",
    "HASHES",
    "SHA256",
    "XXH3_128",
    "VerifiedStep",
    "array_digest",
    "array_sha256",
    "build_manifest",
    "canonical_json",
    "hash_workers",
    "json_digest",
    "json_sha256",
    "manifest_from_digests",
    "verify_step",
]

SHA256 = "sha256"
XXH3_128 = "xxh3_128"
HASHES = (XXH3_128, SHA256)
# The hash of the manifests written now.
HASH = XXH3_128


def hash_workers() -> int:
    """How many threads hash arrays (save and restore): the cores, at most 4.

    Example:
        >>> 1 <= hash_workers() <= 4
        True
    """
    return max(1, min(4, os.cpu_count() or 1))


def _hasher(algorithm: str) -> Any:
    if algorithm == XXH3_128:
        return xxhash.xxh3_128()
    if algorithm == SHA256:
        return hashlib.sha256()
    raise ValueError(f"unknown checkpoint hash {algorithm!r}; expected one of {HASHES}")


def array_digest(array: np.ndarray, algorithm: str = HASH) -> str:
    """Returns the hex checksum of an array's dtype, shape and C-ordered bytes.

    The bytes are hashed where they lie (no copy) unless the array is not C-contiguous or
    not little-endian; the hashes release the GIL, so several threads hash in parallel.

    Args:
        array: a numpy array (any dtype numpy or ml_dtypes knows, any rank).
        algorithm: ``"xxh3_128"`` (32 hex characters) or ``"sha256"`` (64).

    Returns:
        Lowercase hex; equal for equal arrays, different when a byte, the dtype or the
        shape differs.

    Example:
        >>> import numpy as np
        >>> a = np.arange(4, dtype=np.float32)
        >>> array_digest(a) == array_digest(a.copy()), array_digest(a) == array_digest(a[::-1])
        (True, False)
        >>> len(array_digest(a)), len(array_digest(a, "sha256"))
        (32, 64)
    """
    data = np.ascontiguousarray(array)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    digest = _hasher(algorithm)
    digest.update(f"{data.dtype.name}{list(data.shape)}".encode())
    digest.update(data.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def array_sha256(array: np.ndarray) -> str:
    """Returns the sha256 hex digest of an array's dtype, shape and C-ordered bytes, as the
    manifests of the first format recorded (:func:`array_digest` with ``"sha256"``).

    Example:
        >>> import numpy as np
        >>> a = np.arange(4, dtype=np.float32)
        >>> array_sha256(a) == array_sha256(a.copy()), array_sha256(a) == array_sha256(a[::-1])
        (True, False)
    """
    return array_digest(array, SHA256)


def canonical_json(value: Any) -> str:
    """Serialises ``value`` as JSON with sorted keys and no whitespace (NaN refused).

    Example:
        >>> canonical_json({"b": 1, "a": [1.5, None]})
        '{"a":[1.5,null],"b":1}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def json_digest(value: Any, algorithm: str = HASH) -> str:
    """Returns the hex checksum of :func:`canonical_json` of ``value``.

    Example:
        >>> json_digest({"a": 1}) == json_digest({"a": 1}), json_digest({"a": 2}, "sha256")[:8]
        (True, '7e8059f4')
    """
    digest = _hasher(algorithm)
    digest.update(canonical_json(value).encode())
    return digest.hexdigest()


def json_sha256(value: Any) -> str:
    """Returns the sha256 hex digest of :func:`canonical_json` of ``value``.

    Example:
        >>> json_sha256({"a": 1}) == json_sha256({"a": 1}), json_sha256({"a": 2})[:8]
        (True, '7e8059f4')
    """
    return json_digest(value, SHA256)


def manifest_from_digests(
    step: int, digests: Mapping[str, str], metadata_digest: str, algorithm: str = HASH
) -> dict[str, Any]:
    """Returns the manifest of one checkpoint from checksums already computed.

    Args:
        step: the step the checkpoint belongs to.
        digests: the checksum of each array, by storage name.
        metadata_digest: the checksum of the metadata (:func:`json_digest`).
        algorithm: the hash that made them.

    Returns:
        A JSON-ready dict with ``format``, ``step``, ``hash``, ``arrays`` (name -> checksum)
        and ``metadata_hash``.

    Example:
        >>> manifest_from_digests(3, {"w": "00"}, "ff")["hash"]
        'xxh3_128'
    """
    return {
        "format": FORMAT,
        "step": step,
        "hash": algorithm,
        "arrays": dict(digests),
        "metadata_hash": metadata_digest,
    }


def build_manifest(
    step: int, arrays: Mapping[str, np.ndarray], metadata: Any, algorithm: str = HASH
) -> dict[str, Any]:
    """Returns the manifest of one checkpoint: a checksum per array and of the metadata.

    (A save computes the same in the background, while Orbax writes the arrays.)

    Args:
        step: the step the checkpoint belongs to.
        arrays: the stored arrays by their storage name.
        metadata: the JSON metadata stored beside them.
        algorithm: the hash to use.

    Example:
        >>> import numpy as np
        >>> m = build_manifest(3, {"params/w": np.zeros(2)}, {"step": 3})
        >>> m["step"], m["hash"], sorted(m["arrays"]), len(m["metadata_hash"])
        (3, 'xxh3_128', ['params/w'], 32)
    """
    digests = {name: array_digest(value, algorithm) for name, value in arrays.items()}
    return manifest_from_digests(step, digests, json_digest(metadata, algorithm), algorithm)


class VerifiedStep(NamedTuple):
    """What :func:`verify_step` read and checked.

    Attributes:
        meta: the step metadata (``meta/meta.json``).
        description: the description of the saved tree, from the metadata.
        values: the stored arrays as numpy arrays, one per leaf of ``description``, in order.
    """

    meta: dict[str, Any]
    description: ts.TreeDescription
    values: list[np.ndarray]


def verify_step(
    step: int, step_dir: Path, executor: concurrent.futures.Executor | None = None
) -> VerifiedStep:
    """Reads every file of the step directory ``step_dir`` and checks it against its manifest.

    The arrays are hashed in ``executor`` (or a pool of :func:`hash_workers` threads) as
    soon as each has been read, overlapping the reads of the others.

    Args:
        step: the step the directory holds.
        step_dir: the step directory, ``<directory>/<step>``.
        executor: the threads that hash the arrays; None starts and stops a pool.

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
        >>> verified.meta["step"], verified.meta["arrays"], verified.values[0].tolist()
        (5, [['w']], [1.0, 1.0])
    """
    _check_no_links(step, step_dir)
    manifest = md.read_json(step, md.manifest_file(step_dir))
    meta = md.read_json(step, md.meta_file(step_dir))
    algorithm, expected = _check_manifest(step, step_dir, manifest, meta)
    description = md.read_description(step, md.meta_file(step_dir), meta)
    paths = md.read_storage_paths(step, md.meta_file(step_dir), meta, len(description.leaves))
    names = [md.storage_name(path) for path in paths]
    if sorted(names) != sorted(expected):
        raise CheckpointCorruptError(
            step,
            str(md.manifest_file(step_dir)),
            "the manifest and the metadata list different arrays",
        )
    values: list[Any] = [None] * len(paths)
    digests: list[str | None] = [None] * len(paths)
    if paths:
        values, digests = _read_and_hash(step, step_dir / md.STATE, paths, algorithm, executor)
    for name, spec, value, digest in zip(names, description.leaves, values, digests, strict=True):
        _check_array(step, step_dir, name, spec, value, digest, expected[name], algorithm)
    return VerifiedStep(meta, description, values)


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
) -> tuple[str, dict[str, Any]]:
    """Checks the manifest's format, step and hash and the metadata's checksum; returns the
    hash and the array checksums by storage name."""
    file = str(md.manifest_file(step_dir))
    version = manifest.get("format")
    if version not in (FORMAT, FORMAT_V1) or manifest.get("step") != step:
        raise CheckpointCorruptError(
            step,
            file,
            f"expected format {FORMAT!r} (or {FORMAT_V1!r}) for step {step}, got "
            f"{version!r} for step {manifest.get('step')!r}",
        )
    if version == FORMAT_V1:
        algorithm, metadata_key = SHA256, "metadata_sha256"
    else:
        algorithm, metadata_key = manifest.get("hash"), "metadata_hash"
        if algorithm not in HASHES:
            raise CheckpointCorruptError(
                step, file, f"unknown hash {algorithm!r}; expected one of {HASHES}"
            )
    expected = manifest.get("arrays")
    if not isinstance(expected, dict):
        raise CheckpointCorruptError(step, file, "no array checksums")
    try:
        metadata_ok = json_digest(meta, algorithm) == manifest.get(metadata_key)
    except ValueError:
        metadata_ok = False
    if not metadata_ok:
        raise CheckpointCorruptError(
            step,
            str(md.meta_file(step_dir)),
            f"its {algorithm} checksum does not match the manifest",
        )
    if meta.get("format") != version:
        raise CheckpointCorruptError(
            step,
            str(md.meta_file(step_dir)),
            f"format {meta.get('format')!r}, the manifest's is {version!r}",
        )
    return algorithm, expected


def _check_array(
    step: int,
    step_dir: Path,
    name: str,
    spec: ts.LeafSpec,
    value: Any,
    digest: str | None,
    checksum: Any,
    algorithm: str,
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
    if digest != checksum:
        raise CheckpointCorruptError(
            step,
            str(state_dir),
            f"the array {name} for {spec.path} does not match its {algorithm} checksum in "
            f"{md.manifest_file(step_dir)}",
        )


_FILE_IN_MESSAGE = re.compile(r'local file "([^"]+)"')


def _file_in(err: BaseException, default: Path) -> str:
    """The last file a tensorstore error names, else ``default``."""
    files = [f for f in _FILE_IN_MESSAGE.findall(str(err)) if not f.endswith("/")]
    return files[-1] if files else str(default)


def _read_and_hash(
    step: int,
    state_dir: Path,
    paths: list[storage.StoragePath],
    algorithm: str,
    executor: concurrent.futures.Executor | None,
) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Reads the stored arrays (one per path, None where missing) and their checksums,
    hashing each as it arrives; raises CheckpointCorruptError on bad files."""
    pool = executor or concurrent.futures.ThreadPoolExecutor(
        hash_workers(), thread_name_prefix="scirs2-ckpt-hash"
    )
    digest = functools.partial(array_digest, algorithm=algorithm)
    try:
        on_read, futures = storage.hash_as_read(pool, digest)
        try:
            tree = storage.read_tree(state_dir, on_read)
        except Exception as err:  # tensorstore and orbax raise many types on bad files
            raise CheckpointCorruptError(
                step, _file_in(err, state_dir), short_reason(err)
            ) from None
        values = [storage.lookup(tree, path) for path in paths]
        digests: list[str | None] = []
        for value in values:
            future = futures.get(id(value)) if value is not None else None
            if future is not None:
                digests.append(future.result())
            else:
                digests.append(None if value is None else digest(value))
        return values, digests
    finally:
        if executor is None:
            pool.shutdown(wait=True)
