"""Muon: momentum orthogonalised by a Newton-Schulz iteration, with AdamW for the rest.

For every matrix-shaped parameter, Muon keeps a momentum of the gradients and steps along
an approximately orthogonal matrix with the same singular vectors: ``U V^T`` of the
momentum's ``U S V^T``, computed without a decomposition by a few iterations of the odd
polynomial ``a X + b (X X^T) X + c (X X^T)^2 X`` on the Frobenius-normalised momentum.
Leaves that are not matrices (biases, scales, embeddings if you say so) go to AdamW.

The pieces follow ``optax.contrib`` 0.2.8 (``orthogonalize_via_newton_schulz``,
``scale_by_muon``, ``scale_by_shape``, ``muon``): same arguments and defaults, same
results. They are written with :mod:`~scirs2_optim_jax.transforms.shard_layout`, so under
ZeRO (``scirs2_optim_jax.parallel``) each matrix is orthogonalised whole, once, on one
device, while the momentum stays sharded.

Reference: Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024;
Liu et al., "Muon is Scalable for LLM Training", 2025.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.transforms.adaptive import scale_by_adam
from scirs2_optim_jax.transforms.learning_rate import scale_by_learning_rate
from scirs2_optim_jax.transforms.masking import Mask
from scirs2_optim_jax.transforms.moments import (
    as_dtype,
    bias_correction,
    compute_dtype,
    safe_increment,
)
from scirs2_optim_jax.transforms.shard_layout import (
    is_masked,
    logical_mask,
    logical_shapes,
    map_whole_leaves,
)
from scirs2_optim_jax.transforms.weight_decay import add_decayed_weights

__all__ = [
    "MuonDimensionNumbers",
    "MuonState",
    "muon",
    "orthogonalize_via_newton_schulz",
    "scale_by_muon",
    "scale_by_shape",
]

MuonDimensionNumbers = optax.contrib.MuonDimensionNumbers
"""Which axes of a leaf are the matrix's reduction (input) and output axes; the others are
batch axes, each slice orthogonalised on its own. optax's own class, so specs built for
``optax.contrib.muon`` work here unchanged."""

DEFAULT_NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_COEFFS_PRESETS: dict[str, Any] = {
    "standard": DEFAULT_NS_COEFFS,
    "dion": (
        (4.0848, -6.8946, 2.9270),
        (3.9505, -6.3029, 2.6377),
        (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046),
        (2.8366, -3.0525, 1.2012),
    ),
}
PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")

DimensionSpec = Any  # MuonDimensionNumbers | pytree of them (None: not a matrix) | callable


def _coefficient_rows(fn: str, ns_coeffs: Any, ns_steps: Any) -> np.ndarray:
    """The Newton-Schulz coefficients as an ``(iterations, 3)`` float32 array."""
    if isinstance(ns_coeffs, str):
        v.check_one_of(fn, "ns_coeffs", ns_coeffs, tuple(NS_COEFFS_PRESETS))
        ns_coeffs = NS_COEFFS_PRESETS[ns_coeffs]
    try:
        coeffs = np.asarray(ns_coeffs, np.float32)
    except (TypeError, ValueError):
        raise TypeError(
            f"{fn}: ns_coeffs must be 3 numbers, rows of 3 numbers or a preset name "
            f"({', '.join(NS_COEFFS_PRESETS)}), got {ns_coeffs!r}"
        ) from None
    if coeffs.ndim not in (1, 2) or coeffs.shape[-1] != 3 or coeffs.size == 0:
        raise ValueError(f"{fn}: ns_coeffs must have shape (3,) or (n, 3), got {coeffs.shape}")
    if not np.all(np.isfinite(coeffs)):
        raise ValueError(f"{fn}: ns_coeffs must be finite, got {ns_coeffs!r}")
    steps = v.check_int(fn, "ns_steps", ns_steps, 1)
    if coeffs.ndim == 1:
        return np.tile(coeffs, (steps, 1))
    if coeffs.shape[0] > steps:
        raise ValueError(f"{fn}: ns_coeffs has {coeffs.shape[0]} rows, more than ns_steps={steps}")
    return coeffs


def _normalized_axes(
    ndim: int, dims: MuonDimensionNumbers
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(batch, reduction, output) axes of a rank-``ndim`` leaf, non-negative."""

    def as_tuple(axes: Any) -> tuple[int, ...]:
        axes = (axes,) if isinstance(axes, int) else tuple(axes)
        return tuple(a % ndim for a in axes)

    reduction, output = as_tuple(dims.reduction_axis), as_tuple(dims.output_axis)
    if set(reduction) & set(output):
        raise ValueError(
            f"muon: reduction axes {reduction} and output axes {output} of a rank-{ndim} "
            f"leaf must be disjoint (dimension numbers {dims})"
        )
    batch = tuple(a for a in range(ndim) if a not in reduction and a not in output)
    return batch, reduction, output


def _fans(shape: tuple[int, ...], dims: MuonDimensionNumbers) -> tuple[int, int]:
    _, reduction, output = _normalized_axes(len(shape), dims)
    return math.prod(shape[a] for a in reduction), math.prod(shape[a] for a in output)


def _newton_schulz(x: jax.Array, rows: jax.Array, preconditioning: str, eps: Any) -> jax.Array:
    """Approximately orthogonalises one matrix ``x`` (``m <= n`` after transposing)."""
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    eps_ = jnp.asarray(eps, x.dtype)
    if preconditioning == "frobenius":
        x = x / (jnp.linalg.norm(x, ord="fro") + eps_)
    elif preconditioning == "spectral":
        x = x / (jnp.linalg.norm(x, ord=2) + eps_)
    rows = rows.astype(x.dtype)
    for i in range(rows.shape[0]):
        a, b, c = rows[i, 0], rows[i, 1], rows[i, 2]
        gram = x @ x.T.conj()
        if i == 0 and preconditioning == "aol":
            scale = jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.abs(gram), axis=-1), eps_))[:, None]
            x = x * scale
            gram = gram * scale * scale.T
        elif i == 0 and preconditioning == "schatten":
            scale = jax.lax.rsqrt(jnp.maximum(jnp.linalg.norm(gram, ord="fro"), eps_))
            x = x * scale
            gram = gram * scale**2
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transposed else x


def orthogonalize_via_newton_schulz(
    x: jax.Array,
    ns_coeffs: Any,
    ns_steps: int = 5,
    preconditioning: str = "frobenius",
    eps: float = 1e-8,
    dimension_numbers: MuonDimensionNumbers | None = None,
) -> jax.Array:
    """``x`` with its singular values pushed towards 1 by Newton-Schulz iterations.

    The iteration is tuned for speed rather than convergence: the singular values end up
    roughly in [0.7, 1.2], which is what Muon needs.

    Args:
        x: a matrix, or any array with ``dimension_numbers``.
        ns_coeffs: ``(a, b, c)`` for every iteration, or one row per iteration
            (``(n, 3)``, then ``ns_steps`` is ignored).
        ns_steps: number of iterations with a single row of coefficients.
        preconditioning: scaling before the iterations: ``"frobenius"`` (divide by the
            Frobenius norm), ``"spectral"`` (by the largest singular value, via an SVD),
            ``"aol"`` or ``"schatten"`` (a rescaled first iteration).
        eps: added to the norms it divides by.
        dimension_numbers: the reduction and output axes of ``x``; the other axes are
            batch axes. Needed when ``x`` is not 2-D.

    Returns:
        An array of ``x``'s shape and dtype.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> g = jax.random.normal(jax.random.key(0), (4, 6))
        >>> o = orthogonalize_via_newton_schulz(g, jnp.array((3.4445, -4.7750, 2.0315)))
        >>> s = jnp.linalg.svd(o, compute_uv=False)
        >>> bool(jnp.all((s > 0.6) & (s < 1.3)))
        True
    """
    fn = "orthogonalize_via_newton_schulz"
    v.check_one_of(fn, "preconditioning", preconditioning, PRECONDITIONINGS)
    if dimension_numbers is None:
        if np.ndim(x) != 2:
            raise ValueError(
                f"{fn}: x must be a matrix unless dimension_numbers are given, got shape "
                f"{np.shape(x)}"
            )
        dimension_numbers = MuonDimensionNumbers()
    coeffs = jnp.asarray(ns_coeffs, jnp.float32)
    if coeffs.ndim not in (1, 2) or coeffs.shape[-1] != 3:
        raise ValueError(f"{fn}: ns_coeffs must have shape (3,) or (n, 3), got {coeffs.shape}")
    if coeffs.ndim == 1:
        steps = v.check_int(fn, "ns_steps", ns_steps, 1)
        coeffs = jnp.tile(coeffs, (steps, 1))
    return _orthogonalize_leaf(x, coeffs, preconditioning, eps, dimension_numbers)


def _orthogonalize_leaf(
    x: jax.Array, rows: jax.Array, preconditioning: str, eps: Any, dims: MuonDimensionNumbers
) -> jax.Array:
    """Reshapes ``x`` to ``(batch, reduction, output)``, orthogonalises each, reshapes back."""
    batch, reduction, output = _normalized_axes(x.ndim, dims)
    order = batch + reduction + output
    sizes = [math.prod(x.shape[a] for a in axes) for axes in (batch, reduction, output)]
    stacked = jnp.transpose(x, order).reshape(sizes)
    done = jax.vmap(lambda m: _newton_schulz(m, rows, preconditioning, eps))(stacked)
    return jnp.transpose(done.reshape([x.shape[a] for a in order]), np.argsort(order))


def _ns_cost(shape: tuple[int, ...], dims: MuonDimensionNumbers) -> float:
    batch, reduction, output = _normalized_axes(len(shape), dims)
    m, n = math.prod(shape[a] for a in reduction), math.prod(shape[a] for a in output)
    return float(math.prod(shape[a] for a in batch) * m * n * min(m, n))


def _is_spec_leaf(x: Any) -> bool:
    return x is None or isinstance(x, MuonDimensionNumbers) or is_masked(x)


def _dimension_numbers(fn: str, spec: DimensionSpec, tree: Any) -> tuple[list[Any], Any]:
    """Per leaf of ``tree`` (``MaskedNode`` positions included): its dimension numbers, None
    (not a matrix) or ``MaskedNode``; and the logical shapes of the leaves.

    ``spec`` None means every (unmasked) leaf is a matrix with the default axes.
    """
    shapes = logical_shapes(tree)
    flat_shapes = jax.tree.leaves(shapes, is_leaf=is_masked)
    if spec is None:
        return [s if is_masked(s) else MuonDimensionNumbers() for s in flat_shapes], flat_shapes
    resolved = spec(shapes) if callable(spec) else spec
    if isinstance(resolved, MuonDimensionNumbers):
        return [s if is_masked(s) else resolved for s in flat_shapes], flat_shapes
    try:
        expanded = jax.tree.map(
            lambda d, sub: jax.tree.map(lambda s: s if is_masked(s) else d, sub, is_leaf=is_masked),
            resolved,
            shapes,
            is_leaf=_is_spec_leaf,
        )
    except ValueError as err:
        raise ValueError(
            f"{fn}: muon_weight_dimension_numbers must be a MuonDimensionNumbers, None, or a "
            f"tree of them matching (a prefix of) the parameters: {err}"
        ) from None
    flat = jax.tree.leaves(expanded, is_leaf=_is_spec_leaf)
    if len(flat) != len(flat_shapes):
        raise ValueError(
            f"{fn}: muon_weight_dimension_numbers resolves to {len(flat)} leaves, the "
            f"parameters have {len(flat_shapes)}"
        )
    return flat, flat_shapes


class MuonState(NamedTuple):
    """State of :func:`scale_by_muon`: the step count and the momentum of the matrices."""

    count: jax.Array
    mu: optax.Updates


def scale_by_muon(
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    ns_steps: int = 5,
    beta: float = 0.95,
    eps: float = 1e-8,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
    weight_dimension_numbers: DimensionSpec = None,
) -> optax.GradientTransformation:
    """Momentum, bias-corrected (Nesterov by default), then orthogonalised per matrix.

    Args:
        ns_coeffs: Newton-Schulz coefficients ``(a, b, c)``, rows of them, or a preset
            name (``"standard"``, ``"dion"``); see :func:`orthogonalize_via_newton_schulz`.
        ns_steps: Newton-Schulz iterations (with a single row of coefficients), >= 1.
        beta: momentum decay, in [0, 1).
        eps: added to the norm the momentum is divided by, >= 0.
        mu_dtype: dtype of the momentum (None: the parameters').
        nesterov: step along ``beta * m + (1 - beta) * g`` (bias-corrected) instead of ``m``.
        adaptive: scale each result by ``<momentum, result>`` (the dual norm).
        preconditioning: ``"frobenius"``, ``"spectral"``, ``"aol"`` or ``"schatten"``.
        weight_dimension_numbers: the matrix axes of each leaf: None (every leaf is a
            matrix), a :class:`MuonDimensionNumbers`, a tree of them, or a callable of the
            parameters (shape/dtype structs of them under ZeRO) returning one.

    Returns:
        An ``optax.GradientTransformation`` whose state is a :class:`MuonState`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> tx = scale_by_muon()
        >>> g = {"w": jax.random.normal(jax.random.key(0), (3, 5))}
        >>> u, _ = tx.update(g, tx.init(g))
        >>> bool(jnp.all(jnp.linalg.svd(u["w"], compute_uv=False) > 0.6))
        True
    """
    fn = "scale_by_muon"
    rows = _coefficient_rows(fn, ns_coeffs, ns_steps)
    v.check_in_range(fn, "beta", beta, 0.0, 1.0)
    v.check_non_negative(fn, "eps", eps)
    mu_dtype = v.check_dtype(fn, "mu_dtype", mu_dtype)
    v.check_bool(fn, "nesterov", nesterov)
    v.check_bool(fn, "adaptive", adaptive)
    v.check_one_of(fn, "preconditioning", preconditioning, PRECONDITIONINGS)

    def init_fn(params: optax.Params) -> MuonState:
        mu = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), mu_dtype or jnp.result_type(p)), params)
        return MuonState(count=jnp.zeros([], jnp.int32), mu=mu)

    def update_fn(
        updates: optax.Updates, state: MuonState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, MuonState]:
        del params
        count = safe_increment(state.count)
        correction = bias_correction(beta, count)
        next_correction = bias_correction(beta, safe_increment(count))

        def new_moment(g: jax.Array, m: jax.Array) -> jax.Array:
            dtype = compute_dtype(g.dtype, m.dtype)
            # beta multiplies the stored momentum in its own dtype, as optax's does.
            return (1 - beta) * g.astype(dtype) + (as_dtype(beta, m.dtype) * m).astype(dtype)

        def corrected(m: jax.Array, g: jax.Array) -> jax.Array:
            if not nesterov:
                return m / correction.astype(m.dtype)
            g = g.astype(m.dtype)
            return beta * (m / next_correction.astype(m.dtype)) + (1 - beta) * (
                g / correction.astype(m.dtype)
            )

        moments = jax.tree.map(new_moment, updates, state.mu)
        mu_hat = jax.tree.map(corrected, moments, updates)
        mu = jax.tree.map(lambda m, old: m.astype(old.dtype), moments, state.mu)

        dims, shapes = _dimension_numbers(fn, weight_dimension_numbers, mu_hat)
        leaves, treedef = jax.tree.flatten(mu_hat, is_leaf=is_masked)
        picked = [i for i, d in enumerate(dims) if not is_masked(d)]
        for i in picked:
            if dims[i] is None:
                raise ValueError(
                    f"{fn}: leaf {i} of logical shape {shapes[i].shape} has no dimension "
                    "numbers (None); scale_by_muon orthogonalises every leaf it is given"
                )
            if len(shapes[i].shape) < 2:
                raise ValueError(
                    f"{fn}: leaf {i} has logical shape {shapes[i].shape}; Muon needs rank >= 2"
                )
        coeffs = jnp.asarray(rows)

        def whole_leaf(d: MuonDimensionNumbers) -> Callable[[jax.Array], jax.Array]:
            def run(x: jax.Array) -> jax.Array:
                out = _orthogonalize_leaf(x, coeffs, preconditioning, eps, d)
                if adaptive:
                    out = jnp.sum(x.conj() * out) * out
                return out

            return run

        results = map_whole_leaves(
            [whole_leaf(dims[i]) for i in picked],
            [leaves[i] for i in picked],
            [shapes[i].shape for i in picked],
            [_ns_cost(shapes[i].shape, dims[i]) for i in picked],
        )
        for i, out in zip(picked, results, strict=True):
            leaves[i] = out
        return jax.tree.unflatten(treedef, leaves), MuonState(count=count, mu=mu)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_shape(
    weight_dimension_numbers: DimensionSpec = None, consistent_rms: float | None = None
) -> optax.GradientTransformation:
    """Scales each matrix's update by a factor of its shape (Muon's width transfer).

    With ``consistent_rms`` None the factor is ``sqrt(max(1, fan_out / fan_in))``; with a
    number ``r`` it is ``r * sqrt(max(fan_in, fan_out))``, which gives updates an RMS close
    to AdamW's for ``r = 0.2``. ``fan_in`` and ``fan_out`` are the sizes of the reduction and
    output axes (the logical leaf's, under ZeRO).

    Args:
        weight_dimension_numbers: as for :func:`scale_by_muon`.
        consistent_rms: None or a finite number >= 0.

    Returns:
        A stateless ``optax.GradientTransformation``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = scale_by_shape()
        >>> u, _ = tx.update({"w": jnp.ones((2, 8))}, tx.init(None))
        >>> float(u["w"][0, 0])
        2.0
    """
    fn = "scale_by_shape"
    if consistent_rms is not None:
        v.check_non_negative(fn, "consistent_rms", consistent_rms)

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params
        dims, shapes = _dimension_numbers(fn, weight_dimension_numbers, updates)
        leaves, treedef = jax.tree.flatten(updates, is_leaf=is_masked)
        for i, (d, s) in enumerate(zip(dims, shapes, strict=True)):
            if is_masked(d) or d is None:
                continue
            fan_in, fan_out = _fans(s.shape, d)
            if consistent_rms is None:
                factor = jnp.sqrt(jnp.maximum(1.0, fan_out / fan_in))
            else:
                factor = jnp.sqrt(jnp.float32(max(fan_in, fan_out))) * consistent_rms
            leaves[i] = jnp.asarray(factor, leaves[i].dtype) * leaves[i]
        return jax.tree.unflatten(treedef, leaves), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _muon_labels(fn: str, spec: DimensionSpec) -> Callable[[Any], Any]:
    """``params -> tree of "muon" / "adam"``: matrices (or leaves with dimension numbers)
    to Muon, the rest to AdamW; shapes are the logical ones under ZeRO."""

    def labels(params: Any) -> Any:
        if spec is None:
            return jax.tree.map(
                lambda s: "muon" if len(s.shape) == 2 else "adam", logical_shapes(params)
            )
        dims, _ = _dimension_numbers(fn, spec, params)
        treedef = jax.tree.structure(params)
        return jax.tree.unflatten(treedef, ["adam" if d is None else "muon" for d in dims])

    return labels


def _muon_dims(spec: DimensionSpec) -> DimensionSpec:
    """The dimension numbers the Muon branch uses: the 2-D default or the user's spec."""
    return MuonDimensionNumbers() if spec is None else spec


def muon(
    learning_rate: Any,
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    ns_steps: int = 5,
    beta: float = 0.95,
    eps: float = 1e-8,
    weight_decay: Any = 0.0,
    weight_decay_mask: Mask = None,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps_root: float = 0.0,
    adam_weight_decay: Any = 0.0,
    adam_learning_rate: Any = None,
    muon_weight_dimension_numbers: DimensionSpec = None,
    consistent_rms: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Muon for matrices, AdamW for every other leaf; the arguments of ``optax.contrib.muon``.

    Matrix leaves: :func:`scale_by_muon` -> :func:`scale_by_shape` -> decoupled weight decay
    (``weight_decay``, ``weight_decay_mask``) -> learning rate. Other leaves:
    AdamW (:func:`~scirs2_optim_jax.transforms.scale_by_adam`, weight decay, learning rate)
    with ``adam_b1``, ``adam_b2``, ``eps``, ``adam_eps_root``, ``adam_weight_decay``,
    ``mu_dtype``, ``nesterov`` and ``adam_learning_rate`` (default: ``learning_rate``).

    Under ZeRO (``scirs2_optim_jax.parallel.zero``, ``make_data_parallel_step`` with
    ``zero_stage`` 1 or 2) the momentum and Adam moments stay sharded; each matrix is sent
    whole to one device, orthogonalised there once, and sent back as slices (two
    all-to-alls per step). No ``axis_name`` is needed: the ZeRO wrapper provides the layout.

    Args:
        learning_rate: a finite number >= 0 or a schedule.
        ns_coeffs, ns_steps, beta, eps, mu_dtype, nesterov, adaptive, preconditioning: see
            :func:`scale_by_muon` (``eps`` is also Adam's).
        weight_decay: decay of the matrices (>= 0 or a schedule), times the learning rate.
        weight_decay_mask: which matrices decay: None (all), a pytree of bools or a callable
            (called with shape/dtype structs of the parameters under ZeRO).
        adam_b1, adam_b2, adam_eps_root, adam_weight_decay, adam_learning_rate: the AdamW
            of the other leaves.
        muon_weight_dimension_numbers: which leaves are matrices and their axes: None (the
            2-D leaves), or a :class:`MuonDimensionNumbers`, a tree of them with None for
            the leaves that go to AdamW, or a callable of the parameters returning one.
        consistent_rms: see :func:`scale_by_shape`.

    Returns:
        An ``optax.GradientTransformationExtraArgs``.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
        >>> x = jax.random.normal(jax.random.key(0), (16, 4))
        >>> y = x @ jnp.arange(12.0).reshape(4, 3) / 10 + 1.0
        >>> loss = lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)
        >>> tx = muon(0.05)
        >>> state = tx.init(params)
        >>> for _ in range(200):
        ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> bool(loss(params) < 0.05)
        True

    Reference: Jordan et al., "Muon: An optimizer for hidden layers in neural networks",
    2024.
    """
    fn = "muon"
    with v.reraise_with_context(fn):
        v.check_learning_rate(fn, "learning_rate", learning_rate)
        if adam_learning_rate is not None:
            v.check_learning_rate(fn, "adam_learning_rate", adam_learning_rate)
        v.check_schedule_or_non_negative(fn, "weight_decay", weight_decay)
        v.check_mask(fn, "weight_decay_mask", weight_decay_mask)
        spec = muon_weight_dimension_numbers
        if not (spec is None or callable(spec) or isinstance(spec, MuonDimensionNumbers)):
            for path, leaf in jax.tree_util.tree_flatten_with_path(spec, is_leaf=_is_spec_leaf)[0]:
                if leaf is not None and not isinstance(leaf, MuonDimensionNumbers):
                    raise TypeError(
                        f"{fn}: muon_weight_dimension_numbers must hold MuonDimensionNumbers "
                        f"or None, got {type(leaf).__name__} at "
                        f"{jax.tree_util.keystr(path) or '<root>'}"
                    )
        dims = _muon_dims(spec)
        matrices = optax.chain(
            scale_by_muon(
                ns_coeffs,
                ns_steps,
                beta,
                eps,
                mu_dtype,
                nesterov=nesterov,
                adaptive=adaptive,
                preconditioning=preconditioning,
                weight_dimension_numbers=dims,
            ),
            scale_by_shape(dims, consistent_rms),
            add_decayed_weights(weight_decay, logical_mask(weight_decay_mask)),
            scale_by_learning_rate(learning_rate),
        )
        others = optax.chain(
            scale_by_adam(adam_b1, adam_b2, eps, adam_eps_root, mu_dtype, nesterov=nesterov),
            add_decayed_weights(adam_weight_decay),
            scale_by_learning_rate(
                learning_rate if adam_learning_rate is None else adam_learning_rate
            ),
        )
    return optax.partition({"muon": matrices, "adam": others}, _muon_labels(fn, spec))
