"""The optimizer step where Flax users train: ``nnx.Optimizer`` and ``TrainState``.

For configs b-e of the benchmark, one process times, in turn:

- ``nnx``: a jitted, donated Flax NNX split/merge step (``nnx.merge`` -> ``optimizer.update(
  model, grads)`` -> ``nnx.state``), ours with :class:`scirs2_optim_jax.flax.Optimizer` and
  our optimizer, optax's with ``flax.nnx.Optimizer`` and the optax optimizer of the same
  hyperparameters;
- ``train_state``: a jitted, donated ``state.apply_gradients(grads=grads)``, ours with
  :class:`scirs2_optim_jax.flax.TrainState`, optax's with Flax's ``TrainState``;
- ours both ways: with Flax's state layout (the default, ``ours``) and with
  ``state_layout="engine"`` (``engine``: the layout the engine picks);
- PyTorch's fused AdamW on the same shapes (b and c, when torch is installed);
- the streaming kernel that gives the bandwidth bound, as in the main harness;
- ``dispatch``: a jitted, donated identity over our carried state (the NNX state or the
  ``TrainState``): what calling a step with that many arrays costs before any arithmetic
  (pytree flattening, argument handling), which optax's step pays too; ``engine_dispatch``
  the same over the state in the engine's layout.

Each entry runs twice per round and the second run is timed, and the order rotates every
round, so load drift hits all alike. Compile times are measured separately (lower +
compile).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import optax
from flax import nnx
from flax.training import train_state

from scirs2_optim_jax import flax as so_flax
from scirs2_optim_jax.bench.configs import CONFIGS, BenchConfig
from scirs2_optim_jax.bench.harness import _streaming_kernel, _torch_adamw_step

__all__ = ["FLAX_CONFIGS", "FlaxPathResult", "run_flax_paths"]

FLAX_CONFIGS = ("b", "c", "d", "e")
PATHS = ("nnx", "train_state")


@dataclasses.dataclass
class FlaxPathResult:
    """One config through one Flax path; times in milliseconds, compile times in seconds."""

    config: str
    path: str
    description: str
    num_params: int
    num_leaves: int
    ours_ms: float
    optax_ms: float
    bound_ms: float
    ours_compile_s: float
    optax_compile_s: float
    torch_ms: float | None = None
    dispatch_ms: float | None = None
    engine_ms: float | None = None
    engine_compile_s: float | None = None
    engine_dispatch_ms: float | None = None

    @property
    def speedup(self) -> float:
        """optax time / our time."""
        return self.optax_ms / self.ours_ms

    @property
    def engine_speedup(self) -> float | None:
        """optax time / our time with ``state_layout="engine"``."""
        return None if self.engine_ms is None else self.optax_ms / self.engine_ms

    @property
    def engine_vs_torch(self) -> float | None:
        """PyTorch's fused AdamW time / our time with ``state_layout="engine"``."""
        if self.torch_ms is None or self.engine_ms is None:
            return None
        return self.torch_ms / self.engine_ms

    @property
    def vs_torch(self) -> float | None:
        """PyTorch's fused AdamW time / our time (above 1: we are faster)."""
        return None if self.torch_ms is None else self.torch_ms / self.ours_ms

    def as_dict(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row.update(
            speedup=self.speedup,
            vs_torch=self.vs_torch,
            engine_speedup=self.engine_speedup,
            engine_vs_torch=self.engine_vs_torch,
        )
        return row


class _Leaves(nnx.Module):
    """A model that is just the config's parameter leaves, as ``nnx.Param``s."""

    def __init__(self, leaves: dict[str, jax.Array]) -> None:
        for name, value in leaves.items():
            setattr(self, name, nnx.Param(value))


def _compiled(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=(0,)).lower(*args).compile()
    return compiled, time.perf_counter() - start


def _identity(carry: list[Any], grads: Any) -> Callable[[], None]:
    """A donated identity over the carried state: the cost of the call itself."""
    fn = jax.jit(lambda state, grads: state, donate_argnums=(0,))
    carry[0] = jax.block_until_ready(fn(carry[0], grads))

    def run() -> None:
        carry[0] = jax.block_until_ready(fn(carry[0], grads))

    return run


def _nnx_entry(
    optimizer_cls: type, tx: optax.GradientTransformation, params: Any, grads: Any, **kw: Any
) -> tuple[Callable[[], None], float]:
    model = _Leaves(params)
    optimizer = optimizer_cls(model, tx, wrt=nnx.Param, **kw)
    graphdef, state = nnx.split((model, optimizer))
    grad_state = nnx.state(_Leaves(grads), nnx.Param)

    def step(state: Any, grads: Any) -> Any:
        model, optimizer = nnx.merge(graphdef, state)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer))

    fn, compile_s = _compiled(step, state, grad_state)
    carry = [jax.block_until_ready(fn(state, grad_state))]

    def run() -> None:
        carry[0] = jax.block_until_ready(fn(carry[0], grad_state))

    run.dispatch = _identity(carry, grad_state)  # type: ignore[attr-defined]
    return run, compile_s


def _train_state_entry(
    state_cls: type, tx: optax.GradientTransformation, params: Any, grads: Any, **kw: Any
) -> tuple[Callable[[], None], float]:
    state = state_cls.create(apply_fn=None, params=params, tx=tx, **kw)

    def step(state: Any, grads: Any) -> Any:
        return state.apply_gradients(grads=grads)

    fn, compile_s = _compiled(step, state, grads)
    carry = [jax.block_until_ready(fn(state, grads))]

    def run() -> None:
        carry[0] = jax.block_until_ready(fn(carry[0], grads))

    run.dispatch = _identity(carry, grads)  # type: ignore[attr-defined]
    return run, compile_s


def _standard_promotion(make: Callable[[], Any]) -> Any:
    # optax's own code relies on implicit int/float promotion.
    with jax.numpy_dtype_promotion("standard"):
        return make()


def _entries(
    config: BenchConfig, path: str, params: Any, grads: Any
) -> tuple[dict[str, Callable[[], None]], dict[str, float]]:
    fresh = lambda tree: jax.tree.map(lambda x: x.copy(), tree)
    entry, ours_cls, theirs_cls = {
        "nnx": (_nnx_entry, so_flax.Optimizer, nnx.Optimizer),
        "train_state": (_train_state_entry, so_flax.TrainState, train_state.TrainState),
    }[path]
    ours, ours_c = entry(ours_cls, config.ours(), fresh(params), grads)
    engine, engine_c = entry(ours_cls, config.ours(), fresh(params), grads, state_layout="engine")
    theirs, theirs_c = _standard_promotion(
        lambda: entry(theirs_cls, config.reference(), fresh(params), grads)
    )

    def optax_run() -> None:
        with jax.numpy_dtype_promotion("standard"):
            theirs()

    entries = {
        "ours": ours,
        "engine": engine,
        "optax": optax_run,
        "dispatch": ours.dispatch,  # type: ignore[attr-defined]
        "engine_dispatch": engine.dispatch,  # type: ignore[attr-defined]
    }
    return entries, {"ours": ours_c, "engine": engine_c, "optax": theirs_c}


def run_flax_path(
    name: str | BenchConfig, path: str, repeats: int = 7, torch: bool = True
) -> FlaxPathResult:
    """Times config ``name`` (a name of :data:`FLAX_CONFIGS`, or a config) through ``path``
    (``"nnx"`` or ``"train_state"``)."""
    config = CONFIGS[name] if isinstance(name, str) else name
    name = config.name
    params = config.make_params(config.param_dtype, 0)
    grads = config.make_params(config.param_dtype, 1)
    num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    entries, compile_s = _entries(config, path, params, grads)
    stream, x = _streaming_kernel(num_params * config.bytes_per_param // 8)
    stream_carry = [x]

    def run_stream() -> None:
        stream_carry[0] = jax.block_until_ready(stream(stream_carry[0]))

    entries["stream"] = run_stream
    torch_step = _torch_adamw_step(params) if torch and name in ("b", "c") else None
    if torch_step is not None:
        entries["torch"] = torch_step
    times: dict[str, list[float]] = {key: [] for key in entries}
    keys = list(entries)
    for round_index in range(repeats):
        shift = round_index % len(keys)
        for key in keys[shift:] + keys[:shift]:
            entries[key]()  # untimed run first: the timed one starts from a settled cache
            start = time.perf_counter()
            entries[key]()
            times[key].append(time.perf_counter() - start)
    median_ms = {key: statistics.median(values) * 1e3 for key, values in times.items()}
    return FlaxPathResult(
        config=name,
        path=path,
        description=config.description,
        num_params=num_params,
        num_leaves=len(jax.tree.leaves(params)),
        ours_ms=median_ms["ours"],
        optax_ms=median_ms["optax"],
        bound_ms=median_ms["stream"],
        ours_compile_s=compile_s["ours"],
        optax_compile_s=compile_s["optax"],
        torch_ms=median_ms.get("torch"),
        dispatch_ms=median_ms["dispatch"],
        engine_ms=median_ms["engine"],
        engine_compile_s=compile_s["engine"],
        engine_dispatch_ms=median_ms["engine_dispatch"],
    )


def run_flax_paths(
    names: tuple[str, ...] = FLAX_CONFIGS,
    paths: tuple[str, ...] = PATHS,
    repeats: int = 7,
    torch: bool = True,
    report: Callable[[FlaxPathResult], None] | None = None,
) -> list[FlaxPathResult]:
    """Times every config of ``names`` through every path of ``paths``."""
    results = []
    for name in names:
        for path in paths:
            result = run_flax_path(name, path, repeats=repeats, torch=torch)
            results.append(result)
            if report is not None:
                report(result)
    return results


def format_row(result: FlaxPathResult) -> str:
    """One line of the table :func:`header` heads."""
    torch = "-"
    if result.torch_ms is not None:
        torch = f"{result.torch_ms:8.2f} {result.vs_torch:5.2f}x"
        if result.engine_vs_torch is not None:
            torch += f" {result.engine_vs_torch:5.2f}x"
    engine = "-"
    if result.engine_ms is not None:
        engine = (
            f"{result.engine_ms:8.2f} {result.engine_speedup:6.2f}x "
            f"{result.engine_dispatch_ms or 0.0:8.2f} {result.engine_compile_s or 0.0:7.1f}"
        )
    return (
        f"{result.config:>3} {result.path:<11} {result.num_leaves:>6} "
        f"{result.ours_ms:8.2f} {result.optax_ms:8.2f} {result.speedup:6.2f}x "
        f"{result.bound_ms:8.2f} {result.dispatch_ms or 0.0:8.2f} "
        f"{result.ours_compile_s:7.1f} {result.optax_compile_s:7.1f} {engine} {torch}"
    )


def header() -> str:
    """The column names of :func:`format_row` (``eng``: ours with
    ``state_layout="engine"``)."""
    return (
        "cfg path        leaves  ours ms optax ms speedup  bound ms call ms ours cs optax cs "
        " eng ms eng/optax eng call eng cs torch ms ours/torch eng/torch"
    )
