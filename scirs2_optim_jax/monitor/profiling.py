"""Profiling: a ``jax.profiler`` trace of a chosen number of steps.

:func:`profile_steps` returns a :class:`StepProfiler`; wrap each training step in
``profiler.step()``. The trace starts when the first profiled step begins (after ``skip``
steps, so that compilation stays out of it), every profiled step is marked with a
``StepTraceAnnotation`` (so TensorBoard's profile plugin and Perfetto show step boundaries),
and the trace stops when the last one ends. It is written under
``<logdir>/plugins/profile/<run>/`` as ``*.xplane.pb`` and ``*.trace.json.gz``.

Device memory statistics, where the backend reports them, come from
:func:`~scirs2_optim_jax.monitor.resources.device_memory_stats`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import TracebackType

import jax

__all__ = ["StepProfiler", "profile_steps"]


def _runs(logdir: str) -> set[str]:
    root = os.path.join(logdir, "plugins", "profile")
    if not os.path.isdir(root):
        return set()
    return {os.path.join(root, name) for name in os.listdir(root)}


class StepProfiler:
    """Traces ``num_steps`` steps after skipping ``skip``; see :func:`profile_steps`."""

    def __init__(
        self, logdir: str | os.PathLike[str], num_steps: int, *, skip: int = 1, name: str = "train"
    ) -> None:
        fn = "profile_steps"
        if not isinstance(logdir, (str, os.PathLike)):
            raise TypeError(f"{fn}: logdir must be a path, got {type(logdir).__name__}")
        for arg, value, low in (("num_steps", num_steps, 1), ("skip", skip, 0)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{fn}: {arg} must be an integer, got {value!r}")
            if value < low:
                raise ValueError(f"{fn}: {arg} must be an integer >= {low}, got {value}")
        if not isinstance(name, str) or not name:
            raise TypeError(f"{fn}: name must be a non-empty string, got {name!r}")
        self.logdir = os.fspath(logdir)
        self.num_steps = num_steps
        self.skip = skip
        self.name = name
        self.traced_steps: list[int] = []
        self.trace_dir: str | None = None
        self._calls = 0
        self._active = False
        self._before: set[str] = set()

    def _start(self) -> None:
        os.makedirs(self.logdir, exist_ok=True)
        self._before = _runs(self.logdir)
        jax.profiler.start_trace(self.logdir)
        self._active = True

    def _stop(self) -> None:
        if not self._active:
            return
        jax.profiler.stop_trace()
        self._active = False
        new = sorted(_runs(self.logdir) - self._before)
        self.trace_dir = new[-1] if new else None

    @contextlib.contextmanager
    def step(self, step: int | None = None) -> Iterator[bool]:
        """Marks one training step; yields whether this step is being traced.

        Block on the step's outputs inside the block (``jax.block_until_ready``) for the
        trace to hold the device work of the last profiled step.

        Args:
            step: the number shown for the step in the trace; the call count when None.
        """
        index = self._calls
        self._calls += 1
        first, last = self.skip, self.skip + self.num_steps - 1
        if not first <= index <= last:
            yield False
            return
        if index == first:
            self._start()
        number = index if step is None else int(step)
        try:
            with jax.profiler.StepTraceAnnotation(self.name, step_num=number):
                yield True
            self.traced_steps.append(number)
        finally:
            if index == last:
                self._stop()

    @property
    def done(self) -> bool:
        """Whether all ``num_steps`` steps have been traced and the trace written."""
        return len(self.traced_steps) == self.num_steps and not self._active

    def __enter__(self) -> StepProfiler:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()


def profile_steps(
    logdir: str | os.PathLike[str], num_steps: int, *, skip: int = 1, name: str = "train"
) -> StepProfiler:
    """A context manager that writes a ``jax.profiler`` trace of ``num_steps`` steps.

    Args:
        logdir: where the trace goes (``<logdir>/plugins/profile/<run>/``).
        num_steps: how many steps to trace, >= 1.
        skip: how many steps to run before tracing (the first compiles), >= 0.
        name: the step annotation's name in the trace.

    Returns:
        A :class:`StepProfiler`; leaving the ``with`` block stops a trace still running
        (when the loop ended early).

    Example:
        >>> import tempfile, jax, jax.numpy as jnp
        >>> double = jax.jit(lambda x: 2 * x)
        >>> x = jnp.ones(4)
        >>> with tempfile.TemporaryDirectory() as logdir:
        ...     with profile_steps(logdir, num_steps=2, skip=1) as profiler:
        ...         for i in range(5):
        ...             with profiler.step(i):
        ...                 x = jax.block_until_ready(double(x))
        ...     profiler.traced_steps, profiler.done
        ([1, 2], True)
    """
    return StepProfiler(logdir, num_steps, skip=skip, name=name)
