"""The run configuration: one frozen dataclass per section, every field typed and checked.

See ``docs/configuration.md`` for the file format, the environment variables and the
production defaults; :func:`scirs2_optim_jax.config.load_config` reads a file and the
environment into a :class:`RunConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from scirs2_optim_jax.config.fields import Section, at_least, in_range, positive, setting
from scirs2_optim_jax.config.registry import (
    OPTIMIZERS,
    OptimizerName,
    ScheduleName,
    normalize_schedule,
)

__all__ = [
    "OPTIMIZER_NAMES",
    "AcceleratorConfig",
    "CheckpointConfig",
    "ClippingConfig",
    "FeatureFlags",
    "MonitoringConfig",
    "OptimizerConfig",
    "ParallelConfig",
    "PrecisionConfig",
    "ResourceConfig",
    "RunConfig",
    "ScheduleConfig",
]

unit = in_range(0.0, 1.0)
unit_closed = in_range(0.0, 1.0, include_high=True)


@dataclass(frozen=True)
class OptimizerConfig(Section):
    """``[optimizer]``: which optimizer and its hyperparameters.

    Optional hyperparameters left unset (None) take the optimizer's own default; one set
    for an optimizer that has no such argument is an error when the optimizer is built.
    """

    SECTION: ClassVar[str] = "optimizer"
    # The registry's Literal of optimizer names (RUF009 cannot see through the alias).
    name: OptimizerName = setting(  # noqa: RUF009
        "adamw", "optimizer alias from scirs2_optim_jax.optimizers"
    )
    learning_rate: float = setting(1e-3, "peak learning rate", check=positive)
    weight_decay: float | None = setting(
        None, "decoupled weight decay (adamw, lamb, lars, lion)", check=in_range(0.0, 1e9)
    )
    b1: float | None = setting(None, "first-moment decay (adam family, lamb, lion)", check=unit)
    b2: float | None = setting(None, "second-moment decay (adam family, lamb, lion)", check=unit)
    eps: float | None = setting(None, "denominator epsilon", check=positive)
    momentum: float | None = setting(None, "momentum (sgd, lars, rmsprop)", check=unit_closed)
    nesterov: bool | None = setting(
        None, "Nesterov momentum (adam, adamw, radam, sgd, lars, rmsprop)"
    )
    mu_dtype: Literal["float32", "bfloat16", "float16"] | None = setting(
        None, "first-moment / momentum dtype"
    )
    nu_dtype: Literal["float32", "bfloat16", "float16"] | None = setting(
        None, "second-moment / accumulator dtype"
    )


# The optimizer aliases a config can name (the registry's list).
OPTIMIZER_NAMES: tuple[str, ...] = OPTIMIZERS


@dataclass(frozen=True)
class ScheduleConfig(Section):
    """``[schedule]``: the learning-rate schedule, peaking at ``optimizer.learning_rate``."""

    SECTION: ClassVar[str] = "schedule"
    name: ScheduleName = setting(  # noqa: RUF009  a Literal, as OptimizerConfig.name
        "warmup_cosine",
        "schedule shape (see config.make_schedule; warmup-cosine etc. accepted too)",
        normalize=normalize_schedule,
    )
    total_steps: int = setting(100_000, "length of the run in optimizer steps", check=at_least(1))
    warmup_ratio: float = setting(0.06, "fraction of total_steps spent warming up", check=unit)
    min_lr_ratio: float = setting(
        0.01, "final learning rate / peak (warmup_cosine, cosine, linear)", check=unit_closed
    )


@dataclass(frozen=True)
class ClippingConfig(Section):
    """``[clipping]``: gradient clipping before the optimizer."""

    SECTION: ClassVar[str] = "clipping"
    max_global_norm: float | None = setting(
        1.0, "clip the gradient tree to this global L2 norm; none disables", check=positive
    )


@dataclass(frozen=True)
class PrecisionConfig(Section):
    """``[precision]``: mixed precision and loss scaling."""

    SECTION: ClassVar[str] = "precision"
    mode: Literal["fp32", "bf16", "fp16"] = setting("fp32", "parameter and compute dtype")
    master_weights: bool = setting(True, "keep a float32 master copy when mode is bf16/fp16")
    loss_scaling: Literal["dynamic", "none"] = setting(
        "dynamic", "dynamic loss scaling when mode is bf16/fp16"
    )
    initial_loss_scale: float = setting(
        2.0**15, "first loss scale, in [1, 2**24]", check=in_range(1.0, 2.0**24, include_high=True)
    )
    growth_interval: int = setting(2000, "finite steps before the scale doubles", check=at_least(1))


@dataclass(frozen=True)
class ParallelConfig(Section):
    """``[parallel]``: data parallelism, ZeRO, optimizer-state offload and gradient
    checkpointing."""

    SECTION: ClassVar[str] = "parallel"
    num_devices: int | None = setting(
        None, "devices on the data axis; none: all", check=at_least(1)
    )
    data_axis: str = setting("data", "name of the data-parallel mesh axis")
    zero_stage: Literal[0, 1, 2] = setting(
        0, "0: replicate; 1: shard optimizer state; 2: also gradients"
    )
    gradient_checkpointing: bool = setting(False, "rematerialise activations in the backward pass")
    remat_policy: Literal["full", "dots", "dots_no_batch"] = setting(
        "full", "what a checkpointed layer saves (see training.remat)"
    )
    offload_optimizer: Literal["device", "host"] | None = setting(
        None,
        "keep the optimizer state in host memory (engine.offload): device (streamed to the "
        "device for the update) or host (updated on the host's CPU); none: device memory",
    )


@dataclass(frozen=True)
class CheckpointConfig(Section):
    """``[checkpoint]``: where and how often the train state is saved."""

    SECTION: ClassVar[str] = "checkpoint"
    directory: str | None = setting(None, "checkpoint directory; none disables checkpointing")
    every_steps: int = setting(1000, "save every this many steps", check=at_least(1))
    keep: int = setting(3, "checkpoints retained", check=at_least(1))
    async_save: bool = setting(True, "write checkpoints in the background")


@dataclass(frozen=True)
class MonitoringConfig(Section):
    """``[monitoring]``: metrics, health and logs."""

    SECTION: ClassVar[str] = "monitoring"
    enabled: bool = setting(True, "collect in-step metrics and evaluate run health")
    log_every_steps: int = setting(100, "log metrics every this many steps", check=at_least(1))
    metrics_port: int | None = setting(
        9100,
        "Prometheus /metrics and /health port; none disables",
        check=in_range(1, 65535, include_high=True),
    )
    log_format: Literal["json", "text"] = setting("json", "structured (json) or plain logs")
    pushgateway_url: str | None = setting(None, "Prometheus push gateway URL; none disables")
    pushgateway_token: str | None = setting(
        None, "bearer token for the push gateway (secret)", secret=True
    )


@dataclass(frozen=True)
class ResourceConfig(Section):
    """``[resources]``: limits the planner and the run respect."""

    SECTION: ClassVar[str] = "resources"
    device_memory_bytes: int | None = setting(
        None,
        "memory per device; none: ask the device (host RAM on CPU)",
        check=at_least(1),
        byte_count=True,
    )
    max_device_memory_fraction: float = setting(
        0.9,
        "plan to use at most this share of device memory",
        check=in_range(0.0, 1.0, include_low=False, include_high=True),
    )
    max_host_memory_fraction: float = setting(
        0.9,
        "stop the run above this share of host memory",
        check=in_range(0.0, 1.0, include_low=False, include_high=True),
    )
    max_run_seconds: float | None = setting(
        None, "wall-clock limit of the run; none: no limit", check=positive
    )


@dataclass(frozen=True)
class AcceleratorConfig(Section):
    """``[accelerator]``: JAX's GPU memory settings, applied before the backend starts."""

    SECTION: ClassVar[str] = "accelerator"
    preallocate: bool | None = setting(None, "XLA_PYTHON_CLIENT_PREALLOCATE; none: JAX default")
    memory_fraction: float | None = setting(
        None,
        "XLA_PYTHON_CLIENT_MEM_FRACTION; none: JAX default",
        check=in_range(0.0, 1.0, include_low=False, include_high=True),
    )
    allocator: Literal["default", "platform", "bfc", "cuda_async"] | None = setting(
        None, "XLA_PYTHON_CLIENT_ALLOCATOR; none: JAX default"
    )


@dataclass(frozen=True)
class FeatureFlags(Section):
    """``[features]``: switches that choose an optimizer variant at run start.

    They are applied on top of ``[optimizer]`` by :func:`resolve_optimizer` and recorded in
    the checkpointed config, so a restored run knows which variant it was.
    """

    SECTION: ClassVar[str] = "features"
    optimizer_variant: OptimizerName | None = setting(  # noqa: RUF009  a Literal or None
        None, "run this optimizer instead of optimizer.name"
    )
    bf16_momentum: bool = setting(False, "store the first moment / momentum in bfloat16")


@dataclass(frozen=True)
class RunConfig(Section):
    """The whole run configuration.

    Example:
        >>> config = RunConfig()
        >>> config.optimizer.name, config.precision.mode, config.monitoring.enabled
        ('adamw', 'fp32', True)
        >>> RunConfig(seed=-1)
        Traceback (most recent call last):
        ...
        ValueError: config: seed must be an integer >= 0, got -1
    """

    SECTION: ClassVar[str] = ""
    name: str = setting("run", "run name, used in logs and checkpoint paths")
    seed: int = setting(0, "seeds initialisation and data order", check=at_least(0))
    batch_size: int = setting(256, "global batch size per optimizer step", check=at_least(1))
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    clipping: ClippingConfig = dataclasses.field(default_factory=ClippingConfig)
    precision: PrecisionConfig = dataclasses.field(default_factory=PrecisionConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    monitoring: MonitoringConfig = dataclasses.field(default_factory=MonitoringConfig)
    resources: ResourceConfig = dataclasses.field(default_factory=ResourceConfig)
    accelerator: AcceleratorConfig = dataclasses.field(default_factory=AcceleratorConfig)
    features: FeatureFlags = dataclasses.field(default_factory=FeatureFlags)

    def redacted(self) -> dict[str, Any]:
        """The config as plain data with every set secret replaced by ``"<redacted>"``.

        Use it for anything printed or logged.

        Example:
            >>> config = RunConfig(monitoring=MonitoringConfig(pushgateway_token="s3cret"))
            >>> config.redacted()["monitoring"]["pushgateway_token"]
            '<redacted>'
            >>> "s3cret" in repr(config)
            False
        """
        return self.to_dict(redact=True)
