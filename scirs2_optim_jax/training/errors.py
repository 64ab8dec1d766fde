"""The error a training run raises when it cannot start as asked."""

from __future__ import annotations

__all__ = ["RunSetupError"]


class RunSetupError(ValueError):
    """The run's request conflicts with the machine or the disk, found before any training.

    Raised for too few devices, a batch that does not split over them, a checkpoint
    directory that holds checkpoints of another run (or any, without ``resume``), and a
    ``stop_at`` the resumed run is already past. The CLI reports it as a usage error
    (exit code 2).

    Example:
        >>> issubclass(RunSetupError, ValueError)
        True
    """
