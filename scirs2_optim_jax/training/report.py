"""How ``scirs2-optim train`` shows a run: a progress bar or log lines, then a summary table.

On a terminal, :class:`ProgressReporter` draws a ``rich`` progress bar with the loss, the
learning rate and the throughput (samples/s). Anywhere else (a pipe, a file, a CI log) it
prints one plain line every ``log_every`` steps instead, which scripts and tests can parse::

    step 100/800  loss 0.4521  lr 3.0e-03  samples/s 65536

:func:`summary_table` builds the closing table (final loss, test accuracy, steps, seconds,
steps/s, samples/s, devices, ZeRO stage, optimizer).
"""

from __future__ import annotations

from types import TracebackType

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from scirs2_optim_jax.training.result import TrainLog, TrainResult

__all__ = ["ProgressReporter", "format_log_line", "summary_table"]


def format_log_line(log: TrainLog) -> str:
    """The plain progress line of one :class:`TrainLog`.

    Example:
        >>> format_log_line(TrainLog(10, 800, 0.51234, 3e-3, 1.5, 81920.4))
        'step  10/800  loss 0.5123  lr 3.0e-03  samples/s 81920'
    """
    width = len(str(log.steps))
    return (
        f"step {log.step:>{width}}/{log.steps}  loss {log.loss:.4f}  "
        f"lr {log.learning_rate:.1e}  samples/s {log.samples_per_second:.0f}"
    )


class ProgressReporter:
    """Receives :class:`TrainLog` records (``on_log``); draws a bar or prints lines.

    Args:
        console: where to write; its ``is_terminal`` chooses the bar or plain lines.
        steps: the run's total steps (the bar's length).
        log_every: for plain lines, the interval the run sends records at (0: only the
            last); every record is printed. The bar is refreshed at every record.

    Example:
        >>> import io
        >>> from rich.console import Console
        >>> out = io.StringIO()
        >>> with ProgressReporter(Console(file=out), steps=20, log_every=10) as report:
        ...     report(TrainLog(10, 20, 0.5, 1e-3, 0.1, 1000.0))
        >>> out.getvalue()
        'step 10/20  loss 0.5000  lr 1.0e-03  samples/s 1000\\n'
    """

    def __init__(self, console: Console, steps: int, log_every: int) -> None:
        self.console = console
        self.log_every = log_every
        self.interactive = console.is_terminal
        self._progress: Progress | None = None
        self._task = None
        if self.interactive:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("lr {task.fields[lr]}"),
                TextColumn("{task.fields[throughput]} samples/s"),
                TimeElapsedColumn(),
                console=console,
            )
            self._task = self._progress.add_task(
                "train", total=steps, loss="-", lr="-", throughput="-"
            )

    @property
    def refresh_every(self) -> int:
        """How often (in steps) the run should send records: often for the bar."""
        return 10 if self.interactive else self.log_every

    def __call__(self, log: TrainLog) -> None:
        if self._progress is None or self._task is None:
            self.console.print(format_log_line(log), markup=False, highlight=False)
            return
        self._progress.update(
            self._task,
            completed=log.step,
            loss=f"{log.loss:.4f}",
            lr=f"{log.learning_rate:.1e}",
            throughput=f"{log.samples_per_second:,.0f}",
        )

    def __enter__(self) -> ProgressReporter:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()


def _seconds(result: TrainResult) -> str:
    """``seconds`` and where they went, e.g. ``5.0 = setup 0.9 + compile 1.4 + ...``."""
    phases = result.phase_seconds
    if not phases:
        return f"{result.seconds:.1f} (first step {result.compile_seconds:.1f})"
    parts = " + ".join(f"{name} {value:.1f}" for name, value in phases.items())
    return f"{result.seconds:.1f} = {parts}"


def summary_table(result: TrainResult, startup_seconds: float | None = None) -> Table:
    """The closing summary of a run as a two-column ``rich`` table.

    Example:
        >>> import io
        >>> from rich.console import Console
        >>> from scirs2_optim_jax.training import train_digits
        >>> result = train_digits(steps=5, batch_size=16, log_every=0)
        >>> console = Console(file=io.StringIO(), width=80)
        >>> console.print(summary_table(result))
        >>> "test accuracy" in console.file.getvalue()
        True
    """
    table = Table(title="summary", box=box.SIMPLE_HEAD, show_header=True, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    steps = f"{result.step - result.start_step}"
    if result.start_step:
        steps += f" (steps {result.start_step + 1}-{result.step} of {result.steps})"
    elif result.step != result.steps:
        steps += f" of {result.steps}"
    rows = [
        ("final loss", f"{result.final_loss:.4f}"),
        ("test accuracy", f"{result.test_accuracy:.2%}"),
        ("steps", steps),
        ("seconds", _seconds(result)),
        ("steps/s", f"{result.steps_per_second:.0f}"),
        ("samples/s", f"{result.samples_per_second:,.0f}"),
        ("devices", str(result.devices)),
        ("zero stage", str(result.zero_stage)),
        ("optimizer", f"{result.optimizer}, peak lr {result.learning_rate:.1e}, {result.schedule}"),
    ]
    offload = result.offload_optimizer
    if offload is not None:
        where = "streamed to the device" if offload == "device" else "updated on the host"
        rows.append(("offload", f"{offload}: state in host memory, {where}"))
    if startup_seconds is not None:
        # Before train_digits: Python, the imports (JAX, Flax, ...) and argument handling.
        rows.insert(3, ("startup", f"{startup_seconds:.1f} s before training (imports)"))
    if result.stop_reason != "completed":
        rows.append(("stopped", f"{result.stop_reason} at step {result.step}"))
    if result.checkpoint_step is not None:
        rows.append(("checkpoint", f"step {result.checkpoint_step}"))
    for name, value in rows:
        table.add_row(name, value)
    return table
