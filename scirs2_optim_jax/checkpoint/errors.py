"""The errors a checkpoint can raise when it cannot be trusted or could not be written."""

from __future__ import annotations

__all__ = ["CheckpointCorruptError", "CheckpointSaveError", "short_reason"]


class CheckpointCorruptError(ValueError):
    """A committed checkpoint fails verification: unreadable, truncated or altered.

    Attributes:
        step: the step whose checkpoint is bad.
        path: the file or directory where the problem was found.
        reason: what is wrong with it.

    Example:
        >>> err = CheckpointCorruptError(12, "/ckpt/12/manifest/manifest.json", "missing")
        >>> str(err)
        'checkpoint step 12 is corrupt: /ckpt/12/manifest/manifest.json: missing'
    """

    def __init__(self, step: int, path: str, reason: str) -> None:
        self.step = step
        self.path = path
        self.reason = reason
        super().__init__(f"checkpoint step {step} is corrupt: {path}: {reason}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.step, self.path, self.reason))


def short_reason(err: BaseException) -> str:
    """Describes a low-level read error in one line: its type and message, without the
    tensorstore spec that follows, at most 400 characters of it.

    Example:
        >>> short_reason(OSError("disk gone [tensorstore_spec='...']"))
        'OSError: disk gone'
    """
    text = str(err).split(" [tensorstore_spec")[0]
    return f"{type(err).__name__}: {text[:400]}"


class CheckpointSaveError(RuntimeError):
    """A save that ran in the background failed; raised by the next call on the manager.

    The step was not committed (a committed checkpoint is never partial), and the failure
    was also logged when it happened. The original exception is the ``__cause__``.

    Attributes:
        step: the step whose save failed.
        directory: the checkpoint directory.

    Example:
        >>> err = CheckpointSaveError(7, "/ckpt", OSError("disk full"))
        >>> str(err)
        'saving checkpoint step 7 in /ckpt failed in the background: OSError: disk full'
    """

    def __init__(self, step: int, directory: str, cause: BaseException) -> None:
        self.step = step
        self.directory = directory
        super().__init__(
            f"saving checkpoint step {step} in {directory} failed in the background: "
            f"{short_reason(cause)}"
        )

    def __reduce__(self) -> tuple:
        return (RuntimeError, (str(self),))
