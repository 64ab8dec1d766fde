"""``scirs2-optim bench --checkpoint``: our verified checkpoints against plain Orbax.

Both sides save and restore the same state, AdamW parameters and optimizer state as JAX
arrays, in one process and in alternating order (ours first in odd rounds, Orbax first in
even ones), each into a fresh directory:

* ours: :class:`~scirs2_optim_jax.checkpoint.CheckpointManager` (asynchronous save, then a
  verified restore onto a target of the same shapes and shardings);
* Orbax: ``orbax.checkpoint.CheckpointManager`` with asynchronous checkpointing,
  ``StandardSave`` and ``StandardRestore`` onto the same target, as a new user would write it.

Per round and side it measures: how long ``save()`` blocks the caller; how long until the
step is committed (``save()`` plus the wait); the extra host memory during the save (the
peak resident set size, sampled every millisecond by a thread, minus the size just before
``save()``, as a multiple of the state's bytes); and the restore. Before the save and before
the restore, freed heap memory is handed back to the system (glibc's ``malloc_trim``), so
that memory which an earlier save or restore freed can neither hide a side's allocations
nor spare it the page faults of fresh memory. Both sides first save and restore a small state once,
unmeasured, to load their code. The reported figure is the median over the rounds.

Run it with ``scirs2-optim bench --checkpoint [--sizes 300MB,2GB] [--rounds 3]``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import os
import re
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from scirs2_optim_jax import optimizers

__all__ = [
    "METRICS",
    "TARGETS",
    "CheckpointBenchRow",
    "RssSampler",
    "format_table",
    "make_state",
    "orbax_version",
    "parse_size",
    "rss_bytes",
    "run_checkpoint_bench",
]

DEFAULT_SIZES = "300MB,2GB"
# The four figures, in table order: key, label, unit.
METRICS = (
    ("blocking_s", "save() blocks the loop", "s"),
    ("committed_s", "save until committed", "s"),
    ("extra_memory_x", "extra host memory during save", "x state"),
    ("restore_s", "verified restore (Orbax: unverified)", "s"),
)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}


def _target_blocking(ours: float, orbax: float) -> bool:
    return ours <= 3 * orbax + 0.05


def _target_committed(ours: float, orbax: float) -> bool:
    return ours <= 1.5 * orbax


def _target_memory(ours: float, orbax: float) -> bool:
    del orbax
    return ours <= 0.5


def _target_restore(ours: float, orbax: float) -> bool:
    return ours <= 1.5 * orbax


# Each metric's target: a description and a check of (ours, Orbax's).
TARGETS: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    "blocking_s": ("<= 3x Orbax + 50 ms", _target_blocking),
    "committed_s": ("<= 1.5x Orbax", _target_committed),
    "extra_memory_x": ("<= 0.5x the state", _target_memory),
    "restore_s": ("<= 1.5x Orbax", _target_restore),
}


def parse_size(text: str) -> int:
    """Parses a state size such as ``300MB`` or ``2GB`` (decimal units) into bytes.

    Example:
        >>> parse_size("300MB"), parse_size("2GB"), parse_size("1.5kb")
        (300000000, 2000000000, 1500)
    """
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"parse_size: expected a size like 300MB or 2GB, got {text!r}")
    value = float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()]
    if value < 1:
        raise ValueError(f"parse_size: the size must be at least 1 byte, got {text!r}")
    return int(value)


def orbax_version() -> str:
    """The installed orbax-checkpoint's version.

    Example:
        >>> orbax_version().count(".") >= 1
        True
    """
    from importlib.metadata import version

    return version("orbax-checkpoint")


def rss_bytes() -> int:
    """This process's resident set size in bytes (``VmRSS`` of ``/proc/self/status``).

    Example:
        >>> rss_bytes() > 0
        True
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil  # only where /proc is missing (macOS)

    return int(psutil.Process().memory_info().rss)


class RssSampler:
    """Samples :func:`rss_bytes` in a thread; ``peak`` is the highest value seen.

    Example:
        >>> with RssSampler() as sampler:
        ...     block = bytearray(10**7)
        >>> sampler.peak >= sampler.start > 0
        True
    """

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = max(self.peak, rss_bytes())
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def make_state(total_bytes: int, *, num_leaves: int = 48, seed: int = 0) -> Any:
    """AdamW parameters and state (fp32) of about ``total_bytes``, as JAX arrays.

    The parameters are ``num_leaves`` matrices and vectors shaped like a network's
    (:func:`~scirs2_optim_jax.bench.configs.leaf_shapes`); the optimizer state is
    AdamW's (``scirs2_optim_jax.adamw``) after one update, so every moment holds non-zero
    data.

    Example:
        >>> state = make_state(1_200_000)
        >>> sum(x.nbytes for x in jax.tree.leaves(state)) // 100_000
        12
    """
    from scirs2_optim_jax.bench.configs import leaf_shapes
    from scirs2_optim_jax.checkpoint import CheckpointState

    num_params = max(total_bytes // 12, num_leaves)  # params, mu and nu: 3 x 4 bytes
    shapes = leaf_shapes(num_params, max(num_leaves, 4))
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    params = {
        f"layer_{i:03d}": jax.random.normal(key, shape, jnp.float32)
        for i, (key, shape) in enumerate(zip(keys, shapes, strict=True))
    }
    tx = optimizers.adamw(1e-3)

    @jax.jit
    def first_update(params: Any) -> Any:
        grads = jax.tree.map(lambda p: p * 0.5, params)
        _, opt_state = tx.update(grads, tx.init(params), params)
        return opt_state

    return CheckpointState(params, jax.block_until_ready(first_update(params)))


@dataclasses.dataclass
class CheckpointBenchRow:
    """The medians for one state size: ``ours`` and ``orbax`` map metric -> value.

    ``rounds`` keeps every round's figures, ``state_bytes`` the state's size.
    """

    state_bytes: int
    ours: dict[str, float]
    orbax: dict[str, float]
    rounds: list[dict[str, dict[str, float]]]

    def passes(self, metric: str) -> bool:
        return TARGETS[metric][1](self.ours[metric], self.orbax[metric])

    def as_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "ratios": {m: self.ours[m] / self.orbax[m] for m, _, _ in METRICS if self.orbax[m]},
            "pass": {m: self.passes(m) for m, _, _ in METRICS},
        }


def _abstract(state: Any) -> Any:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )


def release_freed_memory() -> None:
    """Collects garbage and hands freed heap memory back to the system (glibc only)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _measure_save(save: Callable[[], None], wait: Callable[[], None], nbytes: int) -> dict:
    release_freed_memory()
    with RssSampler() as sampler:
        start = time.perf_counter()
        save()
        blocking = time.perf_counter() - start
        wait()
        committed = time.perf_counter() - start
    return {
        "blocking_s": blocking,
        "committed_s": committed,
        "extra_memory_x": max(sampler.peak - sampler.start, 0) / nbytes,
    }


def _round_ours(state: Any, abstract: Any, directory: Path, nbytes: int) -> dict[str, float]:
    from scirs2_optim_jax.checkpoint import CheckpointManager

    with CheckpointManager(directory) as mgr:
        figures = _measure_save(lambda: mgr.save(1, state), mgr.wait, nbytes)
        release_freed_memory()
        start = time.perf_counter()
        restored = jax.block_until_ready(mgr.restore(1, target=abstract).state)
        figures["restore_s"] = time.perf_counter() - start
    del restored
    return figures


def _round_orbax(state: Any, abstract: Any, directory: Path, nbytes: int) -> dict[str, float]:
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=True)
    with ocp.CheckpointManager(directory, options=options) as mgr:
        figures = _measure_save(
            lambda: mgr.save(1, args=ocp.args.StandardSave(state)),
            mgr.wait_until_finished,
            nbytes,
        )
        release_freed_memory()
        start = time.perf_counter()
        restored = mgr.restore(1, args=ocp.args.StandardRestore(abstract))
        jax.block_until_ready(restored)
        figures["restore_s"] = time.perf_counter() - start
    del restored
    return figures


def run_checkpoint_bench(
    sizes: Sequence[int],
    *,
    rounds: int = 3,
    directory: str | os.PathLike[str] | None = None,
    on_row: Callable[[CheckpointBenchRow], None] | None = None,
    on_round: Callable[[int, str, dict[str, float]], None] | None = None,
) -> list[CheckpointBenchRow]:
    """Measures ours against plain Orbax for each state size in bytes; returns one row each.

    Args:
        sizes: the state sizes in bytes (parameters plus AdamW state).
        rounds: save/restore rounds per side; the medians are reported.
        directory: where the checkpoints go (a temporary directory by default); each
            round's checkpoint is deleted once measured.
        on_row: called with each row when its size is done.
        on_round: called with (size, side, figures) after every round of one side.
    """
    if rounds < 1:
        raise ValueError(f"run_checkpoint_bench: rounds must be >= 1, got {rounds}")
    base = Path(directory) if directory is not None else Path(tempfile.mkdtemp("-ckpt-bench"))
    base.mkdir(parents=True, exist_ok=True)
    sides = {"ours": _round_ours, "orbax": _round_orbax}
    rows = []
    try:
        small = make_state(1_000_000)
        for side, run in sides.items():  # warm-up: load each side's code once
            run(small, _abstract(small), base / f"warm-up-{side}", 1)
            shutil.rmtree(base / f"warm-up-{side}", ignore_errors=True)
        del small
        for size in sizes:
            state = make_state(size)
            nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
            abstract = _abstract(state)
            per_round: list[dict[str, dict[str, float]]] = []
            for r in range(rounds):
                order = ["ours", "orbax"] if r % 2 == 0 else ["orbax", "ours"]
                release_freed_memory()
                figures: dict[str, dict[str, float]] = {}
                for side in order:
                    where = base / f"{size}-{side}-{r}"
                    shutil.rmtree(where, ignore_errors=True)
                    figures[side] = sides[side](state, abstract, where, nbytes)
                    shutil.rmtree(where, ignore_errors=True)
                    if on_round is not None:
                        on_round(size, side, figures[side])
                per_round.append(figures)
            medians = {
                side: {m: statistics.median(f[side][m] for f in per_round) for m, _, _ in METRICS}
                for side in sides
            }
            row = CheckpointBenchRow(nbytes, medians["ours"], medians["orbax"], per_round)
            rows.append(row)
            if on_row is not None:
                on_row(row)
            del state, abstract
            gc.collect()
    finally:
        if directory is None:
            shutil.rmtree(base, ignore_errors=True)
    return rows


def _human(nbytes: float) -> str:
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if nbytes >= factor:
            return f"{nbytes / factor:.3g} {unit}"
    return f"{nbytes:.0f} B"


def _value(metric: str, value: float) -> str:
    return f"{value:.2f}x" if metric == "extra_memory_x" else f"{value:.3f} s"


def format_table(rows: Sequence[CheckpointBenchRow]) -> str:
    """The rows as a Markdown table: each metric, ours, Orbax, the ratio and the target.

    Example:
        >>> row = CheckpointBenchRow(
        ...     300_000_000,
        ...     {"blocking_s": 0.01, "committed_s": 0.5, "extra_memory_x": 0.1, "restore_s": 0.4},
        ...     {"blocking_s": 0.02, "committed_s": 0.5, "extra_memory_x": 0.2, "restore_s": 0.3},
        ...     [],
        ... )
        >>> print(format_table([row]).splitlines()[2])
        | 300 MB | save() blocks the loop | 0.010 s | 0.020 s | 0.50 | <= 3x Orbax + 50 ms: pass |
    """
    lines = [
        "| state | metric | ours | plain Orbax | ours / Orbax | target |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        for metric, label, _ in METRICS:
            ours, orbax = row.ours[metric], row.orbax[metric]
            ratio = f"{ours / orbax:.2f}" if orbax > 0 else "-"
            verdict = "pass" if row.passes(metric) else "MISSED"
            lines.append(
                f"| {_human(row.state_bytes)} | {label} | {_value(metric, ours)} | "
                f"{_value(metric, orbax)} | {ratio} | {TARGETS[metric][0]}: {verdict} |"
            )
    return "\n".join(lines)
