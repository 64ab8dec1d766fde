"""Choosing a starting optimizer, precision and memory strategy from the size of the run.

:func:`select_optimizer` applies three documented rules (``docs/configuration.md``), first
match wins:

1. **more than 1B parameters on an accelerator**: AdamW at 1e-4, weight decay 0.01, bf16
   with float32 master weights and moments, ZeRO (stage 1, or stage 2 when stage 1 does not
   fit the memory given); when even stage 2 does not fit but Adafactor's smaller state
   does, Adafactor at 1e-2 (its step is relative to each parameter's scale) with ZeRO-2;
2. **more than 100M parameters**: LAMB at 2e-3 in float32 (its per-layer trust ratio keeps
   large batches stable), with gradient checkpointing on an accelerator;
3. **otherwise**: Adam at 1e-3 in float32.

On an accelerator, when the chosen plan still does not fit the device's memory, the state
can leave it: with :func:`~scirs2_optim_jax.engine.offload` ``compute="host"`` the device
holds only the parameters and gradients, and the host keeps the optimizer state (master
weights included) and runs the update. Where that fits (and, when ``host_memory_bytes`` is
given, the state fits the host), the selection recommends it (``offload="host"``, rule
``<rule>_offload``) with the rule's optimizer: AdamW for the large rule (its first choice:
once the state is off the device, Adafactor's smaller state saves the device nothing; the
host runs AdamW as the engine's fused one-pass step), LAMB or Adam otherwise.

It is a starting point, not a tuned recipe: the learning rate in particular wants a sweep.
The memory figures come from :func:`~scirs2_optim_jax.config.plan_memory`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.config.planner import MemoryPlan, format_bytes, plan_memory
from scirs2_optim_jax.config.schema import OptimizerConfig, PrecisionConfig, RunConfig

__all__ = [
    "ACCELERATORS",
    "LARGE_MODEL_PARAMS",
    "MEDIUM_MODEL_PARAMS",
    "OptimizerSelection",
    "select_optimizer",
]

LARGE_MODEL_PARAMS = 1_000_000_000
MEDIUM_MODEL_PARAMS = 100_000_000
ACCELERATORS: tuple[str, ...] = ("cpu", "gpu", "cuda", "rocm", "tpu")


@dataclass(frozen=True)
class OptimizerSelection:
    """What :func:`select_optimizer` chose, why, and what it costs in memory.

    Attributes:
        rule: ``"large_accelerator"``, ``"large_accelerator_factored"``, ``"medium"`` or
            ``"small"``, with ``"_offload"`` appended when the state is offloaded.
        reason: one sentence for people.
        optimizer: the optimizer section to run.
        precision: the precision section to run.
        zero_stage: ZeRO stage (0: none).
        gradient_checkpointing: whether to rematerialise activations.
        plan: per-device memory of params, grads, optimizer state and master weights,
            and where each lives.
        available_memory_bytes: the memory per device it was chosen for.
        fits: whether ``plan.device_bytes`` fits in ``available_memory_bytes`` (activations
            come on top; see :func:`~scirs2_optim_jax.config.recommend_batch_size`) and,
            with offload and ``host_memory_bytes`` given, the offloaded state in it.
        offload: None, or ``"host"``: keep the optimizer state in host memory and update
            it there (``engine.offload(tx, compute="host")``; in a config
            ``parallel.offload_optimizer``).
        host_memory_bytes: the host memory it was chosen for, if given.
    """

    rule: str
    reason: str
    optimizer: OptimizerConfig
    precision: PrecisionConfig
    zero_stage: int
    gradient_checkpointing: bool
    plan: MemoryPlan
    available_memory_bytes: int
    fits: bool
    offload: str | None = None
    host_memory_bytes: int | None = None

    def apply(self, config: RunConfig, batch_size: int | None = None) -> RunConfig:
        """``config`` with this selection's optimizer, precision and parallel settings
        (ZeRO stage, gradient checkpointing, ``offload_optimizer``)."""
        parallel = dataclasses.replace(
            config.parallel,
            zero_stage=self.zero_stage,
            gradient_checkpointing=self.gradient_checkpointing,
            offload_optimizer=self.offload,
        )
        changes: dict[str, Any] = {
            "optimizer": self.optimizer,
            "precision": self.precision,
            "parallel": parallel,
        }
        if batch_size is not None:
            changes["batch_size"] = batch_size
        return dataclasses.replace(config, **changes)


def select_optimizer(
    num_params: int,
    batch_size: int,
    available_memory_bytes: int,
    accelerator: str | bool,
    *,
    num_devices: int = 1,
    host_memory_bytes: int | None = None,
) -> OptimizerSelection:
    """Chooses a starting optimizer, precision and memory strategy (see the module docs).

    Args:
        num_params: parameters in the model, >= 1.
        batch_size: global batch size, >= 1 (recorded in the reason; plan the micro-batch
            with :func:`~scirs2_optim_jax.config.recommend_batch_size`).
        available_memory_bytes: memory per device, >= 1.
        accelerator: the platform (``"cpu"``, ``"gpu"``, ``"cuda"``, ``"rocm"``, ``"tpu"``)
            or a bool (True: an accelerator).
        num_devices: devices on the data axis (ZeRO divides the state among them).
        host_memory_bytes: host memory for the optimizer state of all ``num_devices``
            devices (``compute="host"`` runs in one process, which holds it all); None:
            not checked. Only used when the state is offloaded.

    Returns:
        An :class:`OptimizerSelection`.

    Example:
        >>> choice = select_optimizer(7_000_000_000, 1024, 80 * 2**30, "gpu", num_devices=8)
        >>> choice.optimizer.name, choice.optimizer.learning_rate, choice.precision.mode
        ('adamw', 0.0001, 'bf16')
        >>> choice.zero_stage, choice.fits
        (1, True)
        >>> select_optimizer(300_000_000, 256, 40 * 2**30, "cpu").optimizer.name
        'lamb'
        >>> select_optimizer(10_000_000, 256, 16 * 2**30, "cpu").optimizer.learning_rate
        0.001
        >>> small = select_optimizer(7_000_000_000, 1024, 40 * 2**30, "gpu")
        >>> small.rule, small.offload, small.fits, small.plan.device_bytes  # bf16 params, grads
        ('large_accelerator_offload', 'host', True, 28000000000)
    """
    fn = "select_optimizer"
    count = v.check_int(fn, "num_params", num_params, 1)
    batch = v.check_int(fn, "batch_size", batch_size, 1)
    available = v.check_int(fn, "available_memory_bytes", available_memory_bytes, 1)
    devices = v.check_int(fn, "num_devices", num_devices, 1)
    host_memory = (
        None
        if host_memory_bytes is None
        else v.check_int(fn, "host_memory_bytes", host_memory_bytes, 1)
    )
    if isinstance(accelerator, bool):
        on_accelerator = accelerator
    elif isinstance(accelerator, str) and accelerator.lower() in ACCELERATORS:
        on_accelerator = accelerator.lower() != "cpu"
    else:
        raise ValueError(
            f"select_optimizer: accelerator must be a bool or one of {', '.join(ACCELERATORS)}, "
            f"got {accelerator!r}"
        )

    host_choice = None  # (optimizer, reason) to offload, when not the rule's final choice
    if count > LARGE_MODEL_PARAMS and on_accelerator:
        optimizer = OptimizerConfig(name="adamw", learning_rate=1e-4, weight_decay=0.01)
        precision = PrecisionConfig(mode="bf16", master_weights=True)
        stage, plan = (
            1,
            plan_memory(count, "adamw", precision="bf16", zero_stage=1, num_devices=devices),
        )
        if plan.total_bytes > available and devices > 1:
            stage = 2
            plan = plan_memory(count, "adamw", precision="bf16", zero_stage=2, num_devices=devices)
        rule, checkpointing = "large_accelerator", False
        reason = (
            f"{count:,} params > 1B on an accelerator: AdamW 1e-4 (wd 0.01), bf16 with fp32 "
            f"master weights and moments, ZeRO stage {stage} over {devices} device(s)"
        )
        host_choice = (optimizer, reason)
        # Planned from the count alone, Adafactor's second moment is one unfactored vector:
        # an upper bound (a model's matrices keep only rows + columns).
        factored = plan_memory(
            count, "adafactor", precision="bf16", zero_stage=stage, num_devices=devices
        )
        if plan.total_bytes > available >= factored.total_bytes:
            optimizer = OptimizerConfig(name="adafactor", learning_rate=1e-2)
            plan, rule = factored, "large_accelerator_factored"
            reason = (
                f"{count:,} params > 1B on an accelerator, AdamW's state does not fit even "
                f"with ZeRO stage {stage}: Adafactor 1e-2 (factored second moment, no first "
                f"moment), bf16 with fp32 master weights, ZeRO stage {stage} over {devices} "
                "device(s)"
            )
    elif count > MEDIUM_MODEL_PARAMS:
        optimizer = OptimizerConfig(name="lamb", learning_rate=2e-3)
        precision = PrecisionConfig(mode="fp32")
        stage, plan = 0, plan_memory(count, "lamb")
        rule, checkpointing = "medium", on_accelerator
        reason = (
            f"{count:,} params > 100M: LAMB 2e-3 in fp32 (layer-wise trust ratios suit the "
            f"large batch of {batch})"
            + (", gradient checkpointing on the accelerator" if on_accelerator else "")
        )
    else:
        optimizer = OptimizerConfig(name="adam", learning_rate=1e-3)
        precision = PrecisionConfig(mode="fp32")
        stage, plan = 0, plan_memory(count, "adam")
        rule, checkpointing = "small", False
        reason = f"{count:,} params <= 100M: Adam 1e-3 in fp32"
    offload = None
    if on_accelerator and plan.device_bytes > available:
        # Off the device, the state's size costs host memory only: the large rule offloads
        # AdamW, its first choice, rather than the Adafactor fallback.
        host_optimizer, host_reason = host_choice or (optimizer, reason)
        offloaded = plan_memory(
            count,
            host_optimizer.name,
            precision=precision.mode,
            zero_stage=stage,
            num_devices=devices,
            offload="host",
        )
        host_need = offloaded.host_bytes * devices
        host_fits = host_memory is None or host_need <= host_memory
        if offloaded.device_bytes <= available and host_fits:
            optimizer, plan, offload = host_optimizer, offloaded, "host"
            rule = f"{rule.removesuffix('_factored')}_offload"
            reason = (
                f"{host_reason}; its state does not fit the device: it stays in host memory "
                "and the host updates it "
                f'(offload compute="host"): {format_bytes(host_need)} of host memory, '
                f"{format_bytes(offloaded.streamed_bytes)} over the host link per device "
                "and step"
            )
        elif offloaded.device_bytes <= available:
            reason += (
                f"; offloading the state would need {format_bytes(host_need)} of host "
                f"memory, more than the {format_bytes(host_memory or 0)} given"
            )
    fits = plan.device_bytes <= available and (
        offload is None or host_memory is None or plan.host_bytes * devices <= host_memory
    )
    reason += (
        f"; {'device memory' if offload else 'state'} {format_bytes(plan.device_bytes)} per "
        f"device {'fits in' if plan.device_bytes <= available else 'exceeds'} "
        f"{format_bytes(available)}"
    )
    return OptimizerSelection(
        rule=rule,
        reason=reason,
        optimizer=optimizer,
        precision=precision,
        zero_stage=stage,
        gradient_checkpointing=checkpointing,
        plan=plan,
        available_memory_bytes=available,
        fits=fits,
        offload=offload,
        host_memory_bytes=host_memory,
    )
