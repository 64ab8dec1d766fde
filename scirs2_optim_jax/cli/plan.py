"""``scirs2-optim plan``: will this run fit, and with what batch size?

``add_parser(subparsers)`` registers it on the ``scirs2-optim`` parser; the handler imports
JAX, the config and the demo models (:mod:`scirs2_optim_jax.training.demo_models`) itself,
so building the parser stays cheap. Exit codes: 0 planned; 2 bad usage or an invalid config
(one message, no traceback); 1 the planning itself failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from scirs2_optim_jax.cli.arguments import count
from scirs2_optim_jax.config.registry import OFFLOAD_COMPUTE

__all__ = ["DEMO_MODELS", "add_parser", "run_plan"]

PROG = "scirs2-optim plan"
# training.demo_models.DEMO_MODELS, kept here so that --help needs no JAX (tests agree).
DEMO_MODELS = ("digits_mlp", "transformer")
_PRECISIONS = ("fp32", "bf16", "fp16")
_REMAT = ("none", "full", "dots", "dots_no_batch")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``plan`` on a subparsers object (``handler`` set to :func:`run_plan`).

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser(prog="scirs2-optim")
        >>> add_parser(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["plan", "--model", "transformer", "--devices", "8"])
        >>> args.model, args.devices, args.offload, args.handler is run_plan
        ('transformer', 8, None, True)
    """
    parser = subparsers.add_parser(
        "plan",
        help="predict per-device memory and recommend a batch size",
        description=(
            "Predict the per-device bytes of params, grads, optimizer state and master "
            "weights for a config and a model (a named demo model or a parameter count), "
            "and recommend a micro-batch size and gradient-accumulation steps from the "
            "compiled forward + backward pass (two compilations; the persistent compilation "
            "cache makes later runs fast). --check-compiled also compiles the whole step to "
            "compare the plan with it. --offload plans the optimizer state in host memory "
            "and prints device and host memory per device. Nothing is allocated on the "
            "device."
        ),
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML, YAML or JSON run config (default: $SCIRS2_OPTIM_CONFIG, else the "
        "production defaults); SCIRS2_OPTIM_* variables override it",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--model", choices=DEMO_MODELS, help="named demo model (default: digits_mlp)")
    what.add_argument("--num-params", type=count, metavar="N", help="plan a model of N parameters")
    parser.add_argument("--optimizer", help="optimizer alias, with its own defaults")
    parser.add_argument("--precision", choices=_PRECISIONS, help="parameter/compute dtype")
    parser.add_argument("--zero-stage", type=int, choices=(0, 1, 2), help="ZeRO stage")
    parser.add_argument("--devices", type=count, metavar="N", help="devices on the data axis")
    parser.add_argument(
        "--offload",
        choices=OFFLOAD_COMPUTE,
        help="keep the optimizer state (master weights included) in host memory: device "
        "(streamed to the device for each update) or host (updated on the host's CPU) "
        "(default: parallel.offload_optimizer of the config)",
    )
    parser.add_argument(
        "--batch-size", type=count, metavar="N", help="global batch size (default: config)"
    )
    parser.add_argument(
        "--available-memory",
        metavar="BYTES",
        help="memory per device, e.g. 80GiB (default: config, else the device's own)",
    )
    parser.add_argument(
        "--remat",
        choices=_REMAT,
        help="gradient checkpointing of the transformer's layers (default: from config)",
    )
    parser.add_argument(
        "--check-compiled",
        action="store_true",
        help="also compile the whole training step and compare the plan with XLA's memory "
        "analysis of it (slow for large models: a full compilation)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(handler=run_plan)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _settings(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The config with the command-line overrides, and the planning options."""
    from scirs2_optim_jax.config.fields import parse_bytes
    from scirs2_optim_jax.config.loading import load_config
    from scirs2_optim_jax.config.schema import OptimizerConfig

    config = load_config(args.config)
    if args.optimizer is not None:
        old = config.optimizer
        optimizer = OptimizerConfig(
            name=args.optimizer,
            learning_rate=old.learning_rate,
            mu_dtype=old.mu_dtype,
            nu_dtype=old.nu_dtype,
        )
        config = dataclasses.replace(config, optimizer=optimizer)
    if args.precision is not None:
        config = dataclasses.replace(
            config, precision=dataclasses.replace(config.precision, mode=args.precision)
        )
    parallel = config.parallel
    if args.zero_stage is not None:
        parallel = dataclasses.replace(parallel, zero_stage=args.zero_stage)
    if args.devices is not None:
        parallel = dataclasses.replace(parallel, num_devices=args.devices)
    if args.offload is not None:
        parallel = dataclasses.replace(parallel, offload_optimizer=args.offload)
    config = dataclasses.replace(config, parallel=parallel)
    available = config.resources.device_memory_bytes
    if args.available_memory is not None:
        try:
            available = parse_bytes(args.available_memory)
        except ValueError as err:
            raise ValueError(f"--available-memory: {err}") from None
        if available < 1:
            raise ValueError(f"--available-memory must be >= 1 byte, got {args.available_memory!r}")
    remat = args.remat
    if remat is None:
        remat = parallel.remat_policy if parallel.gradient_checkpointing else "none"
    options = {
        "model": args.model if args.num_params is None else None,
        "num_params": args.num_params,
        "batch_size": args.batch_size or config.batch_size,
        "available": available,
        "remat": remat,
        "check_compiled": args.check_compiled,
    }
    if options["model"] is None and options["num_params"] is None:
        options["model"] = "digits_mlp"
    return config, options


def _device_memory() -> tuple[int, str]:
    """Memory per device as the backend reports it, else the host's available RAM."""
    import jax
    import psutil

    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{device.platform} device bytes_limit"
    return int(psutil.virtual_memory().available), "host RAM available (no device memory stats)"


def run_plan(args: argparse.Namespace) -> int:
    """Runs ``plan``; returns the exit code (0 ok, 2 bad usage/config, 1 failure)."""
    try:
        config, options = _settings(args)
        from scirs2_optim_jax.config.builder import build_optimizer

        tx = build_optimizer(config)  # hyperparameters that do not apply fail here, as usage
        if config.parallel.offload_optimizer is not None:
            from scirs2_optim_jax.engine import offload, offload_of

            if offload_of(tx) is None:  # what offload rejects fails here, as usage
                offload(tx, compute=config.parallel.offload_optimizer)
    except (ValueError, TypeError, OSError) as err:
        return _fail(str(err), 2)
    from scirs2_optim_jax.compile_cache import enable_compilation_cache

    enable_compilation_cache()
    try:
        report = _plan(config, options)
    except Exception as err:
        return _fail(f"planning failed: {type(err).__name__}: {err}", 1)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(report["text"])
    return 0


def _plan(config: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The plan as a report: ``{"config", "plan", ..., "text"}``."""
    from scirs2_optim_jax.config.accelerator import memory_settings_report
    from scirs2_optim_jax.config.flags import resolve_optimizer
    from scirs2_optim_jax.config.planner import abstract_params, format_bytes, plan_for_config
    from scirs2_optim_jax.precision import precision_policy
    from scirs2_optim_jax.training.demo_models import demo_model

    devices = config.parallel.num_devices or 1
    optimizer = resolve_optimizer(config)
    lines = [
        f"optimizer: {optimizer.name} (peak lr {optimizer.learning_rate:g}), precision "
        f"{config.precision.mode}, ZeRO stage {config.parallel.zero_stage}, {devices} device(s)"
        + (
            f", optimizer state offloaded (compute={config.parallel.offload_optimizer})"
            if config.parallel.offload_optimizer
            else ""
        )
    ]
    report: dict[str, Any] = {"config": config.redacted()}
    model = None
    if options["model"] is not None:
        model = demo_model(options["model"], remat_policy=options["remat"])
        params = abstract_params(model.params, precision_policy(config.precision.mode).param_dtype)
        lines.append(f"model: {model.name}: {model.description}")
    else:
        params = options["num_params"]
        lines.append(f"model: {params:,} parameters (one flat leaf)")
    plan = plan_for_config(config, params, num_devices=devices)
    report["plan"] = plan.to_dict()
    lines.append(plan.describe())
    if plan.offload is not None:
        report["host_bytes_all_devices"] = plan.host_bytes * devices
        lines.append(
            f"host memory for the state of all {devices} device(s): "
            f"{format_bytes(plan.host_bytes * devices)}"
        )

    available, source = options["available"], "config"
    if available is None:
        available, source = _device_memory()
    budget_fraction = config.resources.max_device_memory_fraction
    report["available_bytes"] = available
    lines.append(f"available per device: {format_bytes(available)} ({source})")

    if model is not None:
        if options["check_compiled"]:
            _compiled_step(config, model, params, options, report, lines)
        _activations(config, model, params, plan, available, options, report, lines)
    elif plan.offload is None:
        fits = plan.total_bytes <= available * budget_fraction
        lines.append(
            f"state {'fits' if fits else 'does NOT fit'} in {budget_fraction:.0%} of the "
            "available memory; activations unknown for a bare parameter count (name a model)"
        )
    else:
        peak = plan.device_bytes + plan.update_transient_bytes
        fits = peak <= available * budget_fraction
        lines.append(
            f"device memory {format_bytes(peak)} "
            + ("with the streamed state " if plan.update_transient_bytes else "")
            + f"{'fits' if fits else 'does NOT fit'} in {budget_fraction:.0%} of the "
            "available memory; activations unknown for a bare parameter count (name a model)"
        )
    settings = memory_settings_report()
    report["memory_settings"] = settings.to_dict()
    lines.append(settings.describe())
    report["text"] = "\n".join(lines)
    return report


def _compiled_step(
    config: Any,
    model: Any,
    params: Any,
    options: dict[str, Any],
    report: dict[str, Any],
    lines: list[str],
) -> None:
    """Compares the plan with XLA's memory analysis of the compiled step (one device)."""
    import jax

    from scirs2_optim_jax.config.builder import build_optimizer
    from scirs2_optim_jax.config.planner import (
        compiled_train_step_memory,
        format_bytes,
        plan_for_config,
    )
    from scirs2_optim_jax.engine import offload, offload_of

    devices = config.parallel.num_devices or 1
    tx = build_optimizer(config)
    where = config.parallel.offload_optimizer
    if where is not None and offload_of(tx) is None:
        tx = offload(tx, compute=where)
    batch = model.batch_for(max(1, options["batch_size"] // devices))
    memory = compiled_train_step_memory(tx, model.loss_fn, params, batch)
    if memory is None:
        return
    batch_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(batch))
    unsharded = plan_for_config(config, params, num_devices=1)
    compiled_state = memory.argument_bytes - batch_bytes
    report["compiled_step"] = {**dataclasses.asdict(memory), "batch_bytes": batch_bytes}
    if where is None:
        lines.append(
            f"compiled step (1 device): params + optimizer state {format_bytes(compiled_state)}"
            f" vs planned {format_bytes(unsharded.persistent_bytes)}; temporaries "
            f"{format_bytes(memory.temp_bytes)}"
        )
    elif where == "device":
        lines.append(
            f"compiled step (1 device): device memory arguments {format_bytes(compiled_state)}"
            f" (params) vs planned {format_bytes(unsharded.param_bytes)}; host memory "
            f"arguments {format_bytes(memory.host_argument_bytes)} (optimizer state) vs "
            f"planned {format_bytes(unsharded.host_bytes)}; temporaries "
            f"{format_bytes(memory.temp_bytes)}"
        )
    else:
        lines.append(
            f"compiled device program (1 device; the update runs on the host): params "
            f"{format_bytes(compiled_state)} vs planned {format_bytes(unsharded.param_bytes)}; "
            f"temporaries {format_bytes(memory.temp_bytes)}"
        )


def _activations(
    config: Any,
    model: Any,
    params: Any,
    plan: Any,
    available: int,
    options: dict[str, Any],
    report: dict[str, Any],
    lines: list[str],
) -> None:
    """Profiles the activations and recommends a micro-batch size that fits."""
    from scirs2_optim_jax.config.planner import (
        format_bytes,
        profile_activations,
        recommend_batch_size,
    )

    profile = profile_activations(model.loss_fn, params, model.batch_for, model.profile_batch_sizes)
    if profile is None:
        lines.append("activations: this backend gives no memory analysis; no batch advice")
        return
    report["activations"] = dataclasses.asdict(profile)
    lines.append(
        f"activations: {format_bytes(profile.per_example_bytes)} per example + "
        f"{format_bytes(profile.fixed_bytes)} (compiled forward + backward, remat "
        f"{options['remat']})"
    )
    devices = config.parallel.num_devices or 1
    global_batch = options["batch_size"] - options["batch_size"] % devices or devices
    budget_fraction = config.resources.max_device_memory_fraction
    rec = recommend_batch_size(plan, profile, available, global_batch, max_fraction=budget_fraction)
    report["batch"] = dataclasses.asdict(rec)
    lines.append(rec.describe())
