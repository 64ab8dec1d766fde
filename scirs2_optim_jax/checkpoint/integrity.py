"""Checksums that prove a checkpoint is the one that was written.

Every committed checkpoint carries a manifest: the sha256 of each array's canonical bytes
(a header with its dtype and shape, then its C-ordered little-endian data) and the sha256 of
the metadata JSON (in canonical form: sorted keys, no spaces). The manifest is written in the
same atomic commit as the data, and restore recomputes every checksum before any value is
returned.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

__all__ = ["FORMAT", "array_sha256", "build_manifest", "canonical_json", "json_sha256"]

FORMAT = "scirs2_optim_jax.checkpoint/1"


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
