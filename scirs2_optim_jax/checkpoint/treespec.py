"""A JSON description of a pytree's containers and leaves, and the safe way back.

Orbax restores an untargeted checkpoint as plain dicts and lists. To give back the types the
user saved (optimizer NamedTuples, ``nnx.State`` and its ``Param`` variables, ``FrozenDict``,
typed PRNG keys, Python scalars), :func:`describe_tree` records, for every container node, the
import path of its type and its JSON-encodable auxiliary data, and for every leaf its kind,
shape and dtype. :func:`rebuild_tree` turns that description and the leaves back into the
tree through JAX's own pytree registry.

Nothing here executes code chosen by the checkpoint file: a type is only resolved when it is
a builtin container, was registered with :func:`register_type`, or lives in one of the
trusted packages in :data:`TRUSTED_PACKAGES`; it must also be a registered pytree node (or a
NamedTuple). No pickle, no ``eval``.
"""

from __future__ import annotations

import collections
import importlib
import math
import sys
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

__all__ = [
    "TRUSTED_PACKAGES",
    "LeafSpec",
    "TreeDescription",
    "describe_tree",
    "diff_descriptions",
    "rebuild_tree",
    "register_type",
]

# Packages whose pytree types may be rebuilt from a checkpoint without registration.
TRUSTED_PACKAGES: tuple[str, ...] = ("optax", "flax", "chex", "scirs2_optim_jax")

_BUILTIN_TYPES: dict[str, type] = {
    "builtins:dict": dict,
    "builtins:list": list,
    "builtins:tuple": tuple,
    "builtins:NoneType": type(None),
    "collections:OrderedDict": collections.OrderedDict,
}
_REGISTERED: dict[str, type] = {}

# Leaf kinds: how a leaf was held in memory, so it comes back the same way.
JAX_ARRAY = "jax"
PRNG_KEY = "key"
NUMPY_ARRAY = "numpy"
NUMPY_SCALAR = "numpy_scalar"
PY_BOOL = "bool"
PY_INT = "int"
PY_FLOAT = "float"


@dataclass(frozen=True)
class LeafSpec:
    """What a leaf was: its tree path, kind, logical shape and stored dtype.

    ``dtype`` is the dtype of the stored array (for a typed PRNG key, of its key data);
    ``key_impl`` names the PRNG implementation of a typed key, else it is None.
    """

    path: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    key_impl: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "key_impl": self.key_impl,
        }

    @classmethod
    def from_json(cls, data: Any) -> LeafSpec:
        try:
            return cls(
                path=str(data["path"]),
                kind=str(data["kind"]),
                shape=tuple(int(n) for n in data["shape"]),
                dtype=str(data["dtype"]),
                key_impl=None if data["key_impl"] is None else str(data["key_impl"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed leaf entry {data!r}: {err}") from None

    def describe(self) -> str:
        kind = f"key<{self.key_impl}>" if self.kind == PRNG_KEY else self.dtype
        return f"{kind}{list(self.shape)}"


@dataclass(frozen=True)
class TreeDescription:
    """The JSON-ready description of a pytree: its node structure and its leaves."""

    nodes: dict[str, Any]
    leaves: tuple[LeafSpec, ...]

    def to_json(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "leaves": [leaf.to_json() for leaf in self.leaves]}

    @classmethod
    def from_json(cls, data: Any) -> TreeDescription:
        if not isinstance(data, dict) or "nodes" not in data or "leaves" not in data:
            raise ValueError("malformed tree description: expected 'nodes' and 'leaves'")
        return cls(data["nodes"], tuple(LeafSpec.from_json(leaf) for leaf in data["leaves"]))


def register_type(cls: type) -> type:
    """Allows ``cls`` to be rebuilt when a checkpoint is restored without a target.

    Types from the builtin containers and from :data:`TRUSTED_PACKAGES` (optax, flax, chex,
    this package) need no registration; register your own NamedTuples or pytree nodes.
    Usable as a class decorator.

    Args:
        cls: a NamedTuple class or a class registered as a JAX pytree node.

    Returns:
        ``cls`` itself.

    Example:
        >>> from typing import NamedTuple
        >>> @register_type
        ... class MyState(NamedTuple):
        ...     count: int
        >>> MyState(3).count
        3
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_type: cls must be a class, got {cls!r}")
    _REGISTERED[_type_name(cls)] = cls
    return cls


def _type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _is_namedtuple(cls: type) -> bool:
    return issubclass(cls, tuple) and hasattr(cls, "_fields")


def _resolve_type(name: str) -> type:
    """Returns the class named ``module:qualname``, only if it is safe to rebuild."""
    if name in _BUILTIN_TYPES:
        return _BUILTIN_TYPES[name]
    if name in _REGISTERED:
        return _REGISTERED[name]
    module_name, _, qualname = name.partition(":")
    top = module_name.split(".")[0]
    if top not in TRUSTED_PACKAGES or not qualname or "<" in qualname:
        raise TypeError(
            f"the checkpoint holds a {name!r}, which is not a trusted type: register it with "
            "scirs2_optim_jax.checkpoint.register_type, or restore with a target"
        )
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, type):
        raise TypeError(f"the checkpoint names the type {name!r}, which does not exist here")
    return obj


def _encode_aux(value: Any) -> Any:
    """Encodes auxiliary pytree data as tagged JSON; raises TypeError when it cannot."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"non-finite float {value!r}")
        return value
    if isinstance(value, tuple) and not _is_namedtuple(type(value)):
        return {"tuple": [_encode_aux(v) for v in value]}
    if isinstance(value, list):
        return {"list": [_encode_aux(v) for v in value]}
    raise TypeError(f"cannot encode {type(value).__name__} {value!r}")


def _decode_aux(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"tuple"}:
            return tuple(_decode_aux(v) for v in value["tuple"])
        if set(value) == {"list"}:
            return [_decode_aux(v) for v in value["list"]]
        raise ValueError(f"malformed auxiliary data {value!r}")
    if isinstance(value, list):
        raise ValueError(f"malformed auxiliary data {value!r}")
    return value


def _is_key(leaf: Any) -> bool:
    return jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _leaf_spec(path: str, leaf: Any) -> LeafSpec:
    if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)) and _is_key(leaf):
        data = jax.eval_shape(jax.random.key_data, leaf)
        impl = str(jax.random.key_impl(leaf)) if isinstance(leaf, jax.Array) else None
        return LeafSpec(path, PRNG_KEY, tuple(leaf.shape), np.dtype(data.dtype).name, impl)
    if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)):
        return LeafSpec(path, JAX_ARRAY, tuple(leaf.shape), np.dtype(leaf.dtype).name)
    if isinstance(leaf, np.ndarray):
        return LeafSpec(path, NUMPY_ARRAY, leaf.shape, leaf.dtype.name)
    if isinstance(leaf, np.generic):
        return LeafSpec(path, NUMPY_SCALAR, (), leaf.dtype.name)
    if isinstance(leaf, bool):
        return LeafSpec(path, PY_BOOL, (), "bool")
    if isinstance(leaf, int):
        if not -(2**63) <= leaf < 2**63:
            raise ValueError(f"the Python int at {path} does not fit in int64: {leaf}")
        return LeafSpec(path, PY_INT, (), "int64")
    if isinstance(leaf, float):
        return LeafSpec(path, PY_FLOAT, (), "float64")
    raise TypeError(
        f"cannot checkpoint the leaf at {path}: a {type(leaf).__name__}; leaves must be arrays "
        "(jax or numpy), numpy scalars, or Python bool/int/float"
    )


def describe_tree(tree: Any) -> TreeDescription:
    """Describes ``tree``'s containers and leaves as JSON-ready data.

    Every container node records its type as ``module:qualname`` and its auxiliary data when
    that data is JSON-encodable; nodes whose auxiliary data is not (e.g. a Flax struct
    dataclass holding functions) are recorded as ``opaque``: they survive a restore with a
    target but cannot be rebuilt without one.

    Args:
        tree: a pytree whose leaves are arrays (jax, numpy, typed PRNG keys), numpy scalars or
            Python bool/int/float.

    Returns:
        A :class:`TreeDescription` whose leaves are in ``jax.tree.leaves`` order.

    Raises:
        TypeError: a leaf of another type, naming its tree path.

    Example:
        >>> import numpy as np
        >>> d = describe_tree({"w": np.zeros((2, 3), np.float32), "step": 3})
        >>> [(leaf.path, leaf.kind, leaf.dtype) for leaf in d.leaves]
        [("['step']", 'int', 'int64'), ("['w']", 'numpy', 'float32')]
    """
    leaves: list[LeafSpec] = []

    def visit(node: Any, path: tuple) -> dict[str, Any]:
        keystr = jax.tree_util.keystr(path)
        if node is None:
            return {"type": "builtins:NoneType", "path": keystr, "aux": None, "children": []}
        treedef = jax.tree.structure(node, is_leaf=lambda x: x is not node)
        if jax.tree_util.treedef_is_leaf(treedef) and treedef.num_leaves == 1:
            leaves.append(_leaf_spec(keystr, node))
            return {"leaf": len(leaves) - 1}
        node_type, aux = treedef.node_data()
        children = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
        described: dict[str, Any] = {"type": _type_name(node_type), "path": keystr}
        try:
            described["aux"] = _encode_aux(aux)
        except TypeError as err:
            described["opaque"] = str(err)
        described["children"] = [visit(child, path + key) for key, child in children[0]]
        return described

    nodes = visit(tree, ())
    return TreeDescription(nodes, tuple(leaves))


def _build_treedef(node: dict[str, Any], resolved: dict[str, type]) -> Any:
    if "leaf" in node:
        return jax.tree.structure(0)
    name = node["type"]
    if "opaque" in node:
        raise TypeError(
            f"the checkpoint holds a {name} whose auxiliary data cannot be stored "
            f"({node['opaque']}): restore it with a target"
        )
    cls = resolved.get(name) or _resolve_type(name)
    resolved[name] = cls
    children = [_build_treedef(child, resolved) for child in node["children"]]
    aux = _decode_aux(node["aux"])
    try:
        return jax.tree_util.PyTreeDef.from_node_data_and_children(
            jax.tree_util.default_registry, (cls, aux), children
        )
    except (ValueError, TypeError) as err:
        raise TypeError(f"cannot rebuild a {name} from the checkpoint: {err}") from None


def rebuild_tree(description: TreeDescription, leaves: list[Any]) -> Any:
    """Rebuilds the tree :func:`describe_tree` described, from its leaves in order.

    Args:
        description: what :func:`describe_tree` returned (possibly via JSON).
        leaves: the leaves, already converted back to their kinds, in the same order.

    Returns:
        The pytree, with the same container types and auxiliary data as the one described.

    Raises:
        TypeError: a type is neither builtin, registered nor from a trusted package, or a
            node was stored as opaque.

    Example:
        >>> import numpy as np
        >>> tree = {"w": (np.ones(2), None)}
        >>> rebuild_tree(describe_tree(tree), [np.zeros(2)])
        {'w': (array([0., 0.]), None)}
    """
    if len(leaves) != len(description.leaves):
        raise ValueError(
            f"rebuild_tree: got {len(leaves)} leaves for a tree of {len(description.leaves)}"
        )
    treedef = _build_treedef(description.nodes, {})
    if treedef.num_leaves != len(leaves):
        raise ValueError(
            f"rebuild_tree: the structure has {treedef.num_leaves} leaves, the checkpoint "
            f"lists {len(leaves)}"
        )
    return jax.tree.unflatten(treedef, leaves)


def diff_descriptions(
    saved: TreeDescription, wanted: TreeDescription, *, limit: int = 8
) -> list[str]:
    """Lists where two described trees differ: paths, container types, shapes, dtypes.

    Args:
        saved: the description stored in the checkpoint.
        wanted: the description of the target the caller passed.
        limit: about this many differences are listed (half of it per kind of difference).

    Returns:
        Human-readable differences, each naming a tree path; empty when the trees match.

    Example:
        >>> import numpy as np
        >>> a = describe_tree({"w": np.zeros(2, np.float32)})
        >>> b = describe_tree({"w": np.zeros(3, np.float32), "b": np.zeros(1, np.float32)})
        >>> diff_descriptions(a, b)
        ["['w']: saved float32[2], target float32[3]", "['b']: only in the target (float32[1])"]
    """
    saved_paths = {leaf.path: leaf for leaf in saved.leaves}
    wanted_paths = {leaf.path: leaf for leaf in wanted.leaves}
    changed, target_only, saved_only = [], [], []
    for path in sorted(set(saved_paths) | set(wanted_paths)):
        s, w = saved_paths.get(path), wanted_paths.get(path)
        name = path or "<root>"
        if s is None and w is not None:
            target_only.append(f"{name}: only in the target ({w.describe()})")
        elif w is None and s is not None:
            saved_only.append(f"{name}: only in the checkpoint ({s.describe()})")
        elif s is not None and w is not None:
            same_kind = (s.kind == PRNG_KEY) == (w.kind == PRNG_KEY)
            same_impl = s.key_impl is None or w.key_impl is None or s.key_impl == w.key_impl
            if s.shape != w.shape or s.dtype != w.dtype or not (same_kind and same_impl):
                changed.append(f"{name}: saved {s.describe()}, target {w.describe()}")
    out: list[str] = []
    share = max(limit // 2, 1)
    for group in (changed, target_only, saved_only):
        out.extend(group[:share])
        if len(group) > share:
            out.append(f"... and {len(group) - share} more like it")
    if not out:
        _diff_types(saved.nodes, wanted.nodes, out)
    return out


def _diff_types(saved: dict, wanted: dict, out: list[str]) -> None:
    path = saved.get("path") or "<root>"
    if "leaf" in saved or "leaf" in wanted:
        if ("leaf" in saved) != ("leaf" in wanted):
            out.append(f"{path}: a leaf on one side, a container on the other")
        return
    if saved["type"] != wanted["type"]:
        out.append(f"{path}: saved a {saved['type']}, the target has a {wanted['type']}")
        return
    for a, b in zip(saved["children"], wanted["children"], strict=False):
        _diff_types(a, b, out)
