"""The background half of a save: checksums computed while Orbax writes, errors kept.

:meth:`~scirs2_optim_jax.checkpoint.CheckpointManager.save` does on the caller's thread
only what must happen there: converting the state to its canonical layout, describing it,
and taking its host arrays (a copy of what the caller could change or donate, a reference to
what it cannot). Everything else runs in one background thread (:class:`BackgroundSaves`):
Orbax writes the arrays, the metadata and the manifest and commits the step atomically,
and meanwhile a thread pool hashes the very arrays Orbax writes from, so the manifest is
ready when the arrays are (:class:`PendingManifest`, :class:`ManifestHandler`).

One save runs at a time: the next save, ``wait()``, ``close()`` and every reading call wait
for it. If it fails, the error is logged at once and raised, as
:class:`~scirs2_optim_jax.checkpoint.errors.CheckpointSaveError`, by the next call on the
manager; the step is not committed. A program that ends with a save in flight waits for it
(before Python stops the thread pools that Orbax and the checksums need).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import concurrent.futures.thread
import dataclasses
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from scirs2_optim_jax.checkpoint.errors import CheckpointSaveError
from scirs2_optim_jax.checkpoint.integrity import (
    HASH,
    array_digest,
    json_digest,
    manifest_from_digests,
)

__all__ = [
    "BackgroundSaves",
    "ManifestHandler",
    "ManifestRestore",
    "ManifestSave",
    "PendingManifest",
]

logger = logging.getLogger("scirs2_optim_jax.checkpoint.manager")


class PendingManifest:
    """The manifest of a save in flight: computed from its arrays when Orbax writes it.

    Args:
        step: the step being saved.
        names: the storage name of each array.
        arrays: the host arrays Orbax writes, in the same order.
        meta: the step metadata.
        executor: the threads that hash.
        algorithm: the hash.

    Example:
        >>> import asyncio, concurrent.futures, numpy as np
        >>> with concurrent.futures.ThreadPoolExecutor(2) as pool:
        ...     pending = PendingManifest(3, ["w"], [np.ones(2)], {"step": 3}, pool)
        ...     manifest = asyncio.run(pending.compute())
        >>> manifest["step"], manifest["hash"], list(manifest["arrays"])
        (3, 'xxh3_128', ['w'])
    """

    def __init__(
        self,
        step: int,
        names: Sequence[str],
        arrays: Sequence[np.ndarray],
        meta: dict[str, Any],
        executor: concurrent.futures.Executor,
        algorithm: str = HASH,
    ) -> None:
        self.step = step
        self.names = list(names)
        self.arrays = list(arrays)
        self.meta = meta
        self.algorithm = algorithm
        self._executor = executor

    async def compute(self) -> dict[str, Any]:
        """Hashes the arrays (largest first, in the pool) and the metadata; the manifest."""
        loop = asyncio.get_running_loop()

        def hashed(fn: Callable[..., str], *args: Any) -> asyncio.Future[str]:
            try:
                return loop.run_in_executor(self._executor, fn, *args)
            except RuntimeError:
                # The interpreter is exiting (no new pool work): the save still completes.
                done = loop.create_future()
                done.set_result(fn(*args))
                return done

        order = sorted(range(len(self.arrays)), key=lambda i: -self.arrays[i].nbytes)
        jobs = {i: hashed(array_digest, self.arrays[i], self.algorithm) for i in order}
        meta_digest = await hashed(json_digest, self.meta, self.algorithm)
        digests = {self.names[i]: await jobs[i] for i in range(len(self.arrays))}
        return manifest_from_digests(self.step, digests, meta_digest, self.algorithm)


class ManifestHandler(ocp.JsonCheckpointHandler):
    """Orbax's JSON handler for the manifest item, which may be a :class:`PendingManifest`:
    it is then computed in the background, beside the arrays' writes, and written in the same
    atomic commit."""

    async def _save_fn(self, x: Any, directory: Any) -> None:
        if isinstance(x, PendingManifest):
            x = await x.compute()
        await super()._save_fn(x, directory)


@ocp.args.register_with_handler(ManifestHandler, for_save=True)
@dataclasses.dataclass
class ManifestSave(ocp.args.CheckpointArgs):
    """Orbax's save arguments of the manifest item: a manifest, or a :class:`PendingManifest`."""

    item: Any


@ocp.args.register_with_handler(ManifestHandler, for_restore=True)
@dataclasses.dataclass
class ManifestRestore(ocp.args.CheckpointArgs):
    """Orbax's restore arguments of the manifest item (the manager reads it itself)."""

    item: Any = None


class BackgroundSaves:
    """Runs one save at a time in a background thread and keeps its failure for the caller.

    Args:
        directory: the checkpoint directory (for messages).

    Example:
        >>> saves = BackgroundSaves("/ckpt")
        >>> saves.start(3, lambda: None)
        >>> saves.wait(); saves.step is None
        True
        >>> saves.start(4, lambda: 1 / 0)
        >>> saves.wait()
        Traceback (most recent call last):
        ...
        scirs2_optim_jax.checkpoint.errors.CheckpointSaveError: saving checkpoint step 4 in \
/ckpt failed in the background: ZeroDivisionError: division by zero
        >>> saves.wait()  # raised once, then cleared
        >>> saves.close()
    """

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="scirs2-ckpt-save"
        )
        self._future: concurrent.futures.Future[None] | None = None
        self._step: int | None = None
        _LIVE.add(self)

    @property
    def step(self) -> int | None:
        """The step of the save started and not yet waited for, else None."""
        return self._step

    def start(self, step: int, write: Callable[[], None]) -> None:
        """Starts ``write()`` (the save of ``step``) in the background; waits for the last."""
        self.wait()
        self._step = step
        self._future = self._executor.submit(self._run, step, write)

    def _run(self, step: int, write: Callable[[], None]) -> None:
        try:
            write()
        except BaseException:
            # Logged at once, so a failure is seen even if the program never calls again.
            logger.exception(
                "saving checkpoint step %d in %s failed; the next call on the manager raises it",
                step,
                self._directory,
            )
            raise

    def wait(self) -> None:
        """Blocks until the save in flight ends; raises CheckpointSaveError if it failed."""
        future, step = self._future, self._step
        if future is None or step is None:
            return
        try:
            future.result()
        except BaseException as err:
            raise CheckpointSaveError(step, self._directory, err) from err
        finally:
            self._future = self._step = None

    def check(self) -> None:
        """Raises a finished save's failure now (never blocks)."""
        if self._future is not None and self._future.done():
            self.wait()

    def close(self) -> None:
        """Waits for the save in flight (raising its failure), then stops the thread."""
        try:
            self.wait()
        finally:
            self._executor.shutdown(wait=True)

    def finish(self) -> None:
        """Waits for the save in flight without raising (its failure was logged)."""
        future = self._future
        if future is not None:
            concurrent.futures.wait([future])


_LIVE: weakref.WeakSet[BackgroundSaves] = weakref.WeakSet()


def _finish_at_exit() -> None:
    for saves in list(_LIVE):
        saves.finish()


# Python's threading shutdown first runs these callbacks, newest first, then joins threads.
# concurrent.futures registered its own (which refuses all new pool work from then on) when
# it was imported above, so this one runs before it, while Orbax can still finish a save.
getattr(threading, "_register_atexit", atexit.register)(_finish_at_exit)
