"""The offload rows of the benchmark: AdamW with its optimizer state in host memory.

For one parameter count (leaves shaped as in configs b and i), one process times the same
AdamW step (learning rate 1e-3, weight decay 1e-4) five ways, in this order:

- ``none``: no offload, the engine's one-pass step
  (:func:`~scirs2_optim_jax.engine.apply_gradients`), jitted, parameters and state donated;
- ``device``: ``offload(adamw, compute="device")``: the same jitted step, the state kept in
  host memory (``pinned_host``) and streamed to the device and back inside it;
- ``host``: ``offload(adamw, compute="host")``: the gradients and parameters go to the host,
  the one-pass step runs on the host's CPU, the new parameters come back (an eager call,
  as a training loop makes it);
- ``master``: bf16 parameters and gradients, ``with_master_weights(adamw)`` (float32 master
  and moments), no offload: the baseline of the next row;
- ``host_master``: ``offload(with_master_weights(adamw), compute="host")``: only the bf16
  gradients go down and the bf16 parameters come up (the ZeRO-Offload way).

Each row is timed alone, one after the other (at billions of parameters they do not fit
side by side): one warm-up step, then the median of ``repeats`` steps, each ended by
``block_until_ready``. ``first_s`` is the compile time of the jitted rows and the first
call of the host rows (which compile then). ``ratio`` is the time over the row's baseline
without offload (``none`` for the float32 rows, ``master`` for ``host_master``).
``link_bytes`` is what one step moves between device and host memory: twice the state for
``device``; for ``host`` the gradients and the parameters down and the parameters up; for
``host_master`` the gradients down and the parameters up. On the CPU backend host and
device memory are the same RAM, so there the figure counts the copies the step makes (or
would make), not traffic over a link.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from scirs2_optim_jax import optimizers, precision
from scirs2_optim_jax.bench.configs import ADAMW, leaf_shapes
from scirs2_optim_jax.engine import apply_gradients, host_step, offload

__all__ = [
    "DEFAULT_ACCELERATOR_PARAMS",
    "DEFAULT_CPU_PARAMS",
    "VARIANTS",
    "OffloadResult",
    "format_count",
    "format_row",
    "header",
    "parse_count",
    "run_offload_rows",
]

DEFAULT_CPU_PARAMS = (10_000_000,)
DEFAULT_ACCELERATOR_PARAMS = (1_000_000_000, 4_000_000_000)
NUM_LEAVES = 200
MIN_PARAMS = 1000  # four leaves of at least one 128-column row each


@dataclasses.dataclass(frozen=True)
class _Variant:
    name: str
    description: str
    param_dtype: Any
    make_tx: Callable[[], optax.GradientTransformation]
    baseline: str
    compute: str | None = None  # offload's compute, None without offload
    master: bool = False


def _adamw() -> optax.GradientTransformation:
    return optimizers.adamw(**ADAMW)


def _master() -> optax.GradientTransformation:
    return precision.with_master_weights(_adamw())


_VARIANTS = (
    _Variant("none", "adamw, state in device memory", jnp.float32, _adamw, "none"),
    _Variant(
        "device",
        "offload(adamw, compute='device'): state streamed from host memory",
        jnp.float32,
        lambda: offload(_adamw(), compute="device"),
        "none",
        compute="device",
    ),
    _Variant(
        "host",
        "offload(adamw, compute='host'): update on the host's CPU",
        jnp.float32,
        lambda: offload(_adamw(), compute="host"),
        "none",
        compute="host",
    ),
    _Variant(
        "master",
        "bf16 params, with_master_weights(adamw), state in device memory",
        jnp.bfloat16,
        _master,
        "master",
        master=True,
    ),
    _Variant(
        "host_master",
        "bf16 params, offload(with_master_weights(adamw), compute='host')",
        jnp.bfloat16,
        lambda: offload(_master(), compute="host"),
        "master",
        compute="host",
        master=True,
    ),
)
VARIANTS = tuple(v.name for v in _VARIANTS)


@dataclasses.dataclass
class OffloadResult:
    """One row: one way of running the step at one size; times in ms, first_s in seconds."""

    num_params: int
    variant: str
    description: str
    param_dtype: str
    state_on: str  # "<platform>:<memory kind>" of the state's largest leaf
    state_bytes: int
    ms: float
    baseline: str
    baseline_ms: float | None
    link_bytes: int
    first_s: float

    @property
    def ratio(self) -> float | None:
        """This row's time over its baseline's (no offload): 1.0 is no cost."""
        return None if self.baseline_ms is None else self.ms / self.baseline_ms

    @property
    def link_gbps(self) -> float | None:
        """Bytes over the host link per step / step time, in GB/s (None when nothing moves)."""
        return self.link_bytes / (self.ms * 1e-3) / 1e9 if self.link_bytes else None

    def as_dict(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row.update(ratio=self.ratio, link_gbps=self.link_gbps)
        return row


_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMbBgG]?)\s*$")
_COUNT_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}


def parse_count(text: str) -> int:
    """Parses a parameter count such as ``10M``, ``1B`` or ``4096`` (decimal units;
    ``k``, ``M``, ``B`` or ``G``).

    Example:
        >>> parse_count("10M"), parse_count("1.5B"), parse_count("4096")
        (10000000, 1500000000, 4096)
    """
    match = _COUNT.match(text)
    if not match:
        raise ValueError(f"parse_count: expected a count like 10M, 1B or 4096, got {text!r}")
    value = round(float(match.group(1)) * _COUNT_UNITS[match.group(2).upper()])
    if value < MIN_PARAMS:
        raise ValueError(f"parse_count: the count must be at least 1k, got {text!r}")
    return value


def format_count(count: int) -> str:
    """``count`` to three significant digits with a unit (``10M``, ``1.5B``, ``123M``);
    below 10,000 as it is.

    Example:
        >>> format_count(10_000_000), format_count(1_500_000_000), format_count(4096)
        ('10M', '1.5B', '4096')
    """
    if count < 10_000:
        return str(count)
    unit, scale = next(u for u in (("B", 10**9), ("M", 10**6), ("k", 10**3)) if count >= u[1])
    return f"{count / scale:.3g}{unit}"


@functools.partial(jax.jit, static_argnums=(1, 2))
def _normal(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    return (jax.random.normal(key, shape, jnp.float32) * 0.02).astype(dtype)


def _tree(num_params: int, dtype: Any, seed: int) -> dict[str, jax.Array]:
    """``num_params`` parameters in about :data:`NUM_LEAVES` leaves, made on the default
    device (no host round trip, so billions of parameters take seconds)."""
    num_leaves = max(4, min(NUM_LEAVES, num_params // 512))
    key = jax.random.key(seed)
    return {
        f"leaf_{i:04d}": _normal(jax.random.fold_in(key, i), shape, jnp.dtype(dtype))
        for i, shape in enumerate(leaf_shapes(num_params, num_leaves))
    }


def _tree_bytes(tree: Any) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def _state_on(state: Any) -> str:
    largest = max(jax.tree.leaves(state), key=lambda x: x.size)
    device = next(iter(largest.devices()))
    return f"{device.platform}:{largest.sharding.memory_kind}"


def _link_bytes(variant: _Variant, params: Any, grads: Any, state: Any) -> int:
    if variant.compute is None:
        return 0
    if variant.compute == "device":
        return 2 * _tree_bytes(state)
    down = _tree_bytes(grads) + (0 if variant.master else _tree_bytes(params))
    return down + _tree_bytes(params)


def _measure(variant: _Variant, num_params: int, grads: Any, repeats: int) -> OffloadResult:
    tx = variant.make_tx()
    # Made afresh for each row (the step donates them): no second copy held beside them.
    params = _tree(num_params, variant.param_dtype, 0)
    state = tx.init(params)
    link = _link_bytes(variant, params, grads, state)
    state_on, state_bytes = _state_on(state), _tree_bytes(state)
    carry = (params, state)
    del params, state  # donated from `carry` on
    start = time.perf_counter()
    if variant.compute == "host":
        # The host update runs between device programs: an eager call, as in a loop that
        # replaces its parameters (make_data_parallel_step, the Flax Optimizer).
        host = host_step(tx)

        def step(carry: Any) -> Any:
            return host.apply(grads, carry[1], carry[0], donate_state=True, donate_params=True)

        carry = jax.block_until_ready(step(carry))
    else:
        jitted = jax.jit(
            lambda carry, grads: apply_gradients(tx, grads, carry[1], carry[0]),
            donate_argnums=0,
        )
        compiled = jitted.lower(carry, grads).compile()

        def step(carry: Any) -> Any:
            return compiled(carry, grads)

    first_s = time.perf_counter() - start
    carry = jax.block_until_ready(step(carry))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        carry = jax.block_until_ready(step(carry))
        times.append(time.perf_counter() - start)
    del carry
    return OffloadResult(
        num_params=num_params,
        variant=variant.name,
        description=variant.description,
        param_dtype=jnp.dtype(variant.param_dtype).name,
        state_on=state_on,
        state_bytes=state_bytes,
        ms=statistics.median(times) * 1e3,
        baseline=variant.baseline,
        baseline_ms=None,
        link_bytes=link,
        first_s=first_s,
    )


def run_offload_rows(
    num_params: int,
    repeats: int = 3,
    variants: Sequence[str] = VARIANTS,
    on_result: Callable[[OffloadResult], None] | None = None,
) -> list[OffloadResult]:
    """Times the named rows (of :data:`VARIANTS`, run in that order) at ``num_params``.

    A row's ``baseline_ms`` (and so its ratio) is None when its baseline is not among
    ``variants``.
    """
    fn = "run_offload_rows"
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise ValueError(f"{fn}: unknown variant {unknown[0]!r}; expected one of {VARIANTS}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"{fn}: repeats must be an integer >= 1, got {repeats!r}")
    if isinstance(num_params, bool) or not isinstance(num_params, int) or num_params < MIN_PARAMS:
        raise ValueError(f"{fn}: num_params must be an integer >= {MIN_PARAMS}, got {num_params!r}")
    chosen = [v for v in _VARIANTS if v.name in variants]
    results: list[OffloadResult] = []
    measured: dict[str, float] = {}
    # One dtype's gradients at a time: the float32 ones are gone before the bf16 ones exist.
    for dtype in (jnp.float32, jnp.bfloat16):
        group = [v for v in chosen if v.param_dtype == dtype]
        if not group:
            continue
        grads = _tree(num_params, dtype, 1)
        for variant in group:
            result = _measure(variant, num_params, grads, repeats)
            measured[variant.name] = result.ms
            result.baseline_ms = measured.get(variant.baseline)
            results.append(result)
            if on_result is not None:
                on_result(result)
        del grads
    return results


def header() -> str:
    """The column names of :func:`format_row`."""
    return (
        f"{'params':>7} {'row':<12}{'dtype':<9}{'state on':<17}{'ms/step':>10}{'ratio':>8}"
        f"{'link MB':>10}{'GB/s':>8}{'first s':>9}"
    )


def format_row(result: OffloadResult) -> str:
    """One aligned table row.

    Example:
        >>> r = OffloadResult(10**7, "device", "x", "float32", "cpu:pinned_host", 8 * 10**7,
        ...                   20.0, "none", 10.0, 16 * 10**7, 0.5)
        >>> format_row(r).split()
        ['10M', 'device', 'float32', 'cpu:pinned_host', '20.00', '2.00x', '160.0', '8.0', '0.50']
    """
    ratio = "-" if result.ratio is None else f"{result.ratio:.2f}x"
    gbps = "-" if result.link_gbps is None else f"{result.link_gbps:.1f}"
    return (
        f"{format_count(result.num_params):>7} {result.variant:<12}{result.param_dtype:<9}"
        f"{result.state_on:<17}{result.ms:>10.2f}{ratio:>8}{result.link_bytes / 1e6:>10.1f}"
        f"{gbps:>8}{result.first_s:>9.2f}"
    )
