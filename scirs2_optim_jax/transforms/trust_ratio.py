"""Layer-wise trust ratios: LAMB's and LARS's ``||param|| / ||update||`` per leaf.

Both norms are of whole logical leaves: with ``axis_name`` set, the partial sums of
squares of the local shards are added across that mesh axis before the square root.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.transforms.description import ScaleByTrustRatio, describe
from scirs2_optim_jax.transforms.masking import Mask, mask_leaves
from scirs2_optim_jax.transforms.moments import as_dtype, compute_dtype
from scirs2_optim_jax.transforms.norms import AxisName, leaf_sum_of_squares

__all__ = ["scale_by_lars_trust_ratio", "scale_by_trust_ratio"]


def _scale_by_trust_ratios(
    updates: list[jax.Array],
    params: list[jax.Array],
    min_norm: Any,
    trust_coefficient: Any,
    eps: Any,
    axis_name: AxisName,
) -> list[jax.Array]:
    """Scales each update by its leaf's trust ratio, all ratios computed in one vector op.

    Per leaf only the two sums of squares are separate reductions; the square roots, the
    ratio and the zero-norm guard run once over a ``(leaves, 2)`` array (a handful of
    scalar kernels per leaf cost more than the reductions on XLA CPU), and when sharded a
    single ``psum`` carries every leaf's sums.
    """
    sums = [
        jnp.stack([leaf_sum_of_squares(p), leaf_sum_of_squares(u)])
        for u, p in zip(updates, params, strict=True)
    ]
    dtype = compute_dtype(*(x.dtype for x in sums))
    table = jnp.stack([x.astype(dtype) for x in sums])
    if axis_name is not None:
        table = jax.lax.psum(table, axis_name)
    norms = jnp.maximum(jnp.sqrt(table), as_dtype(min_norm, dtype))
    param_norm, update_norm = norms[:, 0], norms[:, 1]
    ratios = trust_coefficient * param_norm / (update_norm + eps)
    ratios = jnp.where((param_norm == 0.0) | (update_norm == 0.0), 1.0, ratios)
    return [u * ratios[i].astype(u.dtype) for i, u in enumerate(updates)]


def _trust_ratio_transform(
    fn: str, min_norm: Any, trust_coefficient: Any, eps: Any, mask: Mask, axis_name: AxisName
) -> optax.GradientTransformation:
    v.check_non_negative(fn, "min_norm", min_norm)
    v.check_positive(fn, "trust_coefficient", trust_coefficient)
    v.check_non_negative(fn, "eps", eps)
    v.check_mask(fn, "mask", mask)

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        if params is None:
            raise ValueError(f"{fn}: update needs params (call tx.update(updates, state, params))")
        v.check_tree_matches(fn, updates, params, ref_name="params")
        leaves, treedef = jax.tree.flatten(updates)
        param_leaves = treedef.flatten_up_to(params)
        chosen = [i for i, keep in enumerate(mask_leaves(mask, params, updates)) if keep]
        if chosen:
            scaled = _scale_by_trust_ratios(
                [leaves[i] for i in chosen],
                [param_leaves[i] for i in chosen],
                min_norm,
                trust_coefficient,
                eps,
                axis_name,
            )
            for i, leaf in zip(chosen, scaled, strict=True):
                leaves[i] = leaf
        return treedef.unflatten(leaves), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def scale_by_trust_ratio(
    min_norm: float = 0.0,
    trust_coefficient: float = 1.0,
    eps: float = 0.0,
    *,
    mask: Mask = None,
    axis_name: AxisName = None,
) -> optax.GradientTransformation:
    """Scales each leaf's update by ``trust_coefficient * ||param|| / (||update|| + eps)``.

    Norms are clipped below at ``min_norm``; where either norm is zero the ratio is 1, so a
    fresh zero-initialised leaf still moves. This is LAMB's layer adaptation.

    Args:
        min_norm: lower bound for both norms, >= 0.
        trust_coefficient: multiplier of the ratio, > 0.
        eps: added to the update norm, >= 0.
        mask: which leaves are scaled (None: all); see :func:`add_decayed_weights`.
        axis_name: mesh axis over which leaves are sharded (inside ``shard_map``/``pmap``),
            so the norms are those of the whole leaves.

    Returns:
        An ``optax.GradientTransformation``; it needs ``params`` in ``update``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = scale_by_trust_ratio()
        >>> params = {"w": jnp.array([3.0, 4.0])}
        >>> updates, _ = tx.update({"w": jnp.array([0.0, 0.5])}, tx.init(params), params)
        >>> [float(x) for x in updates["w"]]
        [0.0, 5.0]

    Reference: You et al., "Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes", 2020.
    """
    tx = _trust_ratio_transform(
        "scale_by_trust_ratio", min_norm, trust_coefficient, eps, mask, axis_name
    )
    return describe(tx, ScaleByTrustRatio(min_norm, trust_coefficient, eps, mask, axis_name))


def scale_by_lars_trust_ratio(
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    *,
    mask: Mask = None,
    axis_name: AxisName = None,
) -> optax.GradientTransformation:
    """LARS's layer-wise rate: ``trust_coefficient * ||param|| / (||update|| + eps)``.

    Args:
        trust_coefficient: LARS's ``eta``, > 0.
        eps: added to the update norm, >= 0.
        mask: which leaves are scaled (None: all). LARS usually leaves biases and
            normalisation parameters out.
        axis_name: mesh axis over which leaves are sharded.

    Returns:
        An ``optax.GradientTransformation``; it needs ``params`` in ``update``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = scale_by_lars_trust_ratio(trust_coefficient=0.1)
        >>> params = {"w": jnp.array([3.0, 4.0])}
        >>> updates, _ = tx.update({"w": jnp.array([1.0, 0.0])}, tx.init(params), params)
        >>> [round(float(x), 4) for x in updates["w"]]
        [0.5, 0.0]

    Reference: You et al., "Large Batch Training of Convolutional Networks", 2017.
    """
    return _trust_ratio_transform(
        "scale_by_lars_trust_ratio", 0.0, trust_coefficient, eps, mask, axis_name
    )
