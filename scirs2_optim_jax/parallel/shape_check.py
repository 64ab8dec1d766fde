"""Trace-time check that an optimizer computes on ZeRO's flat slices what it computes whole.

ZeRO hands the inner optimizer each leaf as a flat 1-D slice. An element-wise optimizer
cannot tell; one whose math depends on a leaf's shape (``optax.contrib.muon`` orthogonalises
matrices, ``optax.adafactor`` factors rows and columns, ``adaptive_grad_clip`` takes norms
over a leaf's unit axes) silently computes something else. The reduction check
(:mod:`~scirs2_optim_jax.parallel.reductions`) cannot see this: nothing is reduced
wrongly, the shapes are simply not the logical ones.

:func:`check_shard_shapes` runs the optimizer twice on random data of the leaves' shapes,
with the same tree structure and dtypes: once on whole leaves, once on N simulated devices
(a ``vmap`` bound to the data axis) in the ZeRO layout, with the
:class:`~scirs2_optim_jax.parallel.zero_layout.ZeroLayout` installed as the real run has
it; two steps each, so that the state is exercised too. It raises
:class:`ShardShapeError` naming the transformation when the updates differ. The
transformations of this package that depend on shapes (``muon``, ``adafactor`` and their
parts) read the layout and pass; optax's do not, and are refused.

To keep the check small, every dimension above 160 is shrunk to 160 (still above the
thresholds shapes are usually compared with, such as Adafactor's 128); the check runs once
per optimizer and set of leaf shapes, on the host CPU, in a separate thread so that it does
not enter the step being traced. A transformation whose dependence on shape only shows for
data the random probe does not produce, or only above 160 elements per axis, can escape it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import math
import types
import weakref
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scirs2_optim_jax.parallel.layout import padded_size
from scirs2_optim_jax.parallel.unit_axis import with_unit_axis
from scirs2_optim_jax.parallel.zero_layout import ZeroLayout
from scirs2_optim_jax.transforms.shard_layout import use_layout

__all__ = ["ShardShapeError", "check_shard_shapes", "shape_dependent_parts"]

PROBE_MAX_DIM = 160
RTOL = 1e-3
ATOL = 1e-6

# Functions whose math depends on a leaf's shape, named in the error when found inside the
# optimizer (optax's and others'; this package's read the layout and pass the check).
_SHAPE_DEPENDENT = (
    "scale_by_muon",
    "scale_by_shape",
    "orthogonalize_via_newton_schulz",
    "scale_by_factored_rms",
    "clip_by_block_rms",
    "scale_by_param_block_rms",
    "adaptive_grad_clip",
    "unitwise_norm",
    "add_noise",
)


# This package's shape-dependent transformations, which read the ZeRO layout.
_LAYOUT_AWARE = ("scirs2_optim_jax.transforms.muon", "scirs2_optim_jax.transforms.factored")


class ShardShapeError(ValueError):
    """Raised when an optimizer's updates on ZeRO slices differ from those on whole leaves."""


_CACHE: weakref.WeakKeyDictionary[Any, dict[Any, str | None]] = weakref.WeakKeyDictionary()


def _probe_struct(x: Any) -> jax.ShapeDtypeStruct:
    shape = tuple(min(int(d), PROBE_MAX_DIM) for d in np.shape(x))
    return jax.ShapeDtypeStruct(shape, jnp.result_type(x))


def _random_tree(structs: Any, seed: int, spread: bool) -> Any:
    rng = np.random.default_rng(seed)

    def leaf(s: jax.ShapeDtypeStruct) -> np.ndarray:
        if not jnp.issubdtype(s.dtype, jnp.floating):
            return np.zeros(s.shape, s.dtype)
        values = rng.standard_normal(s.shape)
        if spread:  # magnitudes over four decades: thresholds somewhere get crossed
            values = values * 10.0 ** rng.uniform(-2.0, 2.0, s.shape)
        return np.asarray(values, dtype=s.dtype)

    return jax.tree.map(leaf, structs)


def _slice_tree(tree: Any, axis_name: str, pad_to: int) -> Any:
    n = jax.lax.axis_size(axis_name)
    index = jax.lax.axis_index(axis_name)

    def cut(x: jax.Array) -> jax.Array:
        total = padded_size(x.size, pad_to)
        total = -(-total // n) * n
        flat = jnp.pad(x.reshape(-1), (0, total - x.size))
        return jax.lax.dynamic_slice_in_dim(flat, index * (total // n), total // n)

    return jax.tree.map(cut, tree)


def _gather_tree(slices: Any, like: Any, axis_name: str) -> Any:
    def join(s: jax.Array, x: Any) -> jax.Array:
        whole = jax.lax.all_gather(s, axis_name, tiled=True)
        return whole[: math.prod(np.shape(x))].reshape(np.shape(x))

    return jax.tree.map(join, slices, like)


@contextlib.contextmanager
def _same_numerics(settings: dict[str, Any]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        stack.enter_context(jax.numpy_dtype_promotion(settings["promotion"]))
        if settings["x64"]:
            stack.enter_context(jax.enable_x64(True))
        yield


def _run_probe(
    tx: optax.GradientTransformation,
    structs: Any,
    extra: dict[str, Any],
    axis_name: str,
    num_shards: int,
    pad_to: int,
) -> tuple[list[Any], list[Any]]:
    params = _random_tree(structs, 0, spread=False)
    grads = [_random_tree(structs, seed, spread=True) for seed in (1, 2)]
    update = functools.partial(optax.with_extra_args_support(tx).update, **extra)

    def whole(p: Any, g1: Any, g2: Any) -> list[Any]:
        state = tx.init(p)
        u1, state = with_unit_axis(update, axis_name)(g1, state, p)
        u2, _ = with_unit_axis(update, axis_name)(g2, state, p)
        return [u1, u2]

    def sliced(p: Any, g1: Any, g2: Any) -> list[Any]:
        def device(_: jax.Array) -> list[Any]:
            with use_layout(ZeroLayout(structs, axis_name)):
                ps = _slice_tree(p, axis_name, pad_to)
                state = tx.init(ps)
                u1, state = update(_slice_tree(g1, axis_name, pad_to), state, ps)
                u2, _ = update(_slice_tree(g2, axis_name, pad_to), state, ps)
            return [_gather_tree(u, p, axis_name) for u in (u1, u2)]

        out = jax.vmap(device, axis_name=axis_name, axis_size=num_shards)(jnp.arange(num_shards))
        return jax.tree.map(lambda x: x[0], out)

    cpu = jax.local_devices(backend="cpu")[0]
    args = jax.device_put((params, *grads), cpu)
    return jax.jit(whole)(*args), jax.jit(sliced)(*args)


def _difference(reference: list[Any], got: list[Any]) -> str | None:
    for step, (want_tree, got_tree) in enumerate(zip(reference, got, strict=True), start=1):
        pairs = zip(
            jax.tree_util.tree_flatten_with_path(want_tree)[0],
            jax.tree.leaves(got_tree),
            strict=True,
        )
        for (path, want), have in pairs:
            want = np.asarray(want, np.float64)
            have = np.asarray(have, np.float64)
            if want.shape != have.shape:
                return f"shape {have.shape} instead of {want.shape} at {jax.tree_util.keystr(path)}"
            same_nan = np.array_equal(np.isnan(want), np.isnan(have))
            finite = np.isfinite(want) & np.isfinite(have)
            scale = float(np.max(np.abs(want[finite]), initial=0.0))
            err = float(np.max(np.abs(want[finite] - have[finite]), initial=0.0))
            if not same_nan or err > RTOL * scale + ATOL:
                where = jax.tree_util.keystr(path) or "<root>"
                return (
                    f"max difference {err:.3g} (largest update {scale:.3g}) at {where} in "
                    f"step {step}"
                )
    return None


def _function_name(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}.{fn.__qualname__.split('.<locals>')[0]}"


def _reachable_functions(fn: Any, depth: int = 8) -> list[Any]:
    """Functions reachable from ``fn`` through closures and containers, outermost first."""
    found: list[Any] = []
    seen: set[int] = set()

    def visit(obj: Any, level: int) -> None:
        if level > depth or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, functools.partial):
            visit(obj.func, level)
            return
        if isinstance(obj, types.MethodType):
            obj = obj.__func__
        if isinstance(obj, types.FunctionType):
            found.append(obj)
            for cell in obj.__closure__ or ():
                with contextlib.suppress(ValueError):
                    visit(cell.cell_contents, level + 1)
        elif isinstance(obj, tuple | list):
            for item in obj:
                visit(item, level + 1)
        elif isinstance(obj, dict):
            for item in obj.values():
                visit(item, level + 1)

    visit(fn, 0)
    return found


def shape_dependent_parts(tx: optax.GradientTransformation) -> list[str]:
    """Names of the known shape-dependent functions inside ``tx`` (outermost first),
    leaving out this package's, which read the ZeRO layout.

    Example:
        >>> import optax
        >>> shape_dependent_parts(optax.adafactor(0.1))[:2]
        ['optax._src.factorized.scale_by_factored_rms', 'optax.transforms._clipping.clip_by_block_rms']
    """  # noqa: E501
    names = []
    for fn in _reachable_functions(tx.update):
        short = fn.__qualname__.split(".<locals>")[0]
        if short in _SHAPE_DEPENDENT and not fn.__module__.startswith(_LAYOUT_AWARE):
            name = _function_name(fn)
            if name not in names:
                names.append(name)
    return names


def _name_the_culprit(tx: optax.GradientTransformation) -> str:
    functions = _reachable_functions(tx.update)
    outer = _function_name(functions[0]) if functions else repr(tx)
    parts = shape_dependent_parts(tx)
    if not parts:
        return outer
    return parts[0] if parts[0] == outer else f"{parts[0]} (inside {outer})"


def check_shard_shapes(
    tx: optax.GradientTransformation,
    params_like: Any,
    num_shards: int,
    axis_name: str = "data",
    *,
    extra_args: dict[str, Any] | None = None,
    pad_to: int | None = None,
    context: str = "zero",
) -> None:
    """Raises :class:`ShardShapeError` if ``tx`` is not exact on ZeRO slices of
    ``params_like``'s leaves; see the module doc.

    Args:
        tx: the inner optimizer.
        params_like: the parameters (arrays, tracers or shape/dtype structs).
        num_shards: the size of the data axis (the slices are ``ceil(size / N)`` long).
        axis_name: the data axis (the optimizer's reducing transforms use it).
        extra_args: extra arguments of ``tx.update`` (random stand-ins of their shapes are
            used).
        pad_to: pad each flat leaf to a multiple of this (default: ``num_shards``); the GSPMD
            path passes its mesh size with ``num_shards=1``.
        context: prefix of the error message.

    Returns:
        None.

    Raises:
        ShardShapeError: naming the transformation, where and by how much the updates differ.

    Example:
        >>> import jax, jax.numpy as jnp, optax, scirs2_optim_jax as so
        >>> params = {"w": jnp.ones((4, 6)), "b": jnp.ones(6)}
        >>> check_shard_shapes(so.muon(0.1), params, 4)  # exact: returns None
        >>> with jax.numpy_dtype_promotion("standard"):  # optax's code needs it
        ...     check_shard_shapes(optax.contrib.muon(0.1), params, 4)
        Traceback (most recent call last):
        ...
        scirs2_optim_jax.parallel.shape_check.ShardShapeError: zero: optax.contrib._muon.scale_by_muon ...
    """  # noqa: E501
    structs = jax.tree.map(_probe_struct, params_like)
    extra = dict(extra_args or {})
    extra_structs = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), extra
    )
    pad = num_shards if pad_to is None else pad_to
    key = (
        jax.tree.structure(structs),
        tuple((s.shape, s.dtype) for s in jax.tree.leaves(structs)),
        jax.tree.structure(extra_structs),
        tuple((s.shape, s.dtype) for s in jax.tree.leaves(extra_structs)),
        num_shards,
        pad,
        axis_name,
    )
    try:
        cache = _CACHE.setdefault(tx.update, {})
    except TypeError:  # not weak-referenceable: no cache
        cache = {}
    if key not in cache:
        settings = {
            "promotion": jax.config.jax_numpy_dtype_promotion,
            "x64": bool(jax.config.jax_enable_x64),
        }
        extra_values = _random_tree(extra_structs, 3, spread=False)

        def probe() -> str | None:
            with _same_numerics(settings):
                reference, got = _run_probe(tx, structs, extra_values, axis_name, num_shards, pad)
            return _difference(reference, got)

        # A fresh thread: the probe is a separate computation, outside the trace in progress.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            try:
                cache[key] = pool.submit(probe).result()
            except Exception as err:
                raise ShardShapeError(
                    f"{context}: could not check that {_name_the_culprit(tx)} is exact on ZeRO's "
                    f"flat slices: running it on random data of the leaves' shapes failed with "
                    f"{type(err).__name__}: {err}. Pass check=False to skip the check"
                ) from err
    problem = cache[key]
    if problem is not None:
        raise ShardShapeError(
            f"{context}: {_name_the_culprit(tx)} is not exact on ZeRO's flat slices: its "
            f"updates differ from those on whole leaves ({problem}), so it depends on the "
            "leaves' shapes. Run it with zero_stage=0 (plain data parallelism), or use an "
            "optimizer of this package that supports ZeRO (so.muon, so.adafactor)"
        )
