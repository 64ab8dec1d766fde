"""select_optimizer recommends offloading the optimizer state where the accelerator has
little memory, and only there."""

from __future__ import annotations

import pytest

from scirs2_optim_jax.config import (
    OptimizerConfig,
    build_optimizer,
    plan_memory,
    production_default,
    select_optimizer,
)
from scirs2_optim_jax.engine import offload, offload_of

GiB = 2**30
SEVEN_B = 7_000_000_000


def test_small_accelerator_memory_gets_the_state_offloaded_to_the_host() -> None:
    # One 40 GiB device: AdamW's bf16 + fp32 state (16 bytes a parameter) does not fit,
    # nor Adafactor's; bf16 params and grads alone (4 bytes a parameter) do.
    choice = select_optimizer(SEVEN_B, 1024, 40 * GiB, "gpu")
    assert choice.rule == "large_accelerator_offload" and choice.offload == "host"
    assert choice.optimizer == OptimizerConfig(name="adamw", learning_rate=1e-4, weight_decay=0.01)
    assert choice.precision.mode == "bf16" and choice.precision.master_weights
    assert choice.fits
    expected = plan_memory(SEVEN_B, "adamw", precision="bf16", zero_stage=1, offload="host")
    assert choice.plan == expected
    assert choice.plan.device_bytes == 4 * SEVEN_B <= 40 * GiB
    assert choice.plan.host_bytes == 12 * SEVEN_B + 4  # fp32 master, mu and nu; a count
    assert 'offload compute="host"' in choice.reason and "host memory" in choice.reason
    config = choice.apply(production_default(), batch_size=1024)
    assert config.parallel.offload_optimizer == "host"
    tx = build_optimizer(config)
    if offload_of(tx) is None:  # the builder may offload it already, as the config says
        tx = offload(tx, compute="host")  # raises if the host cannot run this chain
    assert offload_of(tx).compute == "host"


def test_offload_over_devices_plans_each_devices_slice() -> None:
    choice = select_optimizer(SEVEN_B, 2048, 18 * GiB, "tpu", num_devices=8)
    assert choice.offload == "host" and choice.zero_stage == 2 and choice.fits
    assert (
        choice.plan.host_bytes
        == plan_memory(
            SEVEN_B, "adamw", precision="bf16", zero_stage=2, num_devices=8, offload="host"
        ).host_bytes
    )
    # A host with room for all eight slices: still offloaded; with less: not.
    assert (
        select_optimizer(
            SEVEN_B, 2048, 18 * GiB, "tpu", num_devices=8, host_memory_bytes=96 * GiB
        ).offload
        == "host"
    )
    short = select_optimizer(
        SEVEN_B, 2048, 18 * GiB, "tpu", num_devices=8, host_memory_bytes=64 * GiB
    )
    assert short.offload is None and not short.fits
    assert "more than the 64.00 GiB given" in short.reason


def test_large_accelerator_memory_keeps_the_state_on_the_device() -> None:
    choice = select_optimizer(SEVEN_B, 1024, 80 * GiB, "gpu", num_devices=8)
    assert choice.offload is None and choice.rule == "large_accelerator" and choice.fits
    assert choice.plan.host_bytes == 0
    assert choice.apply(production_default()).parallel.offload_optimizer is None
    # Adafactor's smaller state is tried before the host.
    assert select_optimizer(SEVEN_B, 2048, 22 * GiB, "tpu", num_devices=8).offload is None
    small = select_optimizer(10_000_000, 256, 16 * GiB, "gpu")
    assert small.offload is None and small.rule == "small"


def test_smaller_models_offload_their_own_optimizer() -> None:
    small = select_optimizer(50_000_000, 256, GiB // 2, "gpu")  # Adam's 800 MB: too much
    assert small.rule == "small_offload" and small.optimizer.name == "adam" and small.fits
    assert small.plan.device_bytes == 8 * 50_000_000  # fp32 params and grads
    medium = select_optimizer(300_000_000, 256, 3 * GiB, "cuda")
    assert medium.rule == "medium_offload" and medium.optimizer.name == "lamb"
    assert medium.gradient_checkpointing


def test_no_offload_without_an_accelerator_or_when_nothing_fits() -> None:
    cpu = select_optimizer(50_000_000, 256, GiB // 2, "cpu")
    assert cpu.offload is None and not cpu.fits
    hopeless = select_optimizer(SEVEN_B, 1024, 16 * GiB, "gpu")  # 28 GB of bf16 params
    assert hopeless.offload is None and not hopeless.fits


def test_host_memory_bytes_is_checked() -> None:
    with pytest.raises(ValueError, match="select_optimizer: host_memory_bytes must be"):
        select_optimizer(10, 1, GiB, "gpu", host_memory_bytes=0)
