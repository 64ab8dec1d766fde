"""Mixed precision: dtype policies, fp32 master weights, and dynamic loss scaling.

A mixed-precision step keeps the model's parameters and runs its arithmetic in a 16-bit
type (bf16 or fp16) while the optimizer works in float32:

- :func:`precision_policy` names the dtypes (parameters, compute, outputs) of a mode;
- :func:`with_master_weights` wraps any optimizer so it keeps a float32 master copy of the
  16-bit parameters, updates the copy with float32 gradients and moments, and hands back the
  update that moves the 16-bit parameters to the rounded new master;
- :class:`DynamicLossScale` multiplies the loss by a large factor so small fp16 gradients do
  not flush to zero, divides the gradients by it again, and adapts the factor: it halves it
  (and the caller skips the step) when a gradient overflows and doubles it after
  ``growth_interval`` finite steps in a row.

Everything is pure and jit-able: the loss-scale state is a NamedTuple of two scalars that
travels in the train state and is checkpointed with it.

Reference: Micikevicius et al., "Mixed Precision Training", 2018.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.transforms.description import MasterWeights, describe

__all__ = [
    "PRECISIONS",
    "DynamicLossScale",
    "LossScaleState",
    "MasterWeightsState",
    "MixedPrecisionPolicy",
    "all_finite",
    "cast_floating",
    "precision_policy",
    "round_to_params",
    "scaled_value_and_grad",
    "select_tree",
    "with_master_weights",
]

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")

_HALF_DTYPES = {"bf16": jnp.bfloat16, "fp16": jnp.float16}


def _is_floating(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Casts the floating-point leaves of ``tree`` to ``dtype``; other leaves are kept.

    Args:
        tree: a pytree of arrays (integer step counters, keys and bools pass through).
        dtype: the floating dtype to cast to.

    Returns:
        The cast tree, same structure.

    Example:
        >>> import jax.numpy as jnp
        >>> out = cast_floating({"w": jnp.ones(2), "step": jnp.int32(3)}, jnp.bfloat16)
        >>> out["w"].dtype.name, out["step"].dtype.name
        ('bfloat16', 'int32')
    """
    dtype = v.check_dtype("cast_floating", "dtype", dtype)
    return jax.tree.map(lambda x: x.astype(dtype) if _is_floating(x) else x, tree)


@dataclass(frozen=True)
class MixedPrecisionPolicy:
    """The dtypes of a precision mode.

    Attributes:
        name: the mode, one of :data:`PRECISIONS`.
        param_dtype: dtype the model's parameters are stored in.
        compute_dtype: dtype of activations and the forward/backward arithmetic.
        output_dtype: dtype the loss is computed in (float32 in every mode).
    """

    name: str
    param_dtype: Any
    compute_dtype: Any
    output_dtype: Any

    @property
    def is_mixed(self) -> bool:
        """Whether parameters are narrower than float32 (master weights then help)."""
        return jnp.dtype(self.param_dtype).itemsize < 4

    def cast_to_param(self, tree: Any) -> Any:
        """Casts floating leaves to :attr:`param_dtype`."""
        return cast_floating(tree, self.param_dtype)

    def cast_to_compute(self, tree: Any) -> Any:
        """Casts floating leaves to :attr:`compute_dtype`."""
        return cast_floating(tree, self.compute_dtype)

    def cast_to_output(self, tree: Any) -> Any:
        """Casts floating leaves to :attr:`output_dtype`."""
        return cast_floating(tree, self.output_dtype)


def precision_policy(name: str) -> MixedPrecisionPolicy:
    """Returns the dtype policy of a precision mode.

    ``"fp32"``: everything float32. ``"bf16"``/``"fp16"``: parameters and compute in the
    16-bit type, loss in float32 (pair it with :func:`with_master_weights` so the optimizer
    state stays float32, and with :class:`DynamicLossScale`, which fp16 needs and bf16
    tolerates).

    Args:
        name: one of :data:`PRECISIONS`.

    Returns:
        A :class:`MixedPrecisionPolicy`.

    Example:
        >>> policy = precision_policy("bf16")
        >>> policy.param_dtype.__name__, policy.output_dtype.__name__, policy.is_mixed
        ('bfloat16', 'float32', True)
    """
    if name not in PRECISIONS:
        raise ValueError(
            f"precision_policy: name must be one of {', '.join(PRECISIONS)}, got {name!r}"
        )
    half = _HALF_DTYPES.get(name, jnp.float32)
    return MixedPrecisionPolicy(name, half, half, jnp.float32)


def all_finite(tree: Any) -> jax.Array:
    """True (a bool scalar) when every element of every floating leaf is finite.

    Example:
        >>> import jax.numpy as jnp
        >>> bool(all_finite({"a": jnp.ones(2), "b": jnp.array([1.0, jnp.inf])}))
        False
    """
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if _is_floating(x)]
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack(leaves))


def select_tree(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Leafwise ``where(pred, on_true, on_false)`` for two trees of the same structure.

    Used to skip a step inside jit: ``select_tree(finite, new_state, old_state)``.

    Example:
        >>> import jax.numpy as jnp
        >>> select_tree(jnp.array(False), {"w": jnp.ones(2)}, {"w": jnp.zeros(2)})["w"].tolist()
        [0.0, 0.0]
    """
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


class LossScaleState(NamedTuple):
    """State of :class:`DynamicLossScale`."""

    scale: jax.Array  # float32 scalar: the current loss multiplier
    good_steps: jax.Array  # int32 scalar: finite steps in a row since the scale last changed


@dataclass(frozen=True)
class DynamicLossScale:
    """Dynamic loss scaling: scale the loss, unscale the gradients, adapt the scale.

    Per step: ``scaled = ls.scale(loss, state)``; differentiate ``scaled``;
    ``grads = ls.unscale(grads, state)``; ``finite = all_finite(grads)``; apply the update
    only if ``finite``; ``state = ls.adjust(finite, state)``. :func:`scaled_value_and_grad`
    does all but the update.

    ``adjust`` multiplies the scale by ``backoff_factor`` (floored at ``min_scale``) and
    resets the counter on a non-finite step; after ``growth_interval`` finite steps in a row
    it multiplies it by ``growth_factor`` (capped at ``max_scale``) and resets the counter.

    Args:
        initial_scale: the first scale, a finite number in [min_scale, max_scale].
        growth_interval: finite steps in a row before the scale grows, an integer >= 1.
        growth_factor: growth multiplier, > 1.
        backoff_factor: shrink multiplier on overflow, in (0, 1).
        min_scale: lower bound of the scale, > 0.
        max_scale: upper bound of the scale, >= min_scale (and finite in float32).

    Example:
        >>> import jax.numpy as jnp
        >>> ls = DynamicLossScale(initial_scale=8.0, growth_interval=2)
        >>> state = ls.init()
        >>> float(ls.scale(jnp.float32(0.5), state))
        4.0
        >>> state = ls.adjust(jnp.array(False), state)  # overflow: halve
        >>> float(state.scale)
        4.0
        >>> for _ in range(2):  # two finite steps: double
        ...     state = ls.adjust(jnp.array(True), state)
        >>> float(state.scale), int(state.good_steps)
        (8.0, 0)

    Reference: Micikevicius et al., "Mixed Precision Training", 2018.
    """

    initial_scale: float = 2.0**15
    growth_interval: int = 2000
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    min_scale: float = 1.0
    max_scale: float = 2.0**24

    def __post_init__(self) -> None:
        fn = "DynamicLossScale"
        v.check_positive(fn, "min_scale", self.min_scale)
        v.check_positive(fn, "max_scale", self.max_scale)
        if self.max_scale < self.min_scale or self.max_scale > float(np.finfo(np.float32).max):
            raise ValueError(
                f"{fn}: max_scale must be a finite float32 >= min_scale (= {self.min_scale}), "
                f"got {self.max_scale!r}"
            )
        v.check_positive(fn, "initial_scale", self.initial_scale)
        if not self.min_scale <= self.initial_scale <= self.max_scale:
            raise ValueError(
                f"{fn}: initial_scale must be in [min_scale, max_scale] = "
                f"[{self.min_scale}, {self.max_scale}], got {self.initial_scale!r}"
            )
        interval = self.growth_interval
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"{fn}: growth_interval must be an integer >= 1, got {interval!r}")
        v.check_positive(fn, "growth_factor", self.growth_factor)
        if not self.growth_factor > 1:
            raise ValueError(f"{fn}: growth_factor must be > 1, got {self.growth_factor!r}")
        v.check_in_range(fn, "backoff_factor", self.backoff_factor, 0.0, 1.0, include_low=False)

    def init(self) -> LossScaleState:
        """The initial state: ``initial_scale`` and no good steps."""
        return LossScaleState(
            scale=jnp.asarray(self.initial_scale, jnp.float32),
            good_steps=jnp.zeros([], jnp.int32),
        )

    def scale(self, loss: jax.Array, state: LossScaleState) -> jax.Array:
        """``loss * scale`` in float32."""
        return loss.astype(jnp.float32) * state.scale

    def unscale(self, grads: Any, state: LossScaleState, dtype: Any = jnp.float32) -> Any:
        """Divides the floating gradient leaves by the scale, returning them in ``dtype``.

        The division runs in float32 and the default output is float32: an fp16 gradient
        that was representable scaled could underflow once unscaled.
        """
        inverse = 1.0 / state.scale
        return jax.tree.map(
            lambda g: (g.astype(jnp.float32) * inverse).astype(dtype) if _is_floating(g) else g,
            grads,
        )

    def adjust(self, grads_finite: jax.Array, state: LossScaleState) -> LossScaleState:
        """The next state, given whether this step's gradients were all finite."""
        good = state.good_steps + 1
        grow = grads_finite & (good >= self.growth_interval)
        grown = jnp.minimum(state.scale * self.growth_factor, self.max_scale)
        shrunk = jnp.maximum(state.scale * self.backoff_factor, self.min_scale)
        scale = jnp.where(grads_finite, jnp.where(grow, grown, state.scale), shrunk)
        good_steps = jnp.where(grads_finite & ~grow, good, 0).astype(jnp.int32)
        return LossScaleState(scale=scale.astype(jnp.float32), good_steps=good_steps)


def scaled_value_and_grad(
    fun: Callable[..., Any], loss_scale: DynamicLossScale, *, has_aux: bool = False
) -> Callable[..., tuple[Any, Any, jax.Array, LossScaleState]]:
    """Like ``jax.value_and_grad(fun)``, with dynamic loss scaling around it.

    Args:
        fun: ``fun(params, *args) -> loss`` (or ``(loss, aux)`` with ``has_aux``); the loss
            a scalar of any floating dtype.
        loss_scale: the :class:`DynamicLossScale`.
        has_aux: whether ``fun`` returns ``(loss, aux)``.

    Returns:
        ``g(state, params, *args) -> (value, grads, finite, new_state)``: ``value`` is the
        unscaled loss (or ``(loss, aux)``), ``grads`` the unscaled float32 gradients with
        respect to ``params``, ``finite`` whether they are all finite (skip the update when
        not), ``new_state`` the adjusted :class:`LossScaleState`.

    Example:
        >>> import jax.numpy as jnp
        >>> ls = DynamicLossScale(initial_scale=1024.0)
        >>> g = scaled_value_and_grad(lambda p: jnp.sum(p.astype(jnp.float16) ** 2), ls)
        >>> loss, grads, finite, state = g(ls.init(), jnp.array([1e-3, 2.0]))
        >>> [round(float(x), 4) for x in grads], bool(finite)
        ([0.002, 4.0], True)
    """
    if not isinstance(loss_scale, DynamicLossScale):
        raise TypeError(
            f"scaled_value_and_grad: loss_scale must be a DynamicLossScale, got {loss_scale!r}"
        )

    def scaled(params: Any, state: LossScaleState, *args: Any) -> tuple[jax.Array, Any]:
        out = fun(params, *args)
        loss, aux = out if has_aux else (out, None)
        return loss_scale.scale(loss, state), (loss, aux)

    grad_fn = jax.grad(scaled, has_aux=True)

    def g(state: LossScaleState, params: Any, *args: Any) -> Any:
        grads, (loss, aux) = grad_fn(params, state, *args)
        grads = loss_scale.unscale(grads, state)
        finite = all_finite(grads)
        value = (loss, aux) if has_aux else loss
        return value, grads, finite, loss_scale.adjust(finite, state)

    return g


class MasterWeightsState(NamedTuple):
    """State of :func:`with_master_weights`."""

    master: optax.Params  # float32 copy of the parameters
    inner_state: optax.OptState  # the wrapped optimizer's state, built on the master copy


def with_master_weights(
    inner: optax.GradientTransformation, master_dtype: Any = jnp.float32
) -> optax.GradientTransformationExtraArgs:
    """Runs ``inner`` on a float32 master copy of low-precision parameters.

    ``init(params)`` stores ``params`` cast to ``master_dtype`` and initialises ``inner`` on
    that copy, so moments built ``like`` the parameters are float32 too. ``update(grads,
    state, params)`` casts the gradients to ``master_dtype``, lets ``inner`` update the
    master copy, and returns the update that takes each parameter to the new master rounded
    to the parameter's dtype; so ``optax.apply_updates`` (or ``nnx.Optimizer``) leaves the
    16-bit parameters equal to the rounded master, while small updates keep accumulating in
    the master instead of rounding away.

    Args:
        inner: the optimizer, any ``optax.GradientTransformation``.
        master_dtype: dtype of the master copy (float32 by default).

    Returns:
        An ``optax.GradientTransformationExtraArgs`` with state :class:`MasterWeightsState`;
        ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from scirs2_optim_jax.optimizers import sgd
        >>> tx = with_master_weights(sgd(1e-3))
        >>> params = {"w": jnp.ones(2, jnp.bfloat16)}
        >>> state = tx.init(params)
        >>> for _ in range(10):  # each step alone is below bf16's resolution near 1.0
        ...     updates, state = tx.update({"w": jnp.ones(2, jnp.bfloat16)}, state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> round(float(state.master["w"][0]), 4), float(params["w"][0])
        (0.99, 0.98828125)
    """
    fn = "with_master_weights"
    if not isinstance(inner, optax.GradientTransformation):
        raise TypeError(f"{fn}: inner must be an optax.GradientTransformation, got {inner!r}")
    master_dtype = v.check_dtype(fn, "master_dtype", master_dtype)
    if master_dtype is None:
        raise TypeError(f"{fn}: master_dtype must be a floating dtype, got None")
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: optax.Params) -> MasterWeightsState:
        master = cast_floating(params, master_dtype)
        # Leaves already in master_dtype come back from the cast as the very same arrays;
        # the master must own its buffers, or donating params and state together (as a
        # jitted train step does) would donate one buffer twice.
        master = jax.tree.map(lambda m, p: jnp.copy(m) if m is p else m, master, params)
        return MasterWeightsState(master=master, inner_state=inner.init(master))

    def update_fn(
        updates: optax.Updates,
        state: MasterWeightsState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, MasterWeightsState]:
        if params is None:
            raise ValueError(f"{fn}: update needs params (the low-precision parameters)")
        v.check_tree_matches(fn, updates, state.master, ref_name="master weights")
        grads = cast_floating(updates, master_dtype)
        inner_updates, inner_state = inner.update(
            grads, state.inner_state, state.master, **extra_args
        )
        master = jax.tree.map(
            lambda m, u: (m + u.astype(m.dtype)) if _is_floating(m) else m,
            state.master,
            inner_updates,
        )

        def step_to_master(new: jax.Array, p: jax.Array) -> jax.Array:
            if not _is_floating(p):
                return jnp.zeros_like(p)
            # Both operands are exact in the wider type, so only the final cast rounds.
            target = new.astype(p.dtype).astype(master_dtype)
            return (target - p.astype(master_dtype)).astype(p.dtype)

        out = jax.tree.map(step_to_master, master, params)
        return out, MasterWeightsState(master=master, inner_state=inner_state)

    return describe(
        optax.GradientTransformationExtraArgs(init_fn, update_fn),
        MasterWeights(inner, master_dtype),
    )


def round_to_params(master: Any, params: Any) -> Any:
    """The parameters a master copy stands for: each floating leaf of ``master`` cast to the
    dtype of the same leaf of ``params``; other leaves of ``params`` unchanged.

    Example:
        >>> import jax.numpy as jnp
        >>> new = round_to_params({"w": jnp.array([1.0039])}, {"w": jnp.ones(1, jnp.bfloat16)})
        >>> new["w"].dtype, float(new["w"][0])
        (dtype(bfloat16), 1.0)
    """
    return jax.tree.map(lambda m, p: m.astype(p.dtype) if _is_floating(p) else p, master, params)
