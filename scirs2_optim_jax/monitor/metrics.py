"""In-step metrics: a small pytree of scalars computed inside the jitted step.

:func:`step_metrics` is pure and cheap: a few reductions over trees the step already holds,
fused by XLA into the step, and returned with the new parameters. Nothing in it talks to the
host; the host reads the returned scalars later (see :class:`~scirs2_optim_jax.monitor.run.
RunMonitor`), so monitoring adds no synchronisation to the step.

Sharded steps pass ``axis_name``: norms and non-finite counts are then reduced across that
mesh axis (the leaves being shards, as under ZeRO), and the loss, which every device computes
on its own slice of the batch, is averaged over ``batch_axis_name`` (by default the same axis).
Every device then holds the values the unsharded step would compute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from scirs2_optim_jax.resilience import count_nonfinite, guard_metrics
from scirs2_optim_jax.transforms.norms import AxisName, global_norm, leaf_sum_of_squares

__all__ = ["layer_norms", "learning_rate_from_state", "step_metrics"]

_INJECTED = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


def learning_rate_from_state(opt_state: Any, name: str = "learning_rate") -> jax.Array | None:
    """The learning rate injected by ``optax.inject_hyperparams``, found anywhere in the state.

    Args:
        opt_state: an optimizer state (leaves may be arrays or ``nnx`` variables).
        name: the hyperparameter's name.

    Returns:
        The value as a float32 scalar, or None when no injected state holds ``name``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> import scirs2_optim_jax as so
        >>> tx = optax.inject_hyperparams(so.sgd)(learning_rate=0.25)
        >>> float(learning_rate_from_state(tx.init({"w": jnp.zeros(2)})))
        0.25
    """
    nodes = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, _INJECTED))
    for node in nodes:
        if isinstance(node, _INJECTED) and name in node.hyperparams:
            return jnp.asarray(node.hyperparams[name]).astype(jnp.float32)
    return None


def _layer_name(path: tuple[Any, ...]) -> str:
    keys = list(path)
    # nnx variables flatten to (..., 'kernel', .value): the attribute is not part of the name.
    while keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
        keys.pop()
    layer = keys[:-1] if len(keys) > 1 else keys
    return jax.tree_util.keystr(tuple(layer), simple=True, separator="/") or "<root>"


def layer_norms(tree: Any, axis_name: AxisName = None) -> dict[str, jax.Array]:
    """L2 norm per layer: the leaves that share a parent in the tree are one layer.

    A layer is named by its path without the last key, ``/``-separated (``hidden/0`` for
    ``hidden/0/kernel`` and ``hidden/0/bias``); a leaf directly under the root is a layer of
    its own.

    Args:
        tree: a pytree of arrays (gradients, updates or parameters).
        axis_name: mesh axis over which the leaves are sharded.

    Returns:
        A dict from layer name to a float32 scalar, with one ``psum`` for all layers.

    Example:
        >>> import jax.numpy as jnp
        >>> tree = {"dense": {"kernel": jnp.array([3.0]), "bias": jnp.array([4.0])},
        ...         "scale": jnp.array([2.0])}
        >>> {k: float(x) for k, x in layer_norms(tree).items()}
        {'dense': 5.0, 'scale': 2.0}
    """
    sums: dict[str, jax.Array] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = _layer_name(path)
        partial = leaf_sum_of_squares(leaf).astype(jnp.float32)
        sums[name] = sums[name] + partial if name in sums else partial
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return {name: jnp.sqrt(total) for name, total in sums.items()}


def _resolve_learning_rate(learning_rate: Any, step: Any, opt_state: Any) -> jax.Array | None:
    if learning_rate is None:
        return None if opt_state is None else learning_rate_from_state(opt_state)
    if callable(learning_rate):
        if step is None:
            raise TypeError(
                "step_metrics: step is required when learning_rate is a schedule "
                "(the count the schedule is evaluated at)"
            )
        return jnp.asarray(learning_rate(step)).astype(jnp.float32)
    return jnp.asarray(learning_rate).astype(jnp.float32)


def _as_float32(fn: str, name: str, value: Any) -> jax.Array:
    x = jnp.asarray(value)
    if x.ndim != 0:
        raise ValueError(f"{fn}: {name} must be a scalar, got an array of shape {x.shape}")
    return x.astype(jnp.float32)


def step_metrics(
    loss: jax.Array,
    grads: Any,
    updates: Any = None,
    params: Any = None,
    *,
    opt_state: Any = None,
    learning_rate: float | jax.Array | Callable[[jax.Array], jax.Array] | None = None,
    step: jax.Array | int | None = None,
    axis_name: AxisName = None,
    batch_axis_name: AxisName = None,
    per_layer: bool = False,
) -> dict[str, Any]:
    """The step's health in a few scalars, computed inside the jitted step.

    Args:
        loss: the step's scalar loss (on this device's slice of the batch when sharded).
        grads: the gradients the optimizer received.
        updates: the optimizer's updates (``new_params - params``), or None to skip
            ``update_norm``.
        params: the parameters, or None to skip ``param_norm``.
        opt_state: the optimizer state; supplies the injected learning rate when
            ``learning_rate`` is None, and a guard's counters (see
            :func:`~scirs2_optim_jax.resilience.guard_metrics`).
        learning_rate: the rate as a number, or a schedule evaluated at ``step``; None reads
            it from ``optax.inject_hyperparams`` state in ``opt_state`` when there is one.
        step: the count at which a ``learning_rate`` schedule is evaluated.
        axis_name: mesh axis over which the leaves of ``grads``/``updates``/``params`` are
            sharded; norms and counts are reduced across it.
        batch_axis_name: mesh axis over which the batch is split; the loss is averaged
            across it. Defaults to ``axis_name``. (Averaging a loss that is already the same
            on every device leaves it unchanged.)
        per_layer: also return ``layer_grad_norm`` (and ``layer_update_norm``,
            ``layer_param_norm`` when given): dicts from layer name to norm.

    Returns:
        A dict with float32 ``loss``, ``grad_norm``, ``update_norm``, ``param_norm``,
        ``learning_rate`` (those that could be computed), int32 ``nonfinite`` (the number of
        non-finite gradient values), the guard's int32 counters when ``opt_state`` holds a
        guard, and the per-layer dicts when asked for.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> import scirs2_optim_jax as so
        >>> params = {"w": jnp.array([3.0, 4.0])}
        >>> tx = optax.inject_hyperparams(so.sgd)(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> @jax.jit
        ... def train_step(params, state):
        ...     loss, grads = jax.value_and_grad(lambda p: 0.5 * jnp.sum(p["w"] ** 2))(params)
        ...     updates, state = tx.update(grads, state, params)
        ...     new_params = optax.apply_updates(params, updates)
        ...     return new_params, state, step_metrics(loss, grads, updates, params,
        ...                                            opt_state=state)
        >>> _, _, metrics = train_step(params, state)
        >>> sorted(metrics)
        ['grad_norm', 'learning_rate', 'loss', 'nonfinite', 'param_norm', 'update_norm']
        >>> [round(float(metrics[k]), 3) for k in ("loss", "grad_norm", "update_norm")]
        [12.5, 5.0, 0.5]
    """
    fn = "step_metrics"
    if not isinstance(per_layer, bool):
        raise TypeError(f"{fn}: per_layer must be a bool, got {per_layer!r}")
    loss = _as_float32(fn, "loss", loss)
    loss_axis = axis_name if batch_axis_name is None else batch_axis_name
    if loss_axis is not None:
        loss = jax.lax.pmean(loss, loss_axis)

    metrics: dict[str, Any] = {
        "loss": loss,
        "grad_norm": global_norm(grads, axis_name).astype(jnp.float32),
        "nonfinite": count_nonfinite(grads, axis_name),
    }
    if updates is not None:
        metrics["update_norm"] = global_norm(updates, axis_name).astype(jnp.float32)
    if params is not None:
        metrics["param_norm"] = global_norm(params, axis_name).astype(jnp.float32)
    lr = _resolve_learning_rate(learning_rate, step, opt_state)
    if lr is not None:
        metrics["learning_rate"] = lr
    if opt_state is not None:
        metrics.update(guard_metrics(opt_state))
    if per_layer:
        metrics["layer_grad_norm"] = layer_norms(grads, axis_name)
        if updates is not None:
            metrics["layer_update_norm"] = layer_norms(updates, axis_name)
        if params is not None:
            metrics["layer_param_norm"] = layer_norms(params, axis_name)
    return metrics
