"""Trace-time check that an optimizer update is correct when its leaves are ZeRO shards.

Under ZeRO each device runs the optimizer on its slice of every (flattened, padded) leaf.
Element-wise math needs nothing; any reduction over a leaf or the tree (a global norm for
clipping, LAMB/LARS trust ratios) sees only the local slice and must be completed with a
``psum`` over the data axis. A transform built without ``axis_name`` (or optax's own
clipping) silently uses the per-shard value instead.

:func:`check_shard_reductions` traces the update to a jaxpr once and follows every value
derived from the sharded inputs:

- a reduction of such a value (``reduce_*``, ``argmax``, ``dot_general``, cumulative ops,
  ``sort``) is *partial* until a ``psum`` over the axis completes it;
- a partial value that reaches an output is an error (the missing ``axis_name``);
- a ``psum`` over the axis of a value that does not depend on the sharded data (an element
  count, as in ``clip_by_block_rms``) is an error too: under ZeRO it counts padded
  elements, so the result would depend on the device count.

The check cannot see reductions that are correct only for a leaf's logical shape
(``adaptive_grad_clip`` reduces over unit axes a flat shard no longer has): those
transforms are documented as unsupported under ZeRO.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.extend import core as jex_core

__all__ = ["ShardReductionError", "check_shard_reductions"]

_CLEAN, _SHARD, _PARTIAL = 0, 1, 2

_REDUCING = frozenset(
    {
        "argmax",
        "argmin",
        "dot_general",
        "cumsum",
        "cumprod",
        "cummax",
        "cummin",
        "cumlogsumexp",
        "sort",
        "top_k",
    }
)
_SUMMING = frozenset({"psum", "psum_invariant", "pmax", "pmin"})
_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "remat", "checkpoint"})
_CUSTOM = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})


class ShardReductionError(ValueError):
    """Raised when an update reduces over sharded leaves without completing it on the axis."""


def _is_reduction(name: str) -> bool:
    return (name.startswith("reduce_") and name != "reduce_precision") or name in _REDUCING


def _axes_of(params: dict[str, Any]) -> tuple[Any, ...]:
    axes = params.get("axes", params.get("axis_name", ()))
    return axes if isinstance(axes, tuple) else (axes,)


def _sub_jaxprs(params: dict[str, Any]) -> list[Any]:
    found = []
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jex_core.ClosedJaxpr):
                found.append(item.jaxpr)
            elif isinstance(item, jex_core.Jaxpr):
                found.append(item)
    return found


def _analyse(jaxpr: Any, taints: Sequence[int], axis_name: str, problems: list[str]) -> list[int]:
    env: dict[Any, int] = {}

    def read(var: Any) -> int:
        return _CLEAN if isinstance(var, jex_core.Literal) else env.get(var, _CLEAN)

    for var, taint in zip(jaxpr.invars, taints, strict=True):
        env[var] = taint
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        ins = [read(v) for v in eqn.invars]
        worst = max(ins, default=_CLEAN)
        subs = _sub_jaxprs(eqn.params)
        if name in _SUMMING and axis_name in _axes_of(eqn.params):
            if worst == _CLEAN:
                problems.append(
                    f"{name} over {axis_name!r} of a value that does not depend on the sharded "
                    "leaves (an element or device count?); under ZeRO it would count padded "
                    "elements, so the result depends on the number of devices"
                )
            outs = [_CLEAN] * len(eqn.outvars)
        elif subs and (name in _CALLS or name in _CUSTOM) and len(subs[0].invars) == len(ins):
            outs = _analyse(subs[0], ins, axis_name, problems)
        elif subs:
            for sub in subs:
                _analyse(sub, [worst] * len(sub.invars), axis_name, problems)
            outs = [worst] * len(eqn.outvars)
        elif worst >= _SHARD and _is_reduction(name):
            outs = [_PARTIAL] * len(eqn.outvars)
        else:
            outs = [worst] * len(eqn.outvars)
        for var, taint in zip(eqn.outvars, outs, strict=True):
            env[var] = taint
    return [read(v) for v in jaxpr.outvars]


def check_shard_reductions(
    fn: Callable[..., Any],
    args: Sequence[Any],
    sharded: Sequence[Any],
    axis_name: str,
    *,
    context: str = "zero",
) -> None:
    """Raises :class:`ShardReductionError` if ``fn(*args)`` leaves a reduction incomplete.

    Must be called where ``axis_name`` is bound (inside ``shard_map``), since the trace of
    ``fn`` contains the collectives over it.

    Args:
        fn: the function to check, e.g. an optimizer's ``update``.
        args: its arguments (arrays, tracers or shape/dtype structs, in pytrees).
        sharded: a pytree of bools, a prefix of ``args``: True where the leaves are shards
            of larger logical arrays.
        axis_name: the mesh axis the shards are split over.
        context: prefix of the error message.

    Returns:
        None.

    Raises:
        ShardReductionError: naming the output tree path a partial reduction reaches, or the
            layout-dependent collective.

    Example:
        >>> import jax, jax.numpy as jnp, scirs2_optim_jax as so
        >>> from jax.sharding import PartitionSpec as P
        >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        >>> tx = so.clip_by_global_norm(1.0)  # no axis_name: wrong on shards
        >>> def probe(g):
        ...     check_shard_reductions(tx.update, (g, tx.init(g)), (True, False), "data")
        ...     return g
        >>> jax.shard_map(probe, mesh=mesh, in_specs=P("data"), out_specs=P("data"))(
        ...     jnp.ones(4))
        Traceback (most recent call last):
        ...
        scirs2_optim_jax.parallel.reductions.ShardReductionError: zero: ...
    """
    flat_args, in_tree = jax.tree.flatten(args)
    marks, marks_def = jax.tree.flatten(sharded)
    try:
        subtrees = marks_def.flatten_up_to(args)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{context}: sharded must be a prefix of args: {err}") from None
    flat_sharded = [m for m, sub in zip(marks, subtrees, strict=True) for _ in jax.tree.leaves(sub)]

    def flat_fn(*leaves: Any) -> Any:
        return fn(*jax.tree.unflatten(in_tree, leaves))

    try:
        closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*flat_args)
    except NameError as err:
        raise ShardReductionError(
            f"{context}: the optimizer uses a mesh axis that is not bound here ({err}); build "
            f"its reducing transforms with axis_name={axis_name!r}"
        ) from None
    problems: list[str] = []
    taints = [_SHARD if s else _CLEAN for s in flat_sharded]
    outs = _analyse(closed.jaxpr, taints, axis_name, problems)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(out_shape)[0]]
    for path, taint in zip(paths, outs, strict=True):
        if taint == _PARTIAL:
            problems.append(
                f"the output at {path or '<root>'} depends on a reduction over the local "
                f"shard that is never summed over {axis_name!r}"
            )
    if problems:
        raise ShardReductionError(
            f"{context}: the optimizer is not correct on sharded leaves: {problems[0]}. Build "
            f"every reducing transform (clip_by_global_norm, clip_by_leaf_norm, lamb, lars, "
            f"scale_by_trust_ratio, ...) with axis_name={axis_name!r}; transforms that count "
            "elements or need a leaf's shape (clip_by_block_rms, adaptive_grad_clip) cannot "
            "run on ZeRO shards: use them with plain data parallelism"
        )
