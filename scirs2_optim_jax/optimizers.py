"""Optimizer aliases: thin chains of transforms with optax-compatible signatures.

Every alias takes the same arguments, in the same order and with the same defaults, as the
optax 0.2.8 optimizer of the same name; options optax lacks are keyword-only. The aliases
hold no math: each is a chain of the transforms in :mod:`scirs2_optim_jax.transforms`
(``optax.chain``, or :func:`~scirs2_optim_jax.transforms.chain` where the one-pass engine
may run it), each hyperparameter passed once, so their states are the same nested tuples
of NamedTuples that users inspect and checkpoint. ``muon`` and ``adafactor`` are defined
with their transforms (:mod:`~scirs2_optim_jax.transforms.muon`,
:mod:`~scirs2_optim_jax.transforms.factored`) and re-exported here.
"""

import warnings
from typing import Any

import optax

from scirs2_optim_jax import schedules
from scirs2_optim_jax import validation as v
from scirs2_optim_jax.transforms.adaptive import (
    scale_by_adam,
    scale_by_radam,
    scale_by_rms,
    scale_by_rss,
    scale_by_stddev,
)
from scirs2_optim_jax.transforms.adopt import default_adopt_clip, scale_by_adopt
from scirs2_optim_jax.transforms.description import Chain, DescribedTransformation, describe
from scirs2_optim_jax.transforms.factored import adafactor
from scirs2_optim_jax.transforms.learning_rate import scale_by_learning_rate
from scirs2_optim_jax.transforms.masking import Mask
from scirs2_optim_jax.transforms.momentum import scale_by_lion, trace
from scirs2_optim_jax.transforms.muon import muon
from scirs2_optim_jax.transforms.norms import AxisName
from scirs2_optim_jax.transforms.schedule_free import schedule_free
from scirs2_optim_jax.transforms.trust_ratio import (
    scale_by_lars_trust_ratio,
    scale_by_trust_ratio,
)
from scirs2_optim_jax.transforms.weight_decay import add_decayed_weights

__all__ = [
    "adafactor",
    "adagrad",
    "adam",
    "adamw",
    "adopt",
    "lamb",
    "lars",
    "lion",
    "muon",
    "radam",
    "rmsprop",
    "schedule_free_adamw",
    "schedule_free_sgd",
    "sgd",
]

# float, jax scalar, or callable count -> value. optax's own type, as an object rather than a
# string, so that tools reading the aliases' annotations (inspect.signature) see it.
Schedule = optax.ScalarOrSchedule


def _adam_family(
    name: str,
    *parts: optax.GradientTransformation,
    fused: bool | None,
    state_layout: str,
    no_one_pass: str | None = None,
) -> DescribedTransformation:
    """``chain(*parts)`` of an Adam-family alias, with its options for the one-pass engine.

    ``fused`` and ``state_layout`` are recorded in the chain's description, where the engine
    (:func:`scirs2_optim_jax.apply_gradients`) reads them; ``no_one_pass`` names an option
    that has no one-pass form (``fused=True`` with it is an error).
    """
    if fused is not None and not isinstance(fused, bool):
        raise TypeError(f"{name}: fused must be True, False or None, got {fused!r}")
    if state_layout not in ("tree", "grouped"):
        raise ValueError(f"{name}: state_layout must be 'tree' or 'grouped', got {state_layout!r}")
    if state_layout == "grouped":
        # Through the optax protocol (nnx.Optimizer, TrainState) the grouped layout cost a
        # conversion per step, and inside the engine it measured within noise of the tree
        # layout (docs/benchmarks.md), so no user-chosen layout can be slower than the default.
        warnings.warn(
            f"{name}: state_layout='grouped' is deprecated and ignored; the state keeps the "
            "chain's tree layout on every path",
            DeprecationWarning,
            stacklevel=3,
        )
    if fused and no_one_pass:
        raise ValueError(f"{name}: fused=True does not support {no_one_pass}; pass fused=None")
    fused = False if no_one_pass else fused
    return describe(_named(name, optax.chain(*parts)), Chain(parts, name=name, fused=fused))


def _named(name: str, tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``tx`` whose argument errors at ``update`` name the alias too (``adamw: scale_by_adam:
    updates do not match the state: ...``), not only the transform inside it."""
    tx = optax.with_extra_args_support(tx)

    def update(updates: Any, state: Any, params: Any = None, **extra: Any) -> Any:
        try:
            return tx.update(updates, state, params, **extra)
        except (ValueError, TypeError) as err:
            # Only our own plain argument errors: JAX's subclasses carry more than a message.
            if type(err) not in (ValueError, TypeError) or str(err).startswith(f"{name}:"):
                raise
            raise type(err)(f"{name}: {err}") from None

    return optax.GradientTransformationExtraArgs(tx.init, update)


def adam(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any = None,
    fused: bool | None = None,
    state_layout: str = "tree",
) -> optax.GradientTransformationExtraArgs:
    """Adam: ``scale_by_adam`` then the learning rate.

    Args:
        learning_rate: a finite number >= 0 or a schedule.
        b1, b2, eps, eps_root, mu_dtype, nesterov: see :func:`scale_by_adam`.
        nu_dtype: dtype of the second moment (keyword-only; optax has none).
        fused: the one-pass step of :func:`scirs2_optim_jax.apply_gradients`
            (keyword-only): None takes it where it applies, True requires it, False never
            takes it. ``update`` always runs the chain. See :mod:`scirs2_optim_jax.engine`.
        state_layout: deprecated and ignored (``"grouped"`` warns): the state is always the
            chain's own tree layout (keyword-only).

    Returns:
        An ``optax.GradientTransformationExtraArgs``.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> params = jnp.array([1.0, -2.0])
        >>> tx = adam(0.1)
        >>> state = tx.init(params)
        >>> for _ in range(100):
        ...     grads = jax.grad(lambda p: jnp.sum(p**2))(params)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> bool(jnp.all(jnp.abs(params) < 0.1))
        True

    Reference: Kingma and Ba, "Adam: A Method for Stochastic Optimization", 2014.
    """
    with v.reraise_with_context("adam"):
        return _adam_family(
            "adam",
            scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
            scale_by_learning_rate(learning_rate),
            fused=fused,
            state_layout=state_layout,
            no_one_pass="nesterov=True" if nesterov else None,
        )


def adamw(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: Schedule = 1e-4,
    mask: Mask = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any = None,
    fused: bool | None = None,
    state_layout: str = "tree",
) -> optax.GradientTransformationExtraArgs:
    """AdamW: Adam with decoupled weight decay, ``scale_by_adam -> add_decayed_weights ->
    scale_by_learning_rate``.

    Args:
        learning_rate: a finite number >= 0 or a schedule.
        b1, b2, eps, eps_root, mu_dtype, nesterov: see :func:`scale_by_adam`.
        weight_decay: decay strength (>= 0) or a schedule; applied before the learning rate,
            so the parameter shrinks by ``learning_rate * weight_decay`` per step.
        mask: which leaves decay (None: all); a pytree of bools or a callable.
        nu_dtype: dtype of the second moment (keyword-only; optax has none).
        fused: the one-pass step of :func:`scirs2_optim_jax.apply_gradients`
            (keyword-only): None takes it where it applies, True requires it, False never
            takes it. ``update`` always runs the chain. See :mod:`scirs2_optim_jax.engine`.
        state_layout: deprecated and ignored (``"grouped"`` warns): the state is always the
            chain's own tree layout (keyword-only).

    Returns:
        An ``optax.GradientTransformationExtraArgs``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> params = {"w": jnp.ones(2), "b": jnp.ones(2)}
        >>> tx = adamw(1e-3, weight_decay=0.1, mask={"w": True, "b": False})
        >>> grads = {"w": jnp.zeros(2), "b": jnp.zeros(2)}
        >>> updates, _ = tx.update(grads, tx.init(params), params)
        >>> round(float(updates["w"][0]), 6), bool(updates["b"][0] == 0)
        (-0.0001, True)

    Reference: Loshchilov and Hutter, "Decoupled Weight Decay Regularization", 2019.
    """
    # A negative weight decay grows the weights; optax's add_decayed_weights takes one
    # (fromage uses it), an alias does not.
    v.check_schedule_or_non_negative("adamw", "weight_decay", weight_decay)
    with v.reraise_with_context("adamw"):
        return _adam_family(
            "adamw",
            scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
            add_decayed_weights(weight_decay, mask),
            scale_by_learning_rate(learning_rate),
            fused=fused,
            state_layout=state_layout,
            no_one_pass="nesterov=True" if nesterov else None,
        )


def lamb(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: Schedule = 0.0,
    mask: Mask = None,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    axis_name: AxisName = None,
    fused: bool | None = None,
    state_layout: str = "tree",
) -> optax.GradientTransformationExtraArgs:
    """LAMB: the AdamW direction rescaled per leaf by ``||param|| / ||direction||``.

    Args:
        learning_rate: a finite number >= 0 or a schedule.
        b1, b2, eps, eps_root: see :func:`scale_by_adam`.
        weight_decay: decay strength (>= 0) or a schedule.
        mask: which leaves decay (None: all).
        mu_dtype, nu_dtype: moment dtypes (keyword-only).
        axis_name: mesh axis over which leaves are sharded, so the trust ratios use the
            norms of whole leaves (keyword-only).
        fused: the one-pass step of :func:`scirs2_optim_jax.apply_gradients`
            (keyword-only): None takes it where it applies, True requires it, False never
            takes it. ``update`` always runs the chain. See :mod:`scirs2_optim_jax.engine`.
        state_layout: deprecated and ignored (``"grouped"`` warns): the state is always the
            chain's own tree layout (keyword-only).

    Returns:
        An ``optax.GradientTransformationExtraArgs``.

    Example:
        >>> import jax.numpy as jnp
        >>> params = {"w": jnp.array([3.0, 4.0])}
        >>> tx = lamb(0.1)
        >>> updates, _ = tx.update({"w": jnp.array([1.0, 1.0])}, tx.init(params), params)
        >>> [round(float(x), 4) for x in updates["w"]]  # |update| = 0.1 * |param|
        [-0.3536, -0.3536]

    Reference: You et al., "Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes", 2020.
    """
    v.check_schedule_or_non_negative("lamb", "weight_decay", weight_decay)
    with v.reraise_with_context("lamb"):
        return _adam_family(
            "lamb",
            scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype),
            add_decayed_weights(weight_decay, mask),
            scale_by_trust_ratio(axis_name=axis_name),
            scale_by_learning_rate(learning_rate),
            fused=fused,
            state_layout=state_layout,
            # Per-shard trust ratios need a cross-device sum the kernel does not do.
            no_one_pass="axis_name" if axis_name is not None else None,
        )


def lars(
    learning_rate: Schedule,
    weight_decay: Schedule = 0.0,
    weight_decay_mask: Mask = True,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    trust_ratio_mask: Mask = True,
    momentum: float = 0.9,
    nesterov: bool = False,
    *,
    accumulator_dtype: Any = None,
    axis_name: AxisName = None,
) -> optax.GradientTransformationExtraArgs:
    """LARS: weight decay, a per-leaf trust ratio, the learning rate, then momentum.

    Args:
        learning_rate: a finite number >= 0 or a schedule.
        weight_decay: decay strength (>= 0) or a schedule.
        weight_decay_mask: which leaves decay (True: all).
        trust_coefficient: LARS's ``eta``, > 0.
        eps: added to the update norm in the trust ratio, >= 0.
        trust_ratio_mask: which leaves get the trust ratio (True: all).
        momentum: momentum coefficient, in [0, 1].
        nesterov: use Nesterov momentum.
        accumulator_dtype: dtype of the momentum trace (keyword-only).
        axis_name: mesh axis over which leaves are sharded (keyword-only).

    Returns:
        An ``optax.GradientTransformationExtraArgs``.

    Example:
        >>> import jax.numpy as jnp
        >>> params = {"w": jnp.array([3.0, 4.0])}
        >>> tx = lars(1.0, trust_coefficient=0.1)
        >>> updates, _ = tx.update({"w": jnp.array([1.0, 0.0])}, tx.init(params), params)
        >>> [round(float(x), 4) for x in updates["w"]]
        [-0.5, 0.0]

    Reference: You et al., "Large Batch Training of Convolutional Networks", 2017.
    """
    v.check_in_range("lars", "momentum", momentum, 0.0, 1.0, include_high=True)
    v.check_schedule_or_non_negative("lars", "weight_decay", weight_decay)
    with v.reraise_with_context("lars"):
        return _named(
            "lars",
            optax.chain(
                add_decayed_weights(weight_decay, mask=weight_decay_mask),
                scale_by_lars_trust_ratio(
                    trust_coefficient, eps, mask=trust_ratio_mask, axis_name=axis_name
                ),
                scale_by_learning_rate(learning_rate),
                trace(momentum, nesterov, accumulator_dtype),
            ),
        )


def sgd(
    learning_rate: Schedule,
    momentum: float | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Stochastic gradient descent, with optional (Nesterov) momentum.

    Args:
        learning_rate: a finite number >= 0 or a schedule.
        momentum: momentum coefficient in [0, 1], or None for plain SGD.
        nesterov: use Nesterov momentum.
        accumulator_dtype: dtype of the momentum trace.

    Returns:
        An ``optax.GradientTransformationExtraArgs``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = sgd(0.5)
        >>> updates, _ = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))
        >>> float(updates["w"][0])
        -1.0

    Reference: Robbins and Monro, "A Stochastic Approximation Method", 1951.
    """
    if momentum is not None:
        v.check_in_range("sgd", "momentum", momentum, 0.0, 1.0, include_high=True)
    with v.reraise_with_context("sgd"):
        momentum_tx = (
            trace(momentum, nesterov, accumulator_dtype)
            if momentum is not None
            else optax.identity()
        )
        return _named("sgd", optax.chain(momentum_tx, scale_by_learning_rate(learning_rate)))


def lion(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any = None,
    weight_decay: Schedule = 1e-3,
    mask: Mask = None,
) -> optax.GradientTransformationExtraArgs:
    """Lion: the sign of a momentum interpolation, decoupled weight decay, learning rate.

    Args:
        learning_rate: a finite number >= 0 or a schedule (Lion wants 3-10x smaller rates
            than AdamW).
        b1, b2, mu_dtype: see :func:`scale_by_lion`.
        weight_decay: decay strength (>= 0) or a schedule.
        mask: which leaves decay (None: all).

    Returns:
        An ``optax.GradientTransformationExtraArgs``.

    Example:
        >>> import jax.numpy as jnp
        >>> params = {"w": jnp.zeros(2)}
        >>> tx = lion(0.01)
        >>> updates, _ = tx.update({"w": jnp.array([5.0, -0.1])}, tx.init(params), params)
        >>> [round(float(x), 4) for x in updates["w"]]
        [-0.01, 0.01]

    Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023.
    """
    v.check_schedule_or_non_negative("lion", "weight_decay", weight_decay)
    with v.reraise_with_context("lion"):
        return _named(
            "lion",
            optax.chain(
                scale_by_lion(b1, b2, mu_dtype),
                add_decayed_weights(weight_decay, mask),
                scale_by_learning_rate(learning_rate),
            ),
        )


def rmsprop(
    learning_rate: Schedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    nu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """RMSprop (optionally centred), the learning rate, then optional momentum.

    Args:
        learning_rate: a finite number >= 0 or a schedule.
        decay, eps, initial_scale, eps_in_sqrt, bias_correction: see :func:`scale_by_rms`.
        centered: divide by the running standard deviation instead of the RMS.
        momentum: momentum coefficient in [0, 1], or None.
        nesterov: use Nesterov momentum.
        nu_dtype: dtype of the running averages (keyword-only).

    Returns:
        An ``optax.GradientTransformationExtraArgs``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = rmsprop(0.1, decay=0.0, eps=1e-12)
        >>> updates, _ = tx.update({"w": jnp.array([4.0])}, tx.init({"w": jnp.zeros(1)}))
        >>> round(float(updates["w"][0]), 4)
        -0.1

    Reference: Hinton, Lecture 6.5 of "Neural Networks for Machine Learning", 2012.
    """
    if momentum is not None:
        v.check_in_range("rmsprop", "momentum", momentum, 0.0, 1.0, include_high=True)
    with v.reraise_with_context("rmsprop"):
        scaling = scale_by_stddev if centered else scale_by_rms
        momentum_tx = trace(momentum, nesterov) if momentum is not None else optax.identity()
        return _named(
            "rmsprop",
            optax.chain(
                scaling(decay, eps, initial_scale, eps_in_sqrt, bias_correction, nu_dtype=nu_dtype),
                scale_by_learning_rate(learning_rate),
                momentum_tx,
            ),
        )


def radam(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    nesterov: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Rectified Adam: ``scale_by_radam`` then the learning rate.

    Args:
        learning_rate: a finite number >= 0 or a schedule.
        b1, b2, eps, eps_root, threshold, nesterov: see :func:`scale_by_radam`.
        mu_dtype, nu_dtype: moment dtypes (keyword-only).

    Returns:
        An ``optax.GradientTransformationExtraArgs``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = radam(0.1)
        >>> updates, _ = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))
        >>> round(float(updates["w"][0]), 4)
        -0.2

    Reference: Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", 2020.
    """
    with v.reraise_with_context("radam"):
        return _named(
            "radam",
            optax.chain(
                scale_by_radam(
                    b1,
                    b2,
                    eps,
                    eps_root,
                    threshold,
                    nesterov=nesterov,
                    mu_dtype=mu_dtype,
                    nu_dtype=nu_dtype,
                ),
                scale_by_learning_rate(learning_rate),
            ),
        )


def adagrad(
    learning_rate: Schedule,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    *,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Adagrad: divide by the root of the running sum of squared gradients.

    Args:
        learning_rate: a finite number >= 0 or a schedule.
        initial_accumulator_value, eps: see :func:`scale_by_rss`.
        accumulator_dtype: dtype of the sum (keyword-only).

    Returns:
        An ``optax.GradientTransformationExtraArgs``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = adagrad(1.0, initial_accumulator_value=0.0, eps=0.0)
        >>> updates, _ = tx.update({"w": jnp.array([3.0])}, tx.init({"w": jnp.zeros(1)}))
        >>> float(updates["w"][0])
        -1.0

    Reference: Duchi et al., "Adaptive Subgradient Methods for Online Learning", 2011.
    """
    with v.reraise_with_context("adagrad"):
        return _named(
            "adagrad",
            optax.chain(
                scale_by_rss(initial_accumulator_value, eps, accumulator_dtype=accumulator_dtype),
                scale_by_learning_rate(learning_rate),
            ),
        )


def adopt(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.9999,
    eps: float = 1e-6,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Any = default_adopt_clip,
    nu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """ADOPT: ``scale_by_adopt`` then the learning rate.

    Adam with the gradient normalised by the second moment from *before* it, which
    converges for any ``b2`` (hence the default 0.9999). Same arguments and defaults as
    ``optax.contrib.adopt`` (its ``clip_value_fn`` default ``x ** 0.25`` is
    :func:`~scirs2_optim_jax.transforms.adopt.default_adopt_clip` here).

    Args:
        learning_rate: a finite number >= 0 or a schedule.
        b1, b2, eps, mu_dtype, nesterov, use_clipping, clip_value_fn: see
            :func:`~scirs2_optim_jax.transforms.adopt.scale_by_adopt`.
        nu_dtype: dtype of the second moment (keyword-only; optax has none).

    Returns:
        An ``optax.GradientTransformationExtraArgs``.

    Raises:
        ValueError, TypeError: naming the invalid argument, e.g.
            ``adopt: scale_by_adopt: eps must be a finite number > 0, got 0.0``.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> params = jnp.array([1.0, -2.0])
        >>> tx = adopt(0.05)
        >>> state = tx.init(params)
        >>> for _ in range(100):
        ...     grads = jax.grad(lambda p: jnp.sum(p**2))(params)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> bool(jnp.all(jnp.abs(params) < 0.2))
        True

    Reference: Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any beta2 with the
    Optimal Rate", 2024.
    """
    with v.reraise_with_context("adopt"):
        return _named(
            "adopt",
            optax.chain(
                scale_by_adopt(
                    b1,
                    b2,
                    eps,
                    mu_dtype,
                    nesterov=nesterov,
                    use_clipping=use_clipping,
                    clip_value_fn=clip_value_fn,
                    nu_dtype=nu_dtype,
                ),
                scale_by_learning_rate(learning_rate),
            ),
        )


def _schedule_free_rate(fn: str, learning_rate: Schedule, warmup_steps: int | None) -> Schedule:
    """The learning rate of a schedule-free alias: ``learning_rate`` after a linear warmup."""
    v.check_learning_rate(fn, "learning_rate", learning_rate)
    warmup = v.check_int(fn, "warmup_steps", warmup_steps, 1, allow_none=True)
    if warmup is None:
        return learning_rate
    if callable(learning_rate):
        raise TypeError(
            f"{fn}: warmup_steps={warmup} needs a constant learning_rate (a schedule brings "
            f"its own warmup), got {learning_rate!r}"
        )
    return schedules.warmup_constant_schedule(0.0, learning_rate, warmup)


def schedule_free_adamw(
    learning_rate: Schedule = 0.0025,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: Schedule = 0.0,
    weight_lr_power: float = 2.0,
    state_dtype: Any = None,
    *,
    mask: Mask = None,
    nu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Schedule-Free AdamW: AdamW without momentum inside :func:`schedule_free`.

    The base optimizer is ``scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True)
    -> add_decayed_weights -> scale_by_learning_rate`` (Adam with ``b1=0``, without its
    all-zero first moment); ``b1`` is the schedule-free interpolation. Same arguments and
    defaults as ``optax.contrib.schedule_free_adamw``. Train at the parameters the loop
    holds; evaluate at
    :func:`~scirs2_optim_jax.transforms.schedule_free.schedule_free_eval_params`.

    Args:
        learning_rate: a finite number >= 0 or a schedule (without decay: schedule-free
            needs none).
        warmup_steps: linear warmup from 0 to a constant ``learning_rate`` over this many
            steps (an integer >= 1), or None.
        b1: interpolation between the average and the iterates, in (0, 1].
        b2: decay of the squared-gradient average, in [0, 1).
        eps: added to the root of the average, > 0.
        weight_decay: decoupled weight decay (>= 0) or a schedule, applied at the
            gradient point ``y`` and scaled by the learning rate.
        weight_lr_power: the averaging weights are ``max_lr ** weight_lr_power``; >= 0.
        state_dtype: dtype of the iterates ``z`` (the state's parameter-sized sequence).
        mask: which leaves decay (None: all; keyword-only).
        nu_dtype: dtype of the second moment (keyword-only; optax has none).

    Returns:
        An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

    Raises:
        ValueError, TypeError: naming the invalid argument, e.g.
            ``schedule_free_adamw: b1 must be a number in (0.0, 1.0], got 0.0``.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from scirs2_optim_jax.transforms import schedule_free_eval_params
        >>> params = jnp.array([1.0, -2.0])
        >>> tx = schedule_free_adamw(0.1, warmup_steps=5)
        >>> state = tx.init(params)
        >>> for _ in range(200):
        ...     grads = jax.grad(lambda p: jnp.sum(p**2))(params)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> x = schedule_free_eval_params(state, params)
        >>> bool(jnp.all(jnp.abs(x) < 0.05))
        True

    Reference: Defazio et al., "The Road Less Scheduled", 2024.
    """
    fn = "schedule_free_adamw"
    rate = _schedule_free_rate(fn, learning_rate, warmup_steps)
    v.check_in_range(fn, "b1", b1, 0.0, 1.0, include_low=False, include_high=True)
    v.check_in_range(fn, "b2", b2, 0.0, 1.0)
    v.check_positive(fn, "eps", eps)
    v.check_learning_rate(fn, "weight_decay", weight_decay)
    with v.reraise_with_context(fn):
        base = optax.chain(
            scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True, nu_dtype=nu_dtype),
            add_decayed_weights(weight_decay, mask),
            scale_by_learning_rate(rate),
        )
    return _schedule_free(fn, base, rate, b1, weight_lr_power, state_dtype)


def _schedule_free(
    fn: str,
    base: optax.GradientTransformation,
    rate: Schedule,
    b1: float,
    weight_lr_power: float,
    state_dtype: Any,
) -> optax.GradientTransformationExtraArgs:
    """:func:`schedule_free` around ``base``, with its errors named after the alias ``fn``."""
    try:
        return schedule_free(base, rate, b1, weight_lr_power, state_dtype)
    except (ValueError, TypeError) as err:
        # "schedule_free: b1 must ..." reads "<alias>: b1 must ...": the alias's argument.
        raise type(err)(str(err).replace("schedule_free:", f"{fn}:", 1)) from None


def schedule_free_sgd(
    learning_rate: Schedule = 1.0,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    weight_decay: Schedule | None = None,
    weight_lr_power: float = 2.0,
    state_dtype: Any = None,
    *,
    mask: Mask = None,
) -> optax.GradientTransformationExtraArgs:
    """Schedule-Free SGD: plain SGD (optionally with weight decay) inside :func:`schedule_free`.

    Same arguments and defaults as ``optax.contrib.schedule_free_sgd``. The weight decay is
    added to the gradient, so it is scaled by the learning rate (as in PyTorch).

    Args:
        learning_rate: a finite number >= 0 or a schedule (without decay).
        warmup_steps: linear warmup from 0 to a constant ``learning_rate`` over this many
            steps (an integer >= 1), or None.
        b1: interpolation between the average and the iterates, in (0, 1].
        weight_decay: weight decay (>= 0) or a schedule, or None for none.
        weight_lr_power: the averaging weights are ``max_lr ** weight_lr_power``; >= 0.
        state_dtype: dtype of the iterates ``z``.
        mask: which leaves decay (None: all; keyword-only).

    Returns:
        An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = schedule_free_sgd(0.5)
        >>> params = {"w": jnp.array([2.0])}
        >>> updates, _ = tx.update({"w": jnp.array([1.0])}, tx.init(params), params)
        >>> round(float(updates["w"][0]), 6)  # z moves by -0.5, and the first x = z
        -0.5

    Reference: Defazio et al., "The Road Less Scheduled", 2024.
    """
    fn = "schedule_free_sgd"
    rate = _schedule_free_rate(fn, learning_rate, warmup_steps)
    if weight_decay is not None:
        v.check_schedule_or_non_negative(fn, "weight_decay", weight_decay)
    with v.reraise_with_context(fn):
        base = sgd(rate)
        if weight_decay is not None:
            base = optax.chain(add_decayed_weights(weight_decay, mask), base)
    return _schedule_free(fn, base, rate, b1, weight_lr_power, state_dtype)
