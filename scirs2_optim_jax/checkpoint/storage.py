"""The ``state`` item on disk: the arrays under the state's own tree paths, read back verified.

A save stores the canonical state's host arrays as an Orbax PyTree whose structure follows
the state's: a mapping or a node with named children (a NamedTuple, a dataclass, an
``nnx.State``) becomes a dict keyed by those names, a tuple or list becomes a list, and a
container without arrays (``None``, ``optax.EmptyState()``) becomes ``None``. Plain Orbax
therefore restores a step's ``state`` as a readable nested tree (``params/dense/kernel``,
``opt_state/1/0/mu/dense/kernel``, ...), or onto a target of the state's own structure
(docs/checkpointing.md, "Reading a checkpoint without this package").

Two leaves whose paths would name the same array (``"a.b"`` beside ``a`` holding ``b``:
Orbax joins the keys with dots; or ``"a/b"`` beside it: the manifest joins them with
slashes), or a leaf with an empty key in its path, cannot be stored that way; such a state
is stored under flat names, ``leaf_00000``, ``leaf_00001``, ..., as the first checkpoint
format stored every state. The metadata lists where each leaf is.

Writing hands Orbax the host arrays as they are, with no defensive copy
(:func:`write_handler`), and asks for OCDBT data files of :data:`DATA_FILE_BYTES` (4 MiB),
or of the largest array's size if that is more, instead of Orbax's 2 GiB on local disks
(:func:`save_args`): tensorstore keeps the compressed bytes of a data file in memory until
the file is written, so with 2 GiB files a save holds about the whole state again in host
memory, while with small files it writes them out as it goes (and, on two cores, faster).
No array is split by this: Orbax chunks an array larger than the data files, and its chunk
shapes must divide the array's, which for a length such as a prime means one-element chunks.

Reading hashes every array as soon as Orbax has read it, in a thread pool, while the other
arrays are still being read (:func:`read_tree`, :func:`hash_as_read`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from scirs2_optim_jax.checkpoint import metadata as md

__all__ = [
    "DATA_FILE_BYTES",
    "StoragePath",
    "hash_as_read",
    "lookup",
    "read_tree",
    "save_args",
    "storage_tree",
    "write_handler",
]

StoragePath = tuple[str | int, ...]
# The target size of the OCDBT data files a save writes, unless an array is larger.
DATA_FILE_BYTES = 4 * 2**20
_SEQUENCE_KEYS = (jax.tree_util.SequenceKey, jax.tree_util.FlattenedIndexKey)


def _key(entry: Any) -> str | int:
    if isinstance(entry, jax.tree_util.DictKey):
        return str(entry.key)
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return entry.name
    if isinstance(entry, _SEQUENCE_KEYS):
        return int(entry.key if isinstance(entry, jax.tree_util.FlattenedIndexKey) else entry.idx)
    return str(entry)


def _nested(state: Any, host: Sequence[np.ndarray]) -> tuple[Any, list[StoragePath]] | None:
    """The nested storage tree and each leaf's path; None when two paths would collide."""
    paths: list[StoragePath] = []
    leaves = iter(host)

    def visit(node: Any, path: StoragePath) -> Any:
        if node is None:
            return None
        treedef = jax.tree.structure(node, is_leaf=lambda x: x is not node)
        if jax.tree_util.treedef_is_leaf(treedef) and treedef.num_leaves == 1:
            paths.append(path)
            return next(leaves)
        children = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)[0]
        if not children:
            return None
        entries = [(entry, child) for (entry,), child in children]
        if all(isinstance(entry, _SEQUENCE_KEYS) for entry, _ in entries):
            return [visit(child, (*path, i)) for i, (_, child) in enumerate(entries)]
        out: dict[str, Any] = {}
        for entry, child in entries:
            name = str(_key(entry))
            if name in out:
                raise _Collision
            out[name] = visit(child, (*path, name))
        return out

    try:
        tree = visit(state, ())
    except _Collision:
        return None
    if not paths or not isinstance(tree, (dict, list)):
        return None
    dotted = {".".join(str(k) for k in p) for p in paths}
    slashed = {md.storage_name(p) for p in paths}
    empty = any(k == "" for p in paths for k in p)
    if empty or len(dotted) != len(paths) or len(slashed) != len(paths):
        return None
    return tree, paths


class _Collision(Exception):
    """Two children of one node would be stored under the same name."""


def storage_tree(state: Any, host: Sequence[np.ndarray]) -> tuple[Any, list[StoragePath]]:
    """The tree Orbax stores for ``state`` whose leaves are ``host`` (in leaf order), and
    where each leaf is stored.

    Args:
        state: the canonical state (any pytree).
        host: its leaves as host arrays, in ``jax.tree.leaves`` order.

    Returns:
        ``(tree, paths)``: nested dicts and lists holding ``host``, and each leaf's path in
        it; or, when paths would collide (module doc), the flat ``{"leaf_00000": ...}`` and
        ``[("leaf_00000",), ...]``.

    Example:
        >>> import numpy as np, optax
        >>> params = {"w": np.ones(2, np.float32)}
        >>> state = {"params": params, "opt_state": optax.adam(0.1).init(params)}
        >>> host = [np.asarray(x) for x in jax.tree.leaves(state)]
        >>> tree, paths = storage_tree(state, host)
        >>> [md.storage_name(p) for p in paths]
        ['opt_state/0/count', 'opt_state/0/mu/w', 'opt_state/0/nu/w', 'params/w']
        >>> tree["opt_state"][1] is None  # optax.EmptyState()
        True
        >>> storage_tree({"a.b": np.ones(1), "a": {"b": np.zeros(1)}}, host[:2])[1]
        [('leaf_00000',), ('leaf_00001',)]
    """
    nested = _nested(state, host)
    if nested is not None:
        return nested
    names = [md.leaf_name(i) for i in range(len(host))]
    return dict(zip(names, host, strict=True)), [(name,) for name in names]


def lookup(tree: Any, path: StoragePath) -> np.ndarray | None:
    """The array at ``path`` in a tree Orbax restored, or None where there is none.

    Example:
        >>> lookup({"a": [None, {"b": np.ones(1)}]}, ("a", 1, "b")).tolist(), lookup({}, ("a",))
        ([1.0], None)
    """
    node = tree
    for key in path:
        in_dict = isinstance(node, dict) and isinstance(key, str) and key in node
        in_list = isinstance(node, (list, tuple)) and isinstance(key, int) and 0 <= key < len(node)
        if not (in_dict or in_list):
            return None
        node = node[key]
    return node if isinstance(node, np.ndarray) else None


def write_handler() -> ocp.PyTreeCheckpointHandler:
    """Orbax's PyTree handler for the ``state`` item, writing host arrays without copying.

    Orbax's default numpy handler deep-copies every array before writing, in case the
    caller changes it meanwhile. The arrays a save hands over are private (copied from
    mutable buffers) or immutable (a host-resident ``jax.Array`` referenced), so that copy
    would only double the host memory of a save.
    """
    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, ocp.type_handlers.ArrayHandler()),  # unused; Orbax warns without one
    )
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def save_args(tree: Any) -> ocp.args.PyTreeSave:
    """Orbax's save arguments for the storage tree: data files of :data:`DATA_FILE_BYTES`,
    or of the largest array's size if that is more (module doc).

    Example:
        >>> save_args({"w": np.ones(2)}).ocdbt_target_data_file_size // 2**20
        4
        >>> save_args({"w": np.ones(2**21)}).ocdbt_target_data_file_size // 2**20
        16
    """
    largest = max((leaf.nbytes for leaf in jax.tree.leaves(tree)), default=0)
    return ocp.args.PyTreeSave(tree, ocdbt_target_data_file_size=max(DATA_FILE_BYTES, largest))


class _ReadingHandler(ocp.type_handlers.NumpyHandler):
    """Orbax's numpy handler, calling ``on_read(array)`` as each array arrives.

    One array is read alone first: when the storage is damaged, that read fails with no
    sibling reads in flight (which would outlive Orbax's event loop and print errors).
    """

    def __init__(self, on_read: Callable[[np.ndarray], None]) -> None:
        super().__init__()
        self._on_read = on_read

    async def deserialize(
        self, infos: Sequence[Any], args: Sequence[Any] | None = None
    ) -> list[np.ndarray]:
        args = list(args) if args is not None else [ocp.RestoreArgs()] * len(infos)

        async def read(info: Any, arg: Any) -> np.ndarray:
            (value,) = await super(_ReadingHandler, self).deserialize([info], [arg])
            self._on_read(value)
            return value

        if not infos:
            return []
        first = await read(infos[0], args[0])
        rest = await asyncio.gather(*(read(i, a) for i, a in zip(infos[1:], args[1:], strict=True)))
        return [first, *rest]


def read_tree(state_dir: Path, on_read: Callable[[np.ndarray], None] | None = None) -> Any:
    """Reads every array of the ``state`` item at ``state_dir`` as numpy, as Orbax stored it.

    Args:
        state_dir: the ``state`` directory of a step.
        on_read: called with each array as soon as it is read (from Orbax's threads).

    Returns:
        The tree Orbax restores without a target: nested dicts and lists of numpy arrays.

    Raises:
        Whatever tensorstore and Orbax raise for damaged files.
    """
    lock = threading.Lock()

    def callback(value: np.ndarray) -> None:
        if on_read is not None:
            with lock:
                on_read(value)

    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, _ReadingHandler(callback)),
        (jax.Array, ocp.type_handlers.ArrayHandler()),  # unused; Orbax warns without one
    )
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry))
    try:
        return checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore())
    finally:
        checkpointer.close()


def hash_as_read(
    executor: concurrent.futures.Executor, digest: Callable[[np.ndarray], str]
) -> tuple[Callable[[np.ndarray], None], dict[int, concurrent.futures.Future[str]]]:
    """An ``on_read`` callback for :func:`read_tree` that hashes each array in ``executor``.

    Returns:
        ``(on_read, futures)``: ``futures`` maps ``id(array)`` to the future of its digest.
    """
    futures: dict[int, concurrent.futures.Future[str]] = {}

    def on_read(value: np.ndarray) -> None:
        futures[id(value)] = executor.submit(digest, value)

    return on_read, futures
