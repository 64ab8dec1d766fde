"""The errors a checkpoint can raise when it cannot be trusted."""

from __future__ import annotations

__all__ = ["CheckpointCorruptError", "short_reason"]


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
