"""The one builder of optimizers and schedules, by name or from a :class:`RunConfig`.

:func:`make_schedule` and :func:`make_optimizer` build a schedule and an optimizer from the
names in :mod:`~scirs2_optim_jax.config.registry` and plain numbers; the demo training job
uses them directly. :func:`build_optimizer` is the same build for a :class:`RunConfig`: in
order, global-norm clipping (``[clipping]``), the optimizer alias with its schedule
(``[optimizer]`` after the feature flags, ``[schedule]``), and, for a bf16/fp16 run with
``precision.master_weights``, the float32 master-weights wrapper around both. Loss scaling
is not a gradient transformation (it acts on the loss before differentiation):
:func:`build_loss_scale` returns it separately.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import optax

from scirs2_optim_jax import optimizers
from scirs2_optim_jax import schedules as s
from scirs2_optim_jax import validation as v
from scirs2_optim_jax.config import registry
from scirs2_optim_jax.config.flags import resolve_optimizer
from scirs2_optim_jax.config.schema import OptimizerConfig, RunConfig, ScheduleConfig
from scirs2_optim_jax.precision import DynamicLossScale, with_master_weights
from scirs2_optim_jax.schedules import Schedule
from scirs2_optim_jax.transforms.clipping import clip_by_global_norm
from scirs2_optim_jax.transforms.combine import chain
from scirs2_optim_jax.transforms.norms import AxisName

__all__ = [
    "APPLICABLE_FIELDS",
    "build_loss_scale",
    "build_optimizer",
    "build_schedule",
    "make_optimizer",
    "make_schedule",
    "optimizer_arguments",
]

# For each alias: which [optimizer] fields it takes, and under which argument name.
APPLICABLE_FIELDS: dict[str, dict[str, str]] = registry.OPTIMIZER_FIELDS

# Fraction of the run that a warmup_stable_decay schedule spends decaying, by default.
WSD_DECAY_RATIO = 0.2


def make_schedule(
    name: str,
    learning_rate: float,
    steps: int,
    *,
    warmup_ratio: float = 0.06,
    min_lr_ratio: float = 0.01,
    decay_ratio: float = WSD_DECAY_RATIO,
    decay_shape: str = "linear",
) -> Schedule:
    """Builds the learning-rate schedule called ``name`` from :mod:`scirs2_optim_jax.schedules`.

    With ``W = ceil(warmup_ratio * steps)`` and ``low = learning_rate * min_lr_ratio``:

    - ``warmup_cosine``: linear warmup over ``W`` steps, cosine decay to ``low`` at ``steps``
      (:func:`~scirs2_optim_jax.schedules.warmup_cosine`);
    - ``warmup_constant``: linear warmup over ``W`` steps (at least 1), then constant;
    - ``constant``: ``learning_rate`` throughout;
    - ``cosine``: cosine decay from ``learning_rate`` to ``low``, no warmup;
    - ``linear``: linear decay from ``learning_rate`` to ``low``, no warmup;
    - ``one_cycle``: cosine one-cycle, rising for the first 30% of the steps
      (:func:`~scirs2_optim_jax.schedules.cosine_onecycle_schedule`);
    - ``warmup_stable_decay``: linear warmup over ``W`` steps, flat at ``learning_rate``,
      then a ``decay_shape`` decay to ``low`` over the last ``floor(decay_ratio * steps)``
      steps (:func:`~scirs2_optim_jax.schedules.warmup_stable_decay`).

    Args:
        name: one of :data:`~scirs2_optim_jax.config.registry.SCHEDULES`, with underscores
            or hyphens (``warmup-cosine``).
        learning_rate: the peak learning rate, a finite number > 0.
        steps: length of the run, an integer >= 1.
        warmup_ratio: fraction of ``steps`` spent warming up, in [0, 1).
        min_lr_ratio: final learning rate as a fraction of the peak, in [0, 1].
        decay_ratio: ``warmup_stable_decay`` only: fraction of ``steps`` spent decaying,
            in [0, 1], with ``warmup_ratio + decay_ratio <= 1``.
        decay_shape: ``warmup_stable_decay`` only: ``"linear"``, ``"cosine"`` or
            ``"1-sqrt"``.

    Returns:
        A schedule: step count -> learning rate (float32).

    Example:
        >>> schedule = make_schedule("linear", 1.0, 10, min_lr_ratio=0.0)
        >>> [round(float(schedule(t)), 2) for t in (0, 5, 10)]
        [1.0, 0.5, 0.0]
    """
    fn = "make_schedule"
    name = registry.canonical_schedule(fn, name)
    v.check_positive(fn, "learning_rate", learning_rate)
    v.check_int(fn, "steps", steps, 1)
    v.check_in_range(fn, "warmup_ratio", warmup_ratio, 0.0, 1.0)
    v.check_in_range(fn, "min_lr_ratio", min_lr_ratio, 0.0, 1.0, include_high=True)
    v.check_in_range(fn, "decay_ratio", decay_ratio, 0.0, 1.0, include_high=True)
    v.check_one_of(fn, "decay_shape", decay_shape, s.WSD_DECAYS)
    peak, low = float(learning_rate), float(learning_rate) * float(min_lr_ratio)
    if name == "warmup_cosine":
        return s.warmup_cosine(peak, steps, warmup_ratio, min_lr_ratio)
    if name == "warmup_constant":
        # Rounded first so that 0.07 * 100 gives 7 steps, not 8.
        warmup = max(1, math.ceil(round(warmup_ratio * steps, 9)))
        return s.warmup_constant_schedule(0.0, peak, warmup)
    if name == "constant":
        return s.constant_schedule(peak)
    if name == "cosine":
        return s.cosine_decay_schedule(peak, steps, alpha=float(min_lr_ratio))
    if name == "linear":
        return s.linear_schedule(peak, low, steps)
    if name == "warmup_stable_decay":
        if warmup_ratio + decay_ratio > 1:
            raise ValueError(
                f"{fn}: warmup_ratio + decay_ratio must be <= 1 for warmup_stable_decay, "
                f"got {warmup_ratio!r} + {decay_ratio!r}"
            )
        # Rounded first so that 0.07 * 100 gives 7 steps, not 8 (or 6).
        warmup = math.ceil(round(warmup_ratio * steps, 9))
        decay = min(math.floor(round(decay_ratio * steps, 9)), steps - warmup)
        return s.warmup_stable_decay(peak, warmup, decay, steps, low, decay_shape)
    return s.cosine_onecycle_schedule(steps, peak)


def make_optimizer(
    optimizer: str,
    learning_rate: float,
    steps: int,
    *,
    schedule: str = "warmup_cosine",
    hyperparameters: Mapping[str, Any] | None = None,
    max_global_norm: float | None = None,
    warmup_ratio: float = 0.06,
    min_lr_ratio: float = 0.01,
    axis_name: AxisName = None,
    decay_ratio: float = WSD_DECAY_RATIO,
    decay_shape: str = "linear",
) -> tuple[optax.GradientTransformation, Schedule]:
    """Builds ``optimizer`` on the schedule ``schedule`` peaking at ``learning_rate``.

    Args:
        optimizer: one of :data:`~scirs2_optim_jax.config.registry.OPTIMIZERS` (an alias in
            :mod:`scirs2_optim_jax.optimizers`).
        learning_rate: the peak learning rate, a finite number > 0.
        steps: length of the run, over which the schedule warms up and decays.
        schedule: a schedule name (see :func:`make_schedule`).
        hyperparameters: further keyword arguments of the alias (``weight_decay``, ``b1``,
            ...), e.g. from :func:`optimizer_arguments`.
        max_global_norm: clip the gradients to this global norm first; None: no clipping.
        warmup_ratio, min_lr_ratio, decay_ratio, decay_shape: see :func:`make_schedule`.
        axis_name: the data-parallel mesh axis, given to the clipping and to LAMB/LARS so
            that their norms cover whole leaves when the leaves are ZeRO shards.

    Returns:
        ``(tx, schedule)``: the gradient transformation and the schedule it uses, so the
        caller can report the learning rate of a step.

    Raises:
        ValueError, TypeError: naming the invalid argument.

    Example:
        >>> tx, schedule = make_optimizer("adamw", 3e-3, steps=800)
        >>> float(schedule(0)) < float(schedule(100))
        True
    """
    fn = "make_optimizer"
    registry.canonical_optimizer(fn, optimizer)
    lr_schedule = make_schedule(
        schedule,
        learning_rate,
        steps,
        warmup_ratio=warmup_ratio,
        min_lr_ratio=min_lr_ratio,
        decay_ratio=decay_ratio,
        decay_shape=decay_shape,
    )
    alias = getattr(optimizers, optimizer)
    kwargs = dict(hyperparameters or {})
    accepted = set(inspect.signature(alias).parameters) - {"learning_rate", "axis_name"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"{fn}: {optimizer} takes no hyperparameter {', '.join(map(repr, unknown))} "
            f"(it takes {', '.join(sorted(accepted))})"
        )
    if optimizer in registry.WHOLE_LEAF_NORMS and axis_name is not None:
        kwargs["axis_name"] = axis_name
    tx = alias(lr_schedule, **kwargs)
    if max_global_norm is not None:
        v.check_positive(fn, "max_global_norm", max_global_norm)
        tx = chain(clip_by_global_norm(max_global_norm, axis_name=axis_name), tx)
    return tx, lr_schedule


def optimizer_arguments(optimizer: OptimizerConfig) -> dict[str, object]:
    """The keyword arguments (besides the learning rate) of ``optimizer.name``'s alias.

    Unset (None) fields are left out, so the alias's own defaults apply.

    Raises:
        ValueError: if a field is set that the alias does not take.

    Example:
        >>> optimizer_arguments(OptimizerConfig(name="sgd", momentum=0.9, mu_dtype="bfloat16"))
        {'momentum': 0.9, 'accumulator_dtype': 'bfloat16'}
    """
    applicable = APPLICABLE_FIELDS[optimizer.name]
    kwargs: dict[str, object] = {}
    for field in registry.HYPERPARAMETER_FIELDS:
        value = getattr(optimizer, field)
        if value is None:
            continue
        if field not in applicable:
            takers = [name for name, fields in APPLICABLE_FIELDS.items() if field in fields]
            raise ValueError(
                f"config: optimizer.{field} = {value!r} does not apply to {optimizer.name!r} "
                f"(it applies to {', '.join(takers)}); set it to none"
            )
        kwargs[applicable[field]] = value
    return kwargs


def build_schedule(schedule: ScheduleConfig, peak: float) -> Schedule:
    """The learning-rate schedule of ``[schedule]``, peaking at ``peak`` (:func:`make_schedule`).

    Example:
        >>> schedule = build_schedule(ScheduleConfig(name="constant"), 0.1)
        >>> round(float(schedule(5)), 4)
        0.1
    """
    if not isinstance(schedule, ScheduleConfig):
        raise TypeError(f"build_schedule: schedule must be a ScheduleConfig, got {schedule!r}")
    return make_schedule(
        schedule.name,
        peak,
        schedule.total_steps,
        warmup_ratio=schedule.warmup_ratio,
        min_lr_ratio=schedule.min_lr_ratio,
    )


def build_optimizer(
    config: RunConfig, *, axis_name: AxisName = None
) -> optax.GradientTransformationExtraArgs:
    """Builds the gradient transformation a run config describes.

    Args:
        config: the run config; its feature flags are applied first
            (:func:`~scirs2_optim_jax.config.resolve_optimizer`).
        axis_name: the mesh axis leaves are sharded over (ZeRO), passed to the clipping and
            to LAMB/LARS trust ratios so their norms cover whole leaves.

    Returns:
        ``[clip_by_global_norm] -> alias(schedule, ...)``, wrapped in
        :func:`~scirs2_optim_jax.precision.with_master_weights` for bf16/fp16 with master
        weights.

    Raises:
        ValueError: if a hyperparameter does not apply to the chosen optimizer.

    Example:
        >>> import jax.numpy as jnp
        >>> from scirs2_optim_jax.config import production_default
        >>> tx = build_optimizer(production_default())
        >>> params = {"w": jnp.ones(3)}
        >>> updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
        >>> updates["w"].shape
        (3,)
    """
    if not isinstance(config, RunConfig):
        raise TypeError(f"build_optimizer: config must be a RunConfig, got {config!r}")
    optimizer = resolve_optimizer(config)
    schedule = config.schedule
    tx, _ = make_optimizer(
        optimizer.name,
        optimizer.learning_rate,
        schedule.total_steps,
        schedule=schedule.name,
        hyperparameters=optimizer_arguments(optimizer),
        max_global_norm=config.clipping.max_global_norm,
        warmup_ratio=schedule.warmup_ratio,
        min_lr_ratio=schedule.min_lr_ratio,
        axis_name=axis_name,
    )
    precision = config.precision
    if precision.mode != "fp32" and precision.master_weights:
        tx = with_master_weights(tx, jnp.float32)
    return optax.with_extra_args_support(tx)


def build_loss_scale(config: RunConfig) -> DynamicLossScale | None:
    """The dynamic loss scale of a bf16/fp16 run (None for fp32 or ``loss_scaling = none``).

    Example:
        >>> from scirs2_optim_jax.config.schema import PrecisionConfig
        >>> build_loss_scale(RunConfig(precision=PrecisionConfig(mode="fp16"))).initial_scale
        32768.0
    """
    precision = config.precision
    if precision.mode == "fp32" or precision.loss_scaling == "none":
        return None
    return DynamicLossScale(
        initial_scale=precision.initial_loss_scale, growth_interval=precision.growth_interval
    )
