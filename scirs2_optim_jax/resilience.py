"""Guards against bad steps, inside jit: skip non-finite updates, fall back to another optimizer.

A *bad step* is one whose gradients or resulting updates hold a NaN or an infinity, or (when
``max_grad_norm`` is set) whose global gradient norm exceeds it: a gradient explosion. A guard
computes the inner transform's update as usual, then keeps it only when the step is good; on a
bad step it returns zero updates and the previous inner state, so parameters and optimizer
state never take a non-finite value from a bad step. Counters in the guard's state record
what happened, for the metrics the step returns.

:func:`skip_non_finite` is the guard alone. :func:`fallback_on_failure` adds a circuit
breaker: after ``switch_after`` consecutive bad steps it routes every update through a
fallback transform (say SGD at a lower rate), and after ``switch_back_after`` consecutive good
steps on the fallback (if set) it returns to the primary. Both run entirely inside the jitted
step (``jnp.where`` and ``lax.cond`` on counters in the state), so they drop into
``optax.chain``, ``flax.nnx.Optimizer`` and sharded steps. Loss scaling for fp16/bf16 is
:mod:`scirs2_optim_jax.precision`'s job; these guards wrap any transform, that one included.

With ``axis_name`` set, the checks are reduced across that mesh axis, so when leaves are
shards every device takes the same decision.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.transforms.moments import safe_increment
from scirs2_optim_jax.transforms.norms import AxisName, global_norm

__all__ = [
    "FallbackState",
    "SkipNonFiniteState",
    "count_nonfinite",
    "fallback_on_failure",
    "guard_metrics",
    "skip_non_finite",
]


def count_nonfinite(tree: Any, axis_name: AxisName = None) -> jax.Array:
    """Number of NaN or infinite values in the floating leaves of ``tree``, as int32.

    Args:
        tree: a pytree of arrays; integer and boolean leaves are ignored.
        axis_name: mesh axis over which the leaves are sharded; the count is then that of the
            whole logical tree on every device.

    Returns:
        An int32 scalar.

    Example:
        >>> import jax.numpy as jnp
        >>> int(count_nonfinite({"a": jnp.array([1.0, jnp.nan]), "b": jnp.array([jnp.inf])}))
        2
    """
    total = jnp.zeros([], jnp.int32)
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            total = total + jnp.sum(~jnp.isfinite(leaf), dtype=jnp.int32)
    if axis_name is not None:
        total = jax.lax.psum(total, axis_name)
    return total


def _check_max_grad_norm(fn: str, max_grad_norm: Any) -> None:
    if max_grad_norm is not None:
        v.check_positive(fn, "max_grad_norm", max_grad_norm)


def _check_transform(fn: str, name: str, tx: Any) -> optax.GradientTransformationExtraArgs:
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(
            f"{fn}: {name} must be an optax GradientTransformation, got {type(tx).__name__}"
        )
    return optax.with_extra_args_support(tx)


def _classify(
    grads: Any, updates: Any, max_grad_norm: float | None, axis_name: AxisName
) -> tuple[jax.Array, jax.Array]:
    """Returns ``(nonfinite, exploded)``: bool scalars, the same on every device of the axis."""
    nonfinite = (count_nonfinite(grads, axis_name) + count_nonfinite(updates, axis_name)) > 0
    if max_grad_norm is None:
        return nonfinite, jnp.zeros([], jnp.bool_)
    norm = global_norm(grads, axis_name)
    # A NaN norm compares False here; the step is already flagged non-finite.
    exploded = norm > jnp.asarray(max_grad_norm, norm.dtype)
    return nonfinite, exploded


def _select(keep: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)


def _zeros_where_bad(good: jax.Array, updates: Any) -> Any:
    return jax.tree.map(lambda u: jnp.where(good, u, jnp.zeros_like(u)), updates)


def _counter(flag: jax.Array, count: jax.Array) -> jax.Array:
    return jnp.where(flag, safe_increment(count), count)


class SkipNonFiniteState(NamedTuple):
    """State of :func:`skip_non_finite`.

    Attributes:
        inner_state: the wrapped transform's state, as of the last good step.
        consecutive_bad: bad steps in a row up to now (0 after a good step).
        skipped_steps: bad steps skipped since ``init``.
        nonfinite_steps: steps whose gradients or updates held a NaN or an infinity.
        exploded_steps: steps whose global gradient norm exceeded ``max_grad_norm``.
    """

    inner_state: Any
    consecutive_bad: jax.Array
    skipped_steps: jax.Array
    nonfinite_steps: jax.Array
    exploded_steps: jax.Array


def _zero_count() -> jax.Array:
    return jnp.zeros([], jnp.int32)


def skip_non_finite(
    inner: optax.GradientTransformation,
    *,
    max_grad_norm: float | None = None,
    axis_name: AxisName = None,
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` so that a bad step leaves parameters and state untouched, and is counted.

    A step is bad when the gradients or ``inner``'s updates hold a NaN or an infinity, or when
    ``max_grad_norm`` is set and the global gradient norm exceeds it. On a bad step the
    updates are zeros (so ``apply_updates`` keeps the parameters) and ``inner``'s state stays
    as it was; the counters in :class:`SkipNonFiniteState` record the skip.

    Args:
        inner: the transform to guard (any optax transform or chain).
        max_grad_norm: treat a global gradient norm above this (> 0) as an explosion and skip
            the step; None (the default) checks finiteness only.
        axis_name: mesh axis over which the leaves are sharded, so that all devices agree.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a
        :class:`SkipNonFiniteState`.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> tx = skip_non_finite(optax.sgd(0.1))
        >>> params = {"w": jnp.array([1.0, 2.0])}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.array([jnp.nan, 1.0])}, state, params)
        >>> updates["w"].tolist(), int(state.skipped_steps)
        ([0.0, 0.0], 1)
    """
    fn = "skip_non_finite"
    inner = _check_transform(fn, "inner", inner)
    _check_max_grad_norm(fn, max_grad_norm)

    def init_fn(params: optax.Params) -> SkipNonFiniteState:
        return SkipNonFiniteState(
            inner_state=inner.init(params),
            consecutive_bad=_zero_count(),
            skipped_steps=_zero_count(),
            nonfinite_steps=_zero_count(),
            exploded_steps=_zero_count(),
        )

    def update_fn(
        updates: optax.Updates,
        state: SkipNonFiniteState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, SkipNonFiniteState]:
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra_args)
        nonfinite, exploded = _classify(updates, new_updates, max_grad_norm, axis_name)
        bad = nonfinite | exploded
        good = ~bad
        return _zeros_where_bad(good, new_updates), SkipNonFiniteState(
            inner_state=_select(good, new_inner, state.inner_state),
            consecutive_bad=jnp.where(bad, safe_increment(state.consecutive_bad), 0).astype(
                jnp.int32
            ),
            skipped_steps=_counter(bad, state.skipped_steps),
            nonfinite_steps=_counter(nonfinite, state.nonfinite_steps),
            exploded_steps=_counter(exploded, state.exploded_steps),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class FallbackState(NamedTuple):
    """State of :func:`fallback_on_failure`.

    Attributes:
        primary_state, fallback_state: the two transforms' states; only the active one
            advances, the other keeps the value it had when it was last used.
        using_fallback: bool scalar, True while updates go through the fallback.
        consecutive_bad: bad steps in a row (reset on a good step and on a switch).
        consecutive_good: good steps in a row on the fallback (reset on a bad step and on a
            switch).
        skipped_steps, nonfinite_steps, exploded_steps: as in :class:`SkipNonFiniteState`.
        switches: how many times the breaker has switched, in either direction.
    """

    primary_state: Any
    fallback_state: Any
    using_fallback: jax.Array
    consecutive_bad: jax.Array
    consecutive_good: jax.Array
    skipped_steps: jax.Array
    nonfinite_steps: jax.Array
    exploded_steps: jax.Array
    switches: jax.Array


def fallback_on_failure(
    primary: optax.GradientTransformation,
    fallback: optax.GradientTransformation,
    *,
    switch_after: int,
    switch_back_after: int | None = None,
    max_grad_norm: float | None = None,
    axis_name: AxisName = None,
) -> optax.GradientTransformationExtraArgs:
    """A circuit breaker: skip bad steps, and after ``switch_after`` in a row use ``fallback``.

    Every bad step (non-finite gradients or updates, or a global gradient norm above
    ``max_grad_norm``) is skipped as in :func:`skip_non_finite`. When the ``switch_after``-th
    consecutive bad step has been skipped, the breaker opens: from the next step on, updates
    come from ``fallback``. With ``switch_back_after`` set, after that many consecutive good
    steps on the fallback it closes again and the next step uses ``primary``, resuming from
    the state ``primary`` had before its failures. Only the active transform runs (a
    ``lax.cond``), so the inactive one costs nothing per step.

    Args:
        primary: the transform used while steps are good.
        fallback: the transform used after ``switch_after`` consecutive bad steps, for
            example ``sgd`` at a lower learning rate.
        switch_after: consecutive bad steps that open the breaker, an integer >= 1.
        switch_back_after: consecutive good steps on the fallback that close it again; None
            (the default) stays on the fallback for the rest of the run.
        max_grad_norm: a global gradient norm above this (> 0) makes a step bad; None
            checks finiteness only.
        axis_name: mesh axis over which the leaves are sharded, so that all devices agree.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`FallbackState`.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> tx = fallback_on_failure(optax.sgd(1.0), optax.sgd(0.1), switch_after=2)
        >>> params = {"w": jnp.zeros(1)}
        >>> state = tx.init(params)
        >>> for g in [jnp.nan, jnp.nan, 1.0]:
        ...     updates, state = tx.update({"w": jnp.array([g])}, state, params)
        >>> bool(state.using_fallback), round(float(updates["w"][0]), 3)
        (True, -0.1)
    """
    fn = "fallback_on_failure"
    primary = _check_transform(fn, "primary", primary)
    fallback = _check_transform(fn, "fallback", fallback)
    v.check_int(fn, "switch_after", switch_after, 1)
    v.check_int(fn, "switch_back_after", switch_back_after, 1, allow_none=True)
    _check_max_grad_norm(fn, max_grad_norm)

    def init_fn(params: optax.Params) -> FallbackState:
        return FallbackState(
            primary_state=primary.init(params),
            fallback_state=fallback.init(params),
            using_fallback=jnp.zeros([], jnp.bool_),
            consecutive_bad=_zero_count(),
            consecutive_good=_zero_count(),
            skipped_steps=_zero_count(),
            nonfinite_steps=_zero_count(),
            exploded_steps=_zero_count(),
            switches=_zero_count(),
        )

    def update_fn(
        updates: optax.Updates,
        state: FallbackState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, FallbackState]:
        def run_primary(operand: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
            grads, p_state, f_state = operand
            new_updates, p_state = primary.update(grads, p_state, params, **extra_args)
            return new_updates, p_state, f_state

        def run_fallback(operand: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
            grads, p_state, f_state = operand
            new_updates, f_state = fallback.update(grads, f_state, params, **extra_args)
            return new_updates, p_state, f_state

        new_updates, p_state, f_state = jax.lax.cond(
            state.using_fallback,
            run_fallback,
            run_primary,
            (updates, state.primary_state, state.fallback_state),
        )
        nonfinite, exploded = _classify(updates, new_updates, max_grad_norm, axis_name)
        bad = nonfinite | exploded
        good = ~bad

        consecutive_bad = jnp.where(bad, safe_increment(state.consecutive_bad), 0)
        consecutive_good = jnp.where(
            good & state.using_fallback, safe_increment(state.consecutive_good), 0
        )
        open_now = ~state.using_fallback & (consecutive_bad >= switch_after)
        if switch_back_after is None:
            close_now = jnp.zeros([], jnp.bool_)
        else:
            close_now = state.using_fallback & (consecutive_good >= switch_back_after)
        switched = open_now | close_now
        zero = jnp.zeros([], jnp.int32)

        return _zeros_where_bad(good, new_updates), FallbackState(
            primary_state=_select(good, p_state, state.primary_state),
            fallback_state=_select(good, f_state, state.fallback_state),
            using_fallback=state.using_fallback ^ switched,
            consecutive_bad=jnp.where(switched, zero, consecutive_bad).astype(jnp.int32),
            consecutive_good=jnp.where(switched, zero, consecutive_good).astype(jnp.int32),
            skipped_steps=_counter(bad, state.skipped_steps),
            nonfinite_steps=_counter(nonfinite, state.nonfinite_steps),
            exploded_steps=_counter(exploded, state.exploded_steps),
            switches=_counter(switched, state.switches),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


_GUARD_STATES = (SkipNonFiniteState, FallbackState)


def guard_metrics(opt_state: Any) -> dict[str, jax.Array]:
    """The counters of the first guard found in ``opt_state``, for the step's metrics.

    Finds a :class:`SkipNonFiniteState` or :class:`FallbackState` anywhere in the state tree
    (inside ``optax.chain``, ``inject_hyperparams`` or ``flax.nnx.Optimizer``) and returns its
    ``skipped_steps``, ``nonfinite_steps`` and ``exploded_steps`` (plus ``using_fallback`` and
    ``switches`` for a breaker) as int32 scalars. Returns an empty dict when there is no guard.

    Args:
        opt_state: an optimizer state; leaves may be arrays or ``nnx`` variables.

    Returns:
        A dict of int32 scalars.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> state = skip_non_finite(optax.sgd(0.1)).init({"w": jnp.zeros(2)})
        >>> sorted(guard_metrics(state))
        ['exploded_steps', 'nonfinite_steps', 'skipped_steps']
    """
    guards = [
        node
        for node in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, _GUARD_STATES))
        if isinstance(node, _GUARD_STATES)
    ]
    if not guards:
        return {}
    guard = guards[0]
    names = ["skipped_steps", "nonfinite_steps", "exploded_steps"]
    if isinstance(guard, FallbackState):
        names += ["using_fallback", "switches"]
    return {name: jnp.asarray(getattr(guard, name)).astype(jnp.int32) for name in names}
