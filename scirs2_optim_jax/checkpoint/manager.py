"""``CheckpointManager``: verified, canonical Orbax checkpoints of a training run.

Orbax does the storage: asynchronous writes with tensorstore (OCDBT, no pickle), atomic
commits through a temporary directory that is renamed when every item is written, the save
interval and the retention policies. The manager orchestrates what a long run needs on top:

* the canonical layout: a checkpoint stores every array at its full logical shape, on the
  host, whatever sharding or padding it had in memory, so it restores onto any sharding or
  one device; a :class:`~scirs2_optim_jax.checkpoint.Layout` converts states laid out
  differently in memory, such as ZeRO's (``layout``);
* types that survive: a JSON description of the tree rebuilds NamedTuples, Flax structures,
  typed PRNG keys and Python scalars with or without a target (``treespec``, ``rebuild``);
* integrity: a manifest of checksums (XXH3-128), committed with the data and checked on
  every restore (``integrity``); ``restore()`` without a step skips bad checkpoints, newest
  first, and logs them;
* saves that cost the training loop little: ``save()`` returns once the arrays are safely
  on the host (referenced where they already are and cannot change), and the checksums, the
  writes and the commit run in a background thread (``writer``), with no second host copy
  of the state;
* safety: steps are integers inside the directory, a committed step is never overwritten,
  nothing is deserialised by code execution.

One checkpoint is the step directory ``<directory>/<step>/`` with three Orbax items:
``state/`` (the arrays, under the state's own tree paths, so plain Orbax reads them:
``storage``), ``meta/meta.json`` (tree description, config, metrics) and
``manifest/manifest.json`` (checksums); ``metadata`` describes them.

In a multi-process run (after ``jax.distributed.initialize``) every process makes the same
calls on the same directory, which must be storage they all share. Each process gathers the
canonical state (a sharded array is all-gathered from the processes, a replicated one is read
from a local replica), so all of them compute the same arrays, checksums and metadata; Orbax
then has process 0 write them and commit the step, with barriers that keep the others in
step. A checkpoint written by N processes is therefore byte for byte the one a single process
writes, and restores on any number of processes and devices. Holding the whole canonical
state on every host is the price: fine for states that fit in host memory.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import functools
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from scirs2_optim_jax.checkpoint import integrity, storage
from scirs2_optim_jax.checkpoint import layout as layout_lib
from scirs2_optim_jax.checkpoint import metadata as md
from scirs2_optim_jax.checkpoint import treespec as ts
from scirs2_optim_jax.checkpoint.errors import CheckpointCorruptError
from scirs2_optim_jax.checkpoint.metadata import MANIFEST, MANIFEST_FILE, META, META_FILE, STATE
from scirs2_optim_jax.checkpoint.rebuild import build_state
from scirs2_optim_jax.checkpoint.retention import DELETED, Retention, orbax_options
from scirs2_optim_jax.checkpoint.writer import (
    BackgroundSaves,
    ManifestHandler,
    ManifestSave,
    PendingManifest,
)
from scirs2_optim_jax.engine import host_device, offload_of, place_state
from scirs2_optim_jax.engine.memory import HOST_MEMORY_KIND
from scirs2_optim_jax.validation import check_bool, check_int

__all__ = ["CheckpointInfo", "CheckpointManager", "CheckpointState", "Restored"]

logger = logging.getLogger(__name__)


class _DropReadOnlyNotice(logging.Filter):
    """Drops Orbax's "Given directory is read only" warning: read_only is what we asked."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Given directory is read only" not in record.getMessage()


@contextlib.contextmanager
def _quiet_read_only_notice(read_only: bool) -> Iterator[None]:
    """While opening a directory read-only, Orbax's notice of that is not printed (it logs
    it through absl on every open, which `scirs2-optim ckpt ls` would show on every call)."""
    if not read_only:
        yield
        return
    absl_logger, notice = logging.getLogger("absl"), _DropReadOnlyNotice()
    absl_logger.addFilter(notice)
    try:
        yield
    finally:
        absl_logger.removeFilter(notice)


QUARANTINE = "quarantine"
# A failed save's temporary directory is removed again until it has stayed away this long
# (its other items' writes have stopped), for at most FAILED_SAVE_CLEANUP_S.
FAILED_SAVE_QUIET_S = 0.5
FAILED_SAVE_CLEANUP_S = 10.0


# Saved tree descriptions name this type by its import path,
# "scirs2_optim_jax.checkpoint.manager:CheckpointState": it must stay defined here.
class CheckpointState(NamedTuple):
    """What a training run needs to resume exactly; the usual ``state`` to save.

    Attributes:
        params: the model parameters (any pytree: dict, ``nnx.State``, ...).
        opt_state: the optimizer state (NamedTuples of arrays).
        rng: the run's PRNG key, or None.
        data_position: where the data pipeline stands, e.g. ``{"epoch": 2, "batch": 17}``.

    Example:
        >>> CheckpointState(params={"w": 1.0}, opt_state=()).data_position is None
        True
    """

    params: Any
    opt_state: Any
    rng: Any = None
    data_position: Any = None


class Restored(NamedTuple):
    """What :meth:`CheckpointManager.restore` returns.

    Attributes:
        step: the step that was restored.
        state: the state (or only its params, with ``params_only=True``).
        metrics: the metrics snapshot saved with it, or None.
        config: the run config saved with it, or None.
    """

    step: int
    state: Any
    metrics: dict[str, float] | None
    config: Any


@dataclass(frozen=True)
class CheckpointInfo:
    """One committed step as listed by :meth:`CheckpointManager.info`.

    Attributes:
        step: the step.
        path: its directory.
        size_bytes: the bytes of all its files.
        metrics: the metrics snapshot, or None when the metadata cannot be read.
        error: None when the checkpoint verifies, else why it does not.
    """

    step: int
    path: str
    size_bytes: int
    metrics: dict[str, float] | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def _check_optional_int(fn: str, name: str, value: Any, minimum: int) -> int | None:
    return None if value is None else check_int(fn, name, value, minimum)


def _check_retention(
    fn: str,
    keep_last: Any,
    keep_every: Any,
    keep_best: Any,
    best_metric: Any,
    best_mode: Any,
) -> Retention:
    """Checks the retention arguments of :class:`CheckpointManager`; returns the rules."""
    keep_last = _check_optional_int(fn, "keep_last", keep_last, 1)
    keep_every = _check_optional_int(fn, "keep_every", keep_every, 1)
    keep_best = _check_optional_int(fn, "keep_best", keep_best, 1)
    if keep_best is not None and not isinstance(best_metric, str):
        raise ValueError(f"{fn}: keep_best needs best_metric, a metric name; got {best_metric!r}")
    if best_metric is not None and not isinstance(best_metric, str):
        raise TypeError(f"{fn}: best_metric must be a string or None, got {best_metric!r}")
    if best_mode not in ("min", "max"):
        raise ValueError(f"{fn}: best_mode must be 'min' or 'max', got {best_mode!r}")
    best_metric = best_metric if keep_best is not None else None
    return Retention(keep_last, keep_every, keep_best, best_metric, best_mode)


def _check_restore_options(
    fn: str, params_only: Any, layout: Any, placement: Any, optimizer: Any
) -> Any:
    """Checks the options of :meth:`CheckpointManager.restore`; returns the layout or None."""
    check_bool(fn, "params_only", params_only)
    converter = layout_lib.as_layout(fn, layout)
    if converter is not None and params_only:
        raise ValueError(f"{fn}: layout converts the whole state; it cannot go with params_only")
    if optimizer is not None:
        if not isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(
                f"{fn}: optimizer must be an optax.GradientTransformation or None, "
                f"got {optimizer!r}"
            )
        if params_only:
            raise ValueError(
                f"{fn}: optimizer places the restored opt_state; it cannot go with params_only"
            )
    if placement is not None and not isinstance(placement, (jax.sharding.Sharding, jax.Device)):
        raise TypeError(
            f"{fn}: placement must be a jax.sharding.Sharding, a jax.Device or None, "
            f"got {placement!r}"
        )
    return converter


def _place_opt_state(fn: str, step: int, state: Any, optimizer: Any) -> Any:
    """``state`` with its ``opt_state`` placed where ``optimizer`` keeps it."""
    if type(state) is dict and "opt_state" in state:
        return {**state, "opt_state": place_state(optimizer, state["opt_state"])}
    if hasattr(state, "opt_state") and hasattr(state, "_replace"):
        return state._replace(opt_state=place_state(optimizer, state.opt_state))
    raise TypeError(
        f"{fn}: optimizer places the restored state's opt_state, but checkpoint step {step} "
        f"holds a {type(state).__name__} without one (a CheckpointState, a NamedTuple with "
        "an opt_state field or a dict with an 'opt_state' key); to place a saved optimizer "
        "state alone, pass engine.place_state(optimizer, restored.state)"
    )


def _opt_state_memory(optimizer: Any) -> str | jax.Device | None:
    """Where an offloaded ``optimizer`` keeps its state (a memory kind or the host's CPU
    device), so that a restore puts it there directly; None for one that is not."""
    described = offload_of(optimizer) if optimizer is not None else None
    if described is None:
        return None
    return host_device() if described.compute == "host" else HOST_MEMORY_KIND


def _dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            file = Path(root) / name
            if not file.is_symlink():
                total += file.stat().st_size
    return total


def _is_primary() -> bool:
    """Whether this process writes what is written once (process 0, as for Orbax)."""
    return jax.process_index() == 0


class CheckpointManager:
    """Saves and restores verified, canonical checkpoints of a training run with Orbax.

    Saves are asynchronous by default: :meth:`save` takes the state's host arrays and
    returns; checksums, writes and the commit run in a background thread, and the next save,
    :meth:`wait`, :meth:`close` or restore waits for it. A failure there is logged and
    raised by the next call (:class:`~scirs2_optim_jax.checkpoint.errors.CheckpointSaveError`).
    A checkpoint appears only once all of it is committed.

    In a multi-process run, every process creates its manager on the same shared directory
    and makes the same calls (module doc); process 0 writes.

    Retention (all optional, combined as "keep if any rule keeps it"; None everywhere keeps
    every checkpoint): the last ``keep_last``, every step that is a multiple of
    ``keep_every``, the best ``keep_best`` by ``best_metric`` (``best_mode`` "min" or
    "max"); the newest checkpoint is never deleted.

    Args:
        directory: the run's checkpoint directory (created unless ``read_only``).
        save_interval_steps: :meth:`save` writes only steps that are multiples of this,
            unless called with ``force=True``.
        keep_last, keep_every, keep_best: the retention rules above, integers >= 1.
        best_metric: the metric ``keep_best`` ranks by; every save must then report it.
        best_mode: "min" (e.g. a loss) or "max" (e.g. an accuracy).
        async_save: write in the background (default) or block until committed.
        read_only: open an existing directory for listing, verifying and restoring only.

    Example:
        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with CheckpointManager(tmp, keep_last=2) as mgr:
        ...         for step in range(3):
        ...             _ = mgr.save(step, {"w": np.full(2, step, np.float32)})
        ...         mgr.wait()
        ...         restored = mgr.restore()
        ...         steps = mgr.all_steps()
        >>> restored.step, restored.state["w"].tolist(), steps
        (2, [2.0, 2.0], [1, 2])
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        save_interval_steps: int = 1,
        keep_last: int | None = None,
        keep_every: int | None = None,
        keep_best: int | None = None,
        best_metric: str | None = None,
        best_mode: str = "min",
        async_save: bool = True,
        read_only: bool = False,
    ) -> None:
        fn = "CheckpointManager"
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"{fn}: directory must be a path, got {directory!r}")
        self._interval = check_int(fn, "save_interval_steps", save_interval_steps, 1)
        retention = _check_retention(fn, keep_last, keep_every, keep_best, best_metric, best_mode)
        check_bool(fn, "async_save", async_save)
        check_bool(fn, "read_only", read_only)
        path = Path(directory).absolute()
        if read_only and not path.is_dir():
            raise FileNotFoundError(f"{fn}: no checkpoint directory at {path}")
        if path.exists() and not path.is_dir():
            raise ValueError(f"{fn}: directory {path} exists and is not a directory")
        self.directory = path
        self._read_only = read_only
        self._async = async_save
        self._best_metric = retention.best_metric
        # In one process, Orbax writes synchronously in the manager's own background thread
        # (``writer``); in several, Orbax's asynchronous save does (``_start_save``).
        self._threaded = jax.process_count() == 1
        with _quiet_read_only_notice(read_only):
            self._mgr = ocp.CheckpointManager(
                path,
                options=orbax_options(
                    self._interval, retention, async_save and not self._threaded, read_only
                ),
                item_names=(STATE, META, MANIFEST),
                item_handlers={
                    STATE: storage.write_handler(),
                    META: ocp.JsonCheckpointHandler(filename=META_FILE),
                    MANIFEST: ManifestHandler(filename=MANIFEST_FILE),
                },
            )
        self._saves = BackgroundSaves(str(path))
        self._hash_pool = concurrent.futures.ThreadPoolExecutor(
            integrity.hash_workers(), thread_name_prefix="scirs2-ckpt-hash"
        )

    # -- context manager ---------------------------------------------------------------

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- steps -------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Returns the committed steps (and one being saved), oldest first.

        Raises:
            CheckpointSaveError: a background save has failed since the last call.

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as tmp, CheckpointManager(tmp) as mgr:
            ...     mgr.all_steps()
            []
        """
        self._saves.check()
        steps = {int(s) for s in self._mgr.all_steps()}
        if self._saves.step is not None:
            steps.add(self._saves.step)
        return sorted(steps)

    def latest_step(self) -> int | None:
        """Returns the newest step, or None when there is none (it may fail verification).

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as tmp, CheckpointManager(tmp) as mgr:
            ...     mgr.latest_step() is None
            True
        """
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        """Whether :meth:`save` would write ``step`` (the interval policy, and only new steps).

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     with CheckpointManager(tmp, save_interval_steps=5) as mgr:
            ...         mgr.should_save(10), mgr.should_save(11)
            (True, False)
        """
        step = check_int("CheckpointManager.should_save", "step", step, 0)
        self._saves.check()
        in_flight = self._saves.step
        if in_flight is not None and step <= in_flight:
            return False
        return bool(self._mgr.should_save(step))

    def step_path(self, step: int) -> Path:
        """Returns the directory of ``step``, refusing anything but an integer step >= 0.

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as tmp, CheckpointManager(tmp) as mgr:
            ...     mgr.step_path(7).name
            '7'
        """
        step = check_int("CheckpointManager", "step", step, 0)
        path = self.directory / str(step)
        if path.is_symlink() or (
            path.exists() and path.resolve().parent != self.directory.resolve()
        ):
            raise ValueError(
                f"CheckpointManager: step {step} resolves outside {self.directory} "
                f"({path} -> {path.resolve()}); refusing it"
            )
        return path

    # -- save --------------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Any,
        metrics: Mapping[str, float] | None = None,
        config: Any = None,
        *,
        force: bool = False,
        layout: Any = None,
    ) -> bool:
        """Saves ``state`` as step ``step``, asynchronously unless ``async_save=False``.

        On the caller's thread, the state is converted to its canonical layout
        (``layout.to_canonical``) and its host arrays are taken at their full logical
        shapes: numpy arrays (which the caller may change) and accelerator arrays are copied
        to the host, while JAX arrays already in host memory are referenced, not copied
        (they cannot change, and JAX does not donate a buffer that is referenced). The
        caller may change or donate the state's buffers as soon as this returns. In the
        background, a thread pool hashes those arrays while Orbax writes them, and Orbax
        commits the step atomically with its manifest. A save still in flight is waited for
        first.

        Args:
            step: the training step, an integer >= 0; a step that is already committed is
                never overwritten (one that fails verification is moved to
                ``<directory>/quarantine/`` first, so nothing is lost).
            state: the pytree to save, typically a :class:`CheckpointState`.
            metrics: a snapshot of scalar metrics (name -> finite number), or None.
            config: the run config, JSON data (dict, list, str, number, bool, None).
            force: save even when the interval policy says not to (e.g. on preemption).
            layout: a :class:`~scirs2_optim_jax.checkpoint.Layout` or a
                ``(to_canonical, from_canonical)`` pair, for states sharded or padded in
                memory (ZeRO).

        Returns:
            True when a save was started, False when the interval policy skipped the step.

        Raises:
            ValueError, TypeError: bad arguments or an existing committed step, naming them.
            CheckpointSaveError: the previous save failed in the background (this one is not
                started).
        """
        fn = "CheckpointManager.save"
        step = check_int(fn, "step", step, 0)
        if self._read_only:
            raise ValueError(f"{fn}: the manager for {self.directory} is read-only")
        check_bool(fn, "force", force)
        metrics = md.check_metrics(fn, metrics)
        md.check_config(fn, config)
        if self._best_metric is not None and (metrics is None or self._best_metric not in metrics):
            raise ValueError(
                f"{fn}: keep_best ranks by the metric {self._best_metric!r}, so every save must "
                f"report it; got metrics {metrics!r}"
            )
        converter = layout_lib.as_layout(fn, layout)
        if not force and not self.should_save(step):
            return False
        self.wait()
        if step in self.all_steps():
            self._move_aside_or_refuse(step)
        if converter is not None:
            state = converter.to_canonical(state)
        self._start_save(step, state, metrics, config)
        if not self._async:
            self.wait()
        return True

    def _start_save(
        self, step: int, state: Any, metrics: dict[str, float] | None, config: Any
    ) -> None:
        """Takes the canonical ``state``'s host arrays and starts the background save."""
        description = ts.describe_tree(state)
        leaves = jax.tree.leaves(state)
        host = layout_lib.host_arrays([spec.path for spec in description.leaves], leaves)
        tree, paths = storage.storage_tree(state, host)
        meta = md.build_meta(step, description, metrics, config, paths)
        names = [md.storage_name(path) for path in paths]
        manifest = PendingManifest(step, names, host, meta, self._hash_pool)
        args = ocp.args.Composite(
            **{
                STATE: storage.save_args(tree),
                META: ocp.args.JsonSave(meta),
                MANIFEST: ManifestSave(manifest),
            }
        )

        if self._threaded:
            # One process: all of Orbax's work runs in the background thread.
            def write() -> None:
                try:
                    self._mgr.save(step, args=args, metrics=metrics, force=True)
                except BaseException:
                    self._remove_failed_save(step)
                    self._mgr.reload()  # the step is not committed: forget it
                    raise
                self._purge_deleted()

            self._saves.start(step, write)
            return
        # Several processes: the barriers Orbax's save() starts with are device collectives,
        # which every process must issue from the thread that runs the training steps, in
        # the same order; Orbax's own background thread (whose barriers go through JAX's
        # coordination service) then writes and commits, and ours waits for it.
        self._mgr.save(step, args=args, metrics=metrics, force=True)
        self._saves.start(step, functools.partial(self._finish_orbax_save, step))

    def _remove_failed_save(self, step: int) -> None:
        """Removes the temporary directory of a save of ``step`` that failed.

        Orbax raises at the first item that fails while the others may still be writing
        into the temporary directory (and may create it again after a removal); a later
        save, in this manager or a new one, would then fail to clean it up ("Directory not
        empty"). So the removal is repeated until the directory has stayed away for
        :data:`FAILED_SAVE_QUIET_S` seconds, for up to :data:`FAILED_SAVE_CLEANUP_S`.
        """
        deadline = time.monotonic() + FAILED_SAVE_CLEANUP_S
        pattern = f"{step}.orbax-checkpoint-tmp*"
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            leftovers = list(self.directory.glob(pattern))
            if not leftovers and time.monotonic() - quiet_since >= FAILED_SAVE_QUIET_S:
                return
            for tmp in leftovers:
                quiet_since = time.monotonic()
                with contextlib.suppress(OSError):  # still being written: tried again
                    shutil.rmtree(tmp)
            time.sleep(0.02)
        logger.warning(
            "a failed save of step %d left %s behind: %s",
            step,
            pattern,
            [str(p) for p in self.directory.glob(pattern)],
        )

    def _finish_orbax_save(self, step: int) -> None:
        """Waits for Orbax's asynchronous save of ``step``; raises unless it committed."""
        try:
            self._mgr.wait_until_finished()
            if not self.step_path(step).is_dir():
                raise RuntimeError(f"Orbax did not commit step {step}; see its log")
        except BaseException:
            self._mgr.reload()
            raise
        self._purge_deleted()

    def _move_aside_or_refuse(self, step: int) -> None:
        """Quarantines the committed ``step`` if it fails verification, else refuses it."""
        try:
            self.verify(step)
        except CheckpointCorruptError as err:
            self._quarantine(step, err)
            return
        raise ValueError(
            f"CheckpointManager.save: step {step} is already committed in {self.directory}; "
            "a committed checkpoint is never overwritten"
        )

    def _quarantine(self, step: int, err: CheckpointCorruptError) -> None:
        """Moves the bad ``step`` to ``<directory>/quarantine/<step>-<time>/``."""
        stamp = datetime.datetime.now(tz=datetime.UTC).strftime("%Y%m%dT%H%M%S%f")
        target = self.directory / QUARANTINE / f"{step}-{stamp}"
        if _is_primary():
            target.parent.mkdir(exist_ok=True)
            shutil.move(str(self.step_path(step)), str(target))
            logger.warning("step %d failed verification (%s); moved it to %s", step, err, target)
        if jax.process_count() > 1:
            # Every process read the same bad files; none may list the step again
            # before process 0 has moved it.
            multihost_utils.sync_global_devices(f"scirs2 quarantine step {step}")
        self._mgr.reload()

    # -- restore -----------------------------------------------------------------------

    def restore(
        self,
        step: int | None = None,
        target: Any = None,
        *,
        params_only: bool = False,
        layout: Any = None,
        placement: Any = None,
        optimizer: optax.GradientTransformation | None = None,
    ) -> Restored:
        """Restores a verified checkpoint, with its types, onto the devices asked for.

        A checkpoint holds no memory kinds: a state saved with its optimizer state in host
        memory (:func:`~scirs2_optim_jax.offload`) restores into device memory unless a
        target leaf's sharding names a memory kind, or ``optimizer`` is given.

        Args:
            step: the step to restore; None restores the newest checkpoint that verifies,
                logging (``logging.WARNING``) each newer one it skips.
            target: None to rebuild the saved tree from its description; or a pytree of
                arrays, ``jax.ShapeDtypeStruct`` s or scalars with the canonical structure,
                whose container types, leaf kinds and shardings the result takes. A target
                that differs (other model, other optimizer) raises, naming the paths.
            params_only: restore only ``state.params`` (the saved state must have a
                ``params`` field or key); ``target`` then describes the params.
            layout: a :class:`~scirs2_optim_jax.checkpoint.Layout` or pair whose
                ``from_canonical`` turns the restored canonical state into the in-memory one.
            placement: a ``jax.sharding.Sharding`` or ``jax.Device`` for jax leaves whose
                target gives no sharding; None puts them on the default device.
            optimizer: the optimizer that will continue from the restored ``opt_state`` (of a
                :class:`CheckpointState`, or a dict's ``"opt_state"``): the state is placed
                where it keeps it (:func:`~scirs2_optim_jax.engine.place_state`, after
                ``layout``): in host memory for an offloaded optimizer (``pinned_host`` on
                the same devices, or the host's CPU device for ``compute="host"``), in
                device memory otherwise. So an offloaded run's checkpoint continues in one
                that is not, and the reverse.

        Returns:
            A :class:`Restored` ``(step, state, metrics, config)``.

        Raises:
            FileNotFoundError: there is no checkpoint (or no such step).
            CheckpointCorruptError: the step (or, with ``step=None``, every step) fails
                verification; names the step and file.
            ValueError, TypeError: a bad argument or a target that does not match.
        """
        fn = "CheckpointManager.restore"
        converter = _check_restore_options(fn, params_only, layout, placement, optimizer)
        candidates = self._restore_candidates(fn, step)
        # Without a layout, an offloaded optimizer's state goes to host memory straight
        # from the host arrays (it never has to fit in device memory); with one,
        # from_canonical places it and place_state moves it after.
        memory = _opt_state_memory(optimizer) if converter is None else None
        skipped: list[str] = []
        for candidate in candidates:
            try:
                restored = self._restore_step(candidate, target, params_only, placement, memory)
            except CheckpointCorruptError as err:
                if step is not None:
                    raise
                logger.warning("skipping checkpoint step %d: %s", candidate, err)
                skipped.append(str(err))
                continue
            if converter is not None:
                restored = restored._replace(state=converter.from_canonical(restored.state))
            if optimizer is not None:
                placed = _place_opt_state(fn, restored.step, restored.state, optimizer)
                restored = restored._replace(state=placed)
            return restored
        raise CheckpointCorruptError(
            candidates[0],
            str(self.directory),
            "no checkpoint verifies; " + "; ".join(skipped),
        )

    def _restore_candidates(self, fn: str, step: int | None) -> list[int]:
        """The steps :meth:`restore` tries in order: ``step``, or every step newest first."""
        self.wait()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"{fn}: no checkpoint in {self.directory}")
            return steps[::-1]
        step = check_int(fn, "step", step, 0)
        if step not in steps:
            raise FileNotFoundError(
                f"{fn}: no committed checkpoint for step {step} in {self.directory} "
                f"(steps: {steps or 'none'})"
            )
        return [step]

    def _restore_step(
        self,
        step: int,
        target: Any,
        params_only: bool,
        placement: Any,
        opt_state_memory: str | jax.Device | None = None,
    ) -> Restored:
        meta, description, values = self._verified(step)
        state = build_state(
            step,
            self.directory,
            description,
            values,
            target=target,
            params_only=params_only,
            placement=placement,
            opt_state_memory=opt_state_memory,
        )
        return Restored(step, state, meta.get("metrics"), meta.get("config"))

    # -- verification and listing ------------------------------------------------------

    def verify(self, step: int) -> None:
        """Reads every file of ``step`` and checks it against its manifest; returns None.

        Raises:
            CheckpointCorruptError: naming the step, the file and what is wrong.
            FileNotFoundError: there is no committed checkpoint for ``step``.

        Example:
            >>> import tempfile, numpy as np
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     with CheckpointManager(tmp, async_save=False) as mgr:
            ...         _ = mgr.save(0, {"w": np.zeros(3)})
            ...         mgr.verify(0)
        """
        step = check_int("CheckpointManager.verify", "step", step, 0)
        self.wait()
        if step not in self.all_steps():
            raise FileNotFoundError(
                f"CheckpointManager.verify: no committed checkpoint for step {step} in "
                f"{self.directory}"
            )
        self._verified(step)

    def info(self) -> list[CheckpointInfo]:
        """Lists every committed step with its size, metrics and whether it verifies.

        Example:
            >>> import tempfile, numpy as np
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     with CheckpointManager(tmp, async_save=False) as mgr:
            ...         _ = mgr.save(4, {"w": np.zeros(3)}, metrics={"loss": 0.5})
            ...         [(i.step, i.metrics, i.ok) for i in mgr.info()]
            [(4, {'loss': 0.5}, True)]
        """
        self.wait()
        out = []
        for step in self.all_steps():
            path = self.step_path(step)
            error: str | None = None
            try:
                self._verified(step)
            except CheckpointCorruptError as err:
                error = str(err)
            try:
                metrics = md.read_json(step, md.meta_file(path)).get("metrics")
            except CheckpointCorruptError:
                metrics = None
            out.append(CheckpointInfo(step, str(path), _dir_size(path), metrics, error))
        return out

    def _verified(self, step: int) -> integrity.VerifiedStep:
        """Reads step ``step`` and verifies all of it (``integrity.verify_step``)."""
        try:
            step_dir = self.step_path(step)
        except ValueError as err:
            raise CheckpointCorruptError(step, str(self.directory / str(step)), str(err)) from None
        return integrity.verify_step(step, step_dir, self._hash_pool)

    # -- lifecycle ---------------------------------------------------------------------

    def wait(self) -> None:
        """Blocks until the save in flight (if any) is committed.

        Raises:
            CheckpointSaveError: that save (or an earlier one not yet reported) failed.
        """
        self._saves.wait()

    def close(self) -> None:
        """Waits for the save in flight, then releases the threads and Orbax's files.

        Raises:
            CheckpointSaveError: the last save failed (everything is released anyway).
        """
        try:
            self._saves.close()
        finally:
            self._hash_pool.shutdown(wait=True)
            self._mgr.close()
            self._purge_deleted()

    def _purge_deleted(self) -> None:
        if not self._read_only and _is_primary():
            shutil.rmtree(self.directory / DELETED, ignore_errors=True)
