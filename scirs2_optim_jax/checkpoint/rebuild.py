"""From the verified arrays of a step to the state a restore asks for.

Without a target, the saved description rebuilds the tree with its container types, leaf
kinds and Python scalars. With a target (arrays, ``jax.ShapeDtypeStruct`` s or scalars), the
saved description must match the target's, and the result takes the target's structure,
leaf kinds and shardings. ``params_only`` first cuts the ``params`` child out of the saved
root. Jax leaves go to the target's sharding, else ``placement``, else the default device;
the leaves of the root's ``opt_state`` go where an offloaded optimizer keeps them when
``opt_state_memory`` says so, straight from the host arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from scirs2_optim_jax.checkpoint import layout as layout_lib
from scirs2_optim_jax.checkpoint import treespec as ts

__all__ = ["build_state"]

_FN = "CheckpointManager.restore"
_PARAMS_PATHS = ("['params']", ".params")
_OPT_STATE_PATHS = ("['opt_state']", ".opt_state")
_PY_KINDS = (ts.PY_BOOL, ts.PY_INT, ts.PY_FLOAT)


def build_state(
    step: int,
    directory: Path,
    description: ts.TreeDescription,
    values: list[np.ndarray],
    *,
    target: Any = None,
    params_only: bool = False,
    placement: Any = None,
    opt_state_memory: str | jax.Device | None = None,
) -> Any:
    """Returns the state of step ``step`` from its verified arrays.

    Args:
        step: the step (for messages).
        directory: the checkpoint directory (for messages).
        description: the saved tree description.
        values: the verified arrays, one per leaf of ``description``, in order.
        target: None, or the pytree the result must match (module doc).
        params_only: return only the saved root's ``params`` child.
        placement: a ``jax.sharding.Sharding`` or ``jax.Device`` for jax leaves whose target
            gives no sharding; None puts them on the default device.
        opt_state_memory: where the jax leaves under the root's ``opt_state`` go instead
            (``layout.from_host``'s ``memory``): a memory kind or a device; None: as above.

    Raises:
        ValueError: the target does not match (naming the paths), or ``params_only`` with
            no ``params`` at the saved root.
        TypeError: the saved tree cannot be rebuilt.

    Example:
        >>> import numpy as np
        >>> saved = {"params": {"w": np.ones(2)}, "opt_state": ()}
        >>> description = ts.describe_tree(saved)
        >>> build_state(0, Path("/ckpt"), description, [np.ones(2)], params_only=True)
        {'w': array([1., 1.])}
    """
    if params_only:
        description, values = _params_subtree(step, directory, description, values)

    def memory(spec: ts.LeafSpec) -> str | jax.Device | None:
        if opt_state_memory is None or params_only:
            return None
        return opt_state_memory if _is_under(spec.path, _OPT_STATE_PATHS) else None

    if target is None:
        try:
            leaves = [
                layout_lib.from_host(v, spec, spec.kind, None, placement, memory=memory(spec))
                for v, spec in zip(values, description.leaves, strict=True)
            ]
            return ts.rebuild_tree(description, leaves)
        except TypeError as err:
            raise TypeError(f"{_FN}: step {step}: {err}") from None
    wanted = _accept_abstract_scalars(description, ts.describe_tree(target), target)
    differences = ts.diff_descriptions(description, wanted)
    if differences:
        hint = ""
        if not params_only and _matches_params(step, directory, description, wanted):
            hint = " (it matches the saved params: pass params_only=True to restore them)"
        raise ValueError(
            f"{_FN}: the target does not match checkpoint step {step} in "
            f"{directory}{hint}: " + "; ".join(differences)
        )
    target_leaves, treedef = jax.tree.flatten(target)
    leaves = [
        layout_lib.from_host(v, spec, want.kind, t, placement, memory=memory(spec))
        for v, spec, want, t in zip(
            values, description.leaves, wanted.leaves, target_leaves, strict=True
        )
    ]
    return jax.tree.unflatten(treedef, leaves)


def _is_under(path: str, roots: tuple[str, ...]) -> bool:
    """Whether the leaf path ``path`` is one of ``roots`` or below one of them."""
    return any(path == root or path.startswith((root + "[", root + ".")) for root in roots)


def _accept_abstract_scalars(
    saved: ts.TreeDescription, wanted: ts.TreeDescription, target: Any
) -> ts.TreeDescription:
    """Lets a 0-d ``ShapeDtypeStruct`` stand for a saved Python scalar (``jax.eval_shape``
    turns Python ints into int32 structs); the result keeps the saved Python type."""
    saved_by_path = {leaf.path: leaf for leaf in saved.leaves}
    leaves = []
    for spec, leaf in zip(wanted.leaves, jax.tree.leaves(target), strict=True):
        old = saved_by_path.get(spec.path)
        abstract = isinstance(leaf, jax.ShapeDtypeStruct) and spec.kind == ts.JAX_ARRAY
        if old is not None and old.kind in _PY_KINDS and abstract and spec.shape == ():
            spec = old
        leaves.append(spec)
    return ts.TreeDescription(wanted.nodes, tuple(leaves))


def _matches_params(
    step: int, directory: Path, saved: ts.TreeDescription, wanted: ts.TreeDescription
) -> bool:
    try:
        params, _ = _params_subtree(step, directory, saved, [])
    except ValueError:
        return False
    return not ts.diff_descriptions(params, wanted)


def _params_subtree(
    step: int, directory: Path, description: ts.TreeDescription, values: list[np.ndarray]
) -> tuple[ts.TreeDescription, list[np.ndarray]]:
    """The ``params`` child of the saved root: its description (paths re-rooted), values."""
    for child in description.nodes.get("children", []):
        path = child.get("path")
        if path in _PARAMS_PATHS:
            break
    else:
        raise ValueError(
            f"{_FN}: params_only needs a state with a params field or key; "
            f"checkpoint step {step} in {directory} has none at its root"
        )
    indices = [
        i
        for i, leaf in enumerate(description.leaves)
        if leaf.path == path or leaf.path.startswith((path + "[", path + "."))
    ]
    offset = indices[0] if indices else 0

    def reroot(node: dict[str, Any]) -> dict[str, Any]:
        if "leaf" in node:
            return {"leaf": node["leaf"] - offset}
        out = dict(node, children=[reroot(c) for c in node["children"]])
        out["path"] = node["path"][len(path) :]
        return out

    leaves = tuple(
        ts.LeafSpec(leaf.path[len(path) :], leaf.kind, leaf.shape, leaf.dtype, leaf.key_impl)
        for leaf in (description.leaves[i] for i in indices)
    )
    chosen = [values[i] for i in indices] if values else []
    return ts.TreeDescription(reroot(child), leaves), chosen
