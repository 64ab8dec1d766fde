"""Building the optimizer a :class:`RunConfig` describes.

``build_optimizer(config)`` is, in order: global-norm clipping (``[clipping]``), the
optimizer alias with its schedule (``[optimizer]`` after the feature flags, ``[schedule]``),
and, for a bf16/fp16 run with ``precision.master_weights``, the float32 master-weights
wrapper around both. Loss scaling is not a gradient transformation (it acts on the loss
before differentiation): :func:`build_loss_scale` returns it separately.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from scirs2_optim_jax import optimizers
from scirs2_optim_jax.config.flags import resolve_optimizer
from scirs2_optim_jax.config.schema import OptimizerConfig, RunConfig, ScheduleConfig
from scirs2_optim_jax.precision import DynamicLossScale, with_master_weights
from scirs2_optim_jax.schedules import (
    Schedule,
    constant_schedule,
    warmup_constant_schedule,
    warmup_cosine,
)
from scirs2_optim_jax.transforms.clipping import clip_by_global_norm
from scirs2_optim_jax.transforms.norms import AxisName

__all__ = [
    "APPLICABLE_FIELDS",
    "build_loss_scale",
    "build_optimizer",
    "build_schedule",
    "optimizer_arguments",
]

# For each alias: which [optimizer] fields it takes, and under which argument name.
APPLICABLE_FIELDS: dict[str, dict[str, str]] = {
    "adam": {
        "b1": "b1",
        "b2": "b2",
        "eps": "eps",
        "nesterov": "nesterov",
        "mu_dtype": "mu_dtype",
        "nu_dtype": "nu_dtype",
    },
    "adamw": {
        "b1": "b1",
        "b2": "b2",
        "eps": "eps",
        "weight_decay": "weight_decay",
        "nesterov": "nesterov",
        "mu_dtype": "mu_dtype",
        "nu_dtype": "nu_dtype",
    },
    "radam": {
        "b1": "b1",
        "b2": "b2",
        "eps": "eps",
        "nesterov": "nesterov",
        "mu_dtype": "mu_dtype",
        "nu_dtype": "nu_dtype",
    },
    "lamb": {
        "b1": "b1",
        "b2": "b2",
        "eps": "eps",
        "weight_decay": "weight_decay",
        "mu_dtype": "mu_dtype",
        "nu_dtype": "nu_dtype",
    },
    "lars": {
        "weight_decay": "weight_decay",
        "eps": "eps",
        "momentum": "momentum",
        "nesterov": "nesterov",
        "mu_dtype": "accumulator_dtype",
    },
    "sgd": {"momentum": "momentum", "nesterov": "nesterov", "mu_dtype": "accumulator_dtype"},
    "lion": {"b1": "b1", "b2": "b2", "weight_decay": "weight_decay", "mu_dtype": "mu_dtype"},
    "rmsprop": {
        "eps": "eps",
        "momentum": "momentum",
        "nesterov": "nesterov",
        "nu_dtype": "nu_dtype",
    },
    "adagrad": {"eps": "eps", "nu_dtype": "accumulator_dtype"},
}
_SHARDED_NORMS = ("lamb", "lars")
_HYPERPARAMETERS = (
    "weight_decay",
    "b1",
    "b2",
    "eps",
    "momentum",
    "nesterov",
    "mu_dtype",
    "nu_dtype",
)


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
    for field in _HYPERPARAMETERS:
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
    """The learning-rate schedule of ``[schedule]``, peaking at ``peak``.

    ``warmup_cosine``: :func:`~scirs2_optim_jax.schedules.warmup_cosine`;
    ``warmup_constant``: linear warmup over ``ceil(warmup_ratio * total_steps)`` steps (at
    least 1), then constant; ``constant``: ``peak`` throughout.

    Example:
        >>> schedule = build_schedule(ScheduleConfig(name="constant"), 0.1)
        >>> round(float(schedule(5)), 4)
        0.1
    """
    if schedule.name == "warmup_cosine":
        return warmup_cosine(
            peak, schedule.total_steps, schedule.warmup_ratio, schedule.min_lr_ratio
        )
    if schedule.name == "warmup_constant":
        # Rounded first so that 0.07 * 100 gives 7 steps, not 8.
        warmup = max(1, math.ceil(round(schedule.warmup_ratio * schedule.total_steps, 9)))
        return warmup_constant_schedule(0.0, peak, warmup)
    return constant_schedule(peak)


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
    kwargs = optimizer_arguments(optimizer)
    if optimizer.name in _SHARDED_NORMS and axis_name is not None:
        kwargs["axis_name"] = axis_name
    schedule = build_schedule(config.schedule, optimizer.learning_rate)
    core = getattr(optimizers, optimizer.name)(schedule, **kwargs)
    parts = []
    if config.clipping.max_global_norm is not None:
        parts.append(clip_by_global_norm(config.clipping.max_global_norm, axis_name=axis_name))
    tx = optax.chain(*parts, core) if parts else core
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
