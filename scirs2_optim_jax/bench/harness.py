"""Side-by-side timing: our step, optax's step and the memory-bandwidth bound, in one run.

For each config the harness builds the same parameter tree for both optimizers, jits one
training step each (``update`` + ``apply_updates``, parameters and optimizer state donated;
ours goes through :func:`~scirs2_optim_jax.engine.apply_gradients`, which is that
same step done in one pass where the optimizer has a fused kernel, and the plain protocol
path is then timed too, as ``protocol_ms``),
measures compile time separately, then times the median of ``repeats`` steps after a warm-up
with ``block_until_ready``. Next to them it times a donated, jitted streaming kernel over an
array as large as the step's working set (parameters, gradients and two moments), which
gives the bandwidth this machine sustains right now; the bound is the bytes the step must
move divided by that bandwidth. Ours, optax's, the streaming kernel and (configs a-c, with
torch installed) PyTorch's fused AdamW take turns, one timed run each per round, so drift in
the machine's load hits them all equally.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scirs2_optim_jax.bench.configs import CONFIGS, BenchConfig
from scirs2_optim_jax.engine import apply_gradients, one_pass_step

__all__ = ["BenchResult", "measure_bandwidth", "run_config", "run_configs"]

_TORCH_SETTLE_S = 0.05


@dataclasses.dataclass
class BenchResult:
    """Figures for one config; times in milliseconds, compile times in seconds."""

    config: str
    description: str
    num_params: int
    num_leaves: int
    ours_ms: float
    optax_ms: float
    bound_ms: float
    bandwidth_gbps: float
    ours_compile_s: float
    optax_compile_s: float
    torch_ms: float | None = None
    # ours through tx.update + optax.apply_updates, when that differs from ours_ms's path
    protocol_ms: float | None = None

    @property
    def speedup(self) -> float:
        """optax time / our time: above 1 means we are faster."""
        return self.optax_ms / self.ours_ms

    @property
    def efficiency(self) -> float:
        """bound / our time: 1.0 would be moving the minimum bytes at the measured bandwidth."""
        return self.bound_ms / self.ours_ms

    def as_dict(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row["speedup"] = self.speedup
        row["efficiency"] = self.efficiency
        return row


def _timed_compile(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=(0,)).lower(*args).compile()
    return compiled, time.perf_counter() - start


def _train_step(
    tx: optax.GradientTransformation,
    master_weights: bool,
    standard_promotion: bool,
    fused_apply: bool = False,
) -> Callable[[Any, Any], Any]:
    """``carry, grads -> carry``; the carry (donated) holds params and optimizer state.

    With ``master_weights`` the carry also holds an fp32 copy of the bf16 parameters: the
    optimizer updates the copy and the bf16 parameters are re-derived from it each step.
    """

    def step(carry: Any, grads: Any) -> Any:
        if master_weights:
            _, master, state = carry
            grads32 = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
            updates, state = tx.update(grads32, state, master)
            master = optax.apply_updates(master, updates)
            params = jax.tree.map(lambda m, g: m.astype(g.dtype), master, grads)
            return params, master, state
        params, state = carry
        if fused_apply:
            return apply_gradients(tx, grads, state, params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    if not standard_promotion:
        return step

    def step_standard(carry: Any, grads: Any) -> Any:
        # optax's own code relies on implicit int/float promotion.
        with jax.numpy_dtype_promotion("standard"):
            return step(carry, grads)

    return step_standard


def _initial_carry(
    tx: optax.GradientTransformation, params: Any, master_weights: bool
) -> tuple[Any, ...]:
    with jax.numpy_dtype_promotion("standard"):
        if master_weights:
            master = jax.tree.map(lambda p: p.astype(jnp.float32), params)
            return (jax.tree.map(jnp.copy, params), master, jax.jit(tx.init)(master))
        params = jax.tree.map(jnp.copy, params)
        return (params, jax.jit(tx.init)(params))


def _streaming_kernel(num_elements: int) -> tuple[Callable[[jax.Array], jax.Array], jax.Array]:
    """A donated, jitted in-place ``x = a*x + b`` over ``num_elements`` float32, warmed up."""
    x = jnp.zeros((num_elements,), jnp.float32)
    kernel = jax.jit(lambda x: x * jnp.float32(0.999) + jnp.float32(1e-6), donate_argnums=0)
    return kernel, jax.block_until_ready(kernel(x))


def measure_bandwidth(num_elements: int, repeats: int = 7) -> float:
    """Sustained bandwidth in GB/s of a donated in-place streaming kernel (``x = a*x + b``).

    It reads and writes every float32 element once: 8 bytes per element.

    Example:
        >>> measure_bandwidth(1 << 16, repeats=3) > 0
        True
    """
    kernel, x = _streaming_kernel(num_elements)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        x = jax.block_until_ready(kernel(x))
        times.append(time.perf_counter() - start)
    return 8 * num_elements / statistics.median(times) / 1e9


def _torch_adamw_step(params: Any) -> Callable[[], None] | None:
    """One step of PyTorch's fused AdamW on the same shapes (warmed up), if torch is here."""
    try:
        import torch
    except ImportError:
        return None
    tensors = [
        torch.nn.Parameter(torch.from_numpy(np.array(p, np.float32)))
        for p in jax.tree.leaves(params)
    ]
    for t in tensors:
        t.grad = torch.full_like(t, 1e-3)
    try:
        opt = torch.optim.AdamW(tensors, lr=1e-3, weight_decay=1e-4, fused=True)
    except (RuntimeError, TypeError):
        return None
    opt.step()
    return opt.step


def run_config(config: BenchConfig, repeats: int = 7, torch: bool = True) -> BenchResult:
    """Times one config: ours, optax, the bandwidth bound (and PyTorch's fused AdamW)."""
    params = config.make_params(config.param_dtype, 0)
    grads = config.make_params(config.param_dtype, 1)
    num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    ours_tx, optax_tx = config.ours(), config.reference()
    # Ours keeps fp32 master weights inside its state (precision.with_master_weights); optax
    # has no such wrapper, so its step keeps the master copy itself.
    ours_step = _train_step(ours_tx, False, standard_promotion=False, fused_apply=True)
    has_fused_apply = one_pass_step(ours_tx) is not None
    optax_step = _train_step(optax_tx, config.master_weights, standard_promotion=True)
    ours_carry = _initial_carry(ours_tx, params, False)
    optax_carry = _initial_carry(optax_tx, params, config.master_weights)

    ours_fn, ours_compile = _timed_compile(ours_step, ours_carry, grads)
    optax_fn, optax_compile = _timed_compile(optax_step, optax_carry, grads)

    # Warm up both, then take turns timing them so load drift affects both alike.
    ours_carry = jax.block_until_ready(ours_fn(ours_carry, grads))
    optax_carry = jax.block_until_ready(optax_fn(optax_carry, grads))
    # The streaming kernel runs over the step's working set (params, grads and two fp32
    # moments) in the same rotation, so the bound sees the same machine load as the steps.
    stream, stream_buffer = _streaming_kernel(4 * num_params)
    # PyTorch's fused AdamW (a-c) takes its turn in the same rounds.
    torch_step = _torch_adamw_step(params) if torch and config.name in ("a", "b", "c") else None
    live = {"ours": ours_carry, "optax": optax_carry, "stream": stream_buffer}
    del ours_carry, optax_carry, stream_buffer  # donated from `live` from here on

    def run_ours() -> None:
        live["ours"] = jax.block_until_ready(ours_fn(live["ours"], grads))

    def run_optax() -> None:
        live["optax"] = jax.block_until_ready(optax_fn(live["optax"], grads))

    def run_stream() -> None:
        live["stream"] = jax.block_until_ready(stream(live["stream"]))

    entries: list[tuple[str, Callable[[], None]]] = [
        ("ours", run_ours),
        ("optax", run_optax),
        ("stream", run_stream),
    ]
    if torch_step is not None:
        entries.append(("torch", torch_step))
    times: dict[str, list[float]] = {name: [] for name, _ in entries}
    for round_index in range(repeats):
        # The order rotates from round to round, so no entry always follows the same other
        # one. Each entry runs once untimed, then once timed: the timed step follows a step
        # of its own, as in a training loop, whatever ran before it (a step right after an
        # idle pause ran 8.7 ms against 7.3 ms right after another step, config a).
        shift = round_index % len(entries)
        for name, run in entries[shift:] + entries[:shift]:
            run()
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
            if name == "torch":
                # PyTorch's OpenMP threads spin for a while after a parallel region; left
                # spinning they take cores from the next step (a: 7.7 -> 11 ms here).
                time.sleep(_TORCH_SETTLE_S)
    ours_carry = live.pop("ours")
    live.clear()
    del torch_step
    ours_times, optax_times = times["ours"], times["optax"]
    stream_times, torch_times = times["stream"], times.get("torch", [])
    protocol_ms = None
    if has_fused_apply:
        # The same optimizer through the optax protocol (what nnx.Optimizer and TrainState
        # call): one more pass, to add the updates to the parameters.
        protocol_step = _train_step(ours_tx, False, standard_promotion=False)
        protocol_fn, _ = _timed_compile(protocol_step, ours_carry, grads)
        ours_carry = jax.block_until_ready(protocol_fn(ours_carry, grads))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            ours_carry = jax.block_until_ready(protocol_fn(ours_carry, grads))
            times.append(time.perf_counter() - start)
        protocol_ms = statistics.median(times) * 1e3
    del ours_carry

    bandwidth = 8 * 4 * num_params / statistics.median(stream_times) / 1e9
    bound_ms = config.bytes_per_param * num_params / (bandwidth * 1e9) * 1e3
    torch_ms = statistics.median(torch_times) * 1e3 if torch_times else None
    return BenchResult(
        config=config.name,
        description=config.description,
        num_params=num_params,
        num_leaves=len(jax.tree.leaves(params)),
        ours_ms=statistics.median(ours_times) * 1e3,
        optax_ms=statistics.median(optax_times) * 1e3,
        bound_ms=bound_ms,
        bandwidth_gbps=bandwidth,
        ours_compile_s=ours_compile,
        optax_compile_s=optax_compile,
        torch_ms=torch_ms,
        protocol_ms=protocol_ms,
    )


def run_configs(
    names: Sequence[str] | None = None,
    repeats: int = 7,
    torch: bool = True,
    on_result: Callable[[BenchResult], None] | None = None,
) -> list[BenchResult]:
    """Runs the named configs (default: every config this backend can hold) in order."""
    on_accelerator = jax.default_backend() != "cpu"
    if names is None:
        names = [n for n, c in CONFIGS.items() if on_accelerator or not c.accelerator_only]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise ValueError(
            f"run_configs: unknown config {unknown[0]!r}; expected one of {sorted(CONFIGS)}"
        )
    if repeats < 1:
        raise ValueError(f"run_configs: repeats must be >= 1, got {repeats}")
    results = []
    for name in names:
        result = run_config(CONFIGS[name], repeats=repeats, torch=torch)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
