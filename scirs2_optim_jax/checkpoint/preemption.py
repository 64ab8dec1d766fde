"""Preemption: turn SIGTERM into "save once more and exit cleanly".

Cluster schedulers announce a preemption with SIGTERM and kill the job a grace period later.
:class:`PreemptionGuard` catches the signal and only sets a flag, so the step in flight
finishes; the training loop checks the flag between steps, saves with ``force=True`` and
returns, and the process exits with code 0. Python runs signal handlers in the main thread,
so the guard must be entered there.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["PreemptionGuard"]


class PreemptionGuard:
    """A context manager that records SIGTERM (and any other given signals) as a request.

    Inside the ``with`` block the signals no longer kill the process; ``requested`` turns
    True instead and ``signal_number`` says which arrived. The previous handlers come back
    when the block exits.

    Args:
        signals: the signals to intercept; default ``(signal.SIGTERM,)``.

    Example:
        >>> import os, signal
        >>> with PreemptionGuard() as guard:
        ...     os.kill(os.getpid(), signal.SIGTERM)
        ...     guard.requested, guard.signal_number == signal.SIGTERM
        (True, True)
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
        if not isinstance(signals, tuple) or not signals:
            raise TypeError(f"PreemptionGuard: signals must be a non-empty tuple, got {signals!r}")
        valid = set(signal.valid_signals())
        for sig in signals:
            if sig not in valid or sig in (signal.SIGKILL, signal.SIGSTOP):
                raise ValueError(f"PreemptionGuard: cannot intercept signal {sig!r}")
        self._signals = signals
        self._previous: dict[int, Any] = {}
        self._event = threading.Event()
        self.signal_number: int | None = None

    @property
    def requested(self) -> bool:
        """True once one of the signals has arrived."""
        return self._event.is_set()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.signal_number = signum
        self._event.set()

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionGuard: must be entered in the main thread")
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
