"""``CheckpointManager``: verified, canonical Orbax checkpoints of a training run.

Orbax does the storage: asynchronous writes with tensorstore (OCDBT, no pickle), atomic
commits through a temporary directory that is renamed when every item is written, the save
interval and the retention policies. This module adds what a long run needs on top:

* the canonical layout (DESIGN.md, principle 5): sharded arrays are saved at their full
  logical shape and restored onto any sharding or one device; a :class:`Layout` converts
  states such as ZeRO's;
* types that survive: a JSON description of the tree rebuilds NamedTuples, Flax structures,
  typed PRNG keys and Python scalars with or without a target (``treespec``);
* integrity: a manifest of sha256 checksums, committed with the data and checked on every
  restore; ``restore()`` without a step skips bad checkpoints, newest first, and logs them;
* safety: steps are integers inside the directory, a committed step is never overwritten,
  nothing is deserialised by code execution.

One checkpoint is the step directory ``<directory>/<step>/`` with three Orbax items:
``state/`` (the arrays, named ``leaf_00000``...), ``meta/meta.json`` (tree description,
config, metrics) and ``manifest/manifest.json`` (checksums).

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

import datetime
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from scirs2_optim_jax.checkpoint import integrity
from scirs2_optim_jax.checkpoint import layout as layout_lib
from scirs2_optim_jax.checkpoint import treespec as ts
from scirs2_optim_jax.checkpoint.errors import CheckpointCorruptError

__all__ = ["CheckpointInfo", "CheckpointManager", "CheckpointState", "Restored"]

logger = logging.getLogger(__name__)

STATE, META, MANIFEST = "state", "meta", "manifest"
META_FILE, MANIFEST_FILE = "meta.json", "manifest.json"
QUARANTINE = "quarantine"
# Retention renames a step here first (atomic), so a crash mid-deletion never leaves a
# half-deleted directory that looks like a committed step; the manager then empties it.
DELETED = ".deleted"
_PARAMS_PATHS = ("['params']", ".params")


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


def _check_int(fn: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_optional_int(fn: str, name: str, value: Any, minimum: int) -> int | None:
    return None if value is None else _check_int(fn, name, value, minimum)


def _check_metrics(fn: str, metrics: Any) -> dict[str, float] | None:
    if metrics is None:
        return None
    if not isinstance(metrics, Mapping):
        raise TypeError(f"{fn}: metrics must be a mapping of name -> number, got {metrics!r}")
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(name, str):
            raise TypeError(f"{fn}: metrics keys must be strings, got {name!r}")
        if isinstance(value, bool) or np.ndim(value) != 0:
            raise TypeError(f"{fn}: metrics[{name!r}] must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{fn}: metrics[{name!r}] must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{fn}: metrics[{name!r}] must be finite, got {value!r}")
        out[name] = number
    return out


def _check_json(fn: str, name: str, value: Any, path: str = "") -> None:
    """Raises TypeError naming the first part of ``value`` that is not plain JSON."""
    where = f"{name}{path}"
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{fn}: {where} must be a finite number, got {value!r}")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(fn, name, item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{fn}: {where} has a non-string key {key!r}")
            _check_json(fn, name, item, f"{path}[{key!r}]")
        return
    raise TypeError(
        f"{fn}: {where} must be JSON data (dict, list, str, number, bool, None), "
        f"got {type(value).__name__} {value!r}"
    )


def _leaf_name(index: int) -> str:
    return f"leaf_{index:05d}"


_FILE_IN_MESSAGE = re.compile(r'local file "([^"]+)"')


def _file_in(err: BaseException, default: Path) -> str:
    """The last file a tensorstore error names, else ``default``."""
    files = [f for f in _FILE_IN_MESSAGE.findall(str(err)) if not f.endswith("/")]
    return files[-1] if files else str(default)


def _short(err: BaseException) -> str:
    text = str(err).split(" [tensorstore_spec")[0]
    return f"{type(err).__name__}: {text[:400]}"


def _read_arrays(step: int, state_dir: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Reads the stored arrays as numpy arrays, raising CheckpointCorruptError on bad files.

    One array is read alone first: when the storage is damaged, that read fails with no
    sibling reads in flight (which would outlive Orbax's event loop and print errors).
    """
    checkpointer = ocp.PyTreeCheckpointer()

    def read(subset: list[str]) -> dict[str, np.ndarray]:
        args = ocp.args.PyTreeRestore(
            item={name: 0 for name in subset},
            restore_args={name: ocp.RestoreArgs(restore_type=np.ndarray) for name in subset},
            partial_restore=True,
        )
        return dict(checkpointer.restore(state_dir, args=args))

    try:
        read(names[:1])
        return read(names)
    except Exception as err:  # tensorstore and orbax raise many types on bad files
        raise CheckpointCorruptError(step, _file_in(err, state_dir), _short(err)) from None
    finally:
        checkpointer.close()


def _dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            file = Path(root) / name
            if not file.is_symlink():
                total += file.stat().st_size
    return total


class CheckpointManager:
    """Saves and restores verified, canonical checkpoints of a training run with Orbax.

    Saves are asynchronous by default: :meth:`save` copies the state to the host, computes
    its checksums, starts the write and returns; the next save, :meth:`wait` or
    :meth:`close` waits for it. A checkpoint appears only once all of it is committed.

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
        self._interval = _check_int(fn, "save_interval_steps", save_interval_steps, 1)
        keep_last = _check_optional_int(fn, "keep_last", keep_last, 1)
        keep_every = _check_optional_int(fn, "keep_every", keep_every, 1)
        keep_best = _check_optional_int(fn, "keep_best", keep_best, 1)
        if keep_best is not None and not isinstance(best_metric, str):
            raise ValueError(
                f"{fn}: keep_best needs best_metric, a metric name; got {best_metric!r}"
            )
        if best_metric is not None and not isinstance(best_metric, str):
            raise TypeError(f"{fn}: best_metric must be a string or None, got {best_metric!r}")
        if best_mode not in ("min", "max"):
            raise ValueError(f"{fn}: best_mode must be 'min' or 'max', got {best_mode!r}")
        for name, value in (("async_save", async_save), ("read_only", read_only)):
            if not isinstance(value, bool):
                raise TypeError(f"{fn}: {name} must be a bool, got {value!r}")
        path = Path(directory).absolute()
        if read_only and not path.is_dir():
            raise FileNotFoundError(f"{fn}: no checkpoint directory at {path}")
        if path.exists() and not path.is_dir():
            raise ValueError(f"{fn}: directory {path} exists and is not a directory")
        self.directory = path
        self._read_only = read_only
        self._best_metric = best_metric if keep_best is not None else None

        rules: list[Any] = []
        if keep_last is not None or keep_every is not None or keep_best is not None:
            rules.append(policies.LatestN(n=max(keep_last or 1, 1)))
        if keep_every is not None:
            rules.append(policies.EveryNSteps(interval_steps=keep_every))
        if keep_best is not None:
            name = best_metric
            rules.append(
                policies.BestN(
                    get_metric_fn=lambda m: m[name], reverse=best_mode == "min", n=keep_best
                )
            )
        preservation = policies.AnyPreservationPolicy(rules) if rules else None
        if read_only:
            # Lists, verifies and restores only: creates, cleans and deletes nothing.
            options = ocp.CheckpointManagerOptions(
                save_interval_steps=0, read_only=True, create=False, save_root_metadata=False
            )
        else:
            options = ocp.CheckpointManagerOptions(
                save_decision_policy=policies.FixedIntervalPolicy(self._interval),
                preservation_policy=preservation,
                # Orbax writes the metrics it ranks by only when best_fn is set.
                best_fn=(lambda m: m[best_metric]) if keep_best is not None else None,
                best_mode=best_mode,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
                todelete_subdir=DELETED,
            )
        self._mgr = ocp.CheckpointManager(
            path,
            options=options,
            item_names=(STATE, META, MANIFEST),
            item_handlers={
                STATE: ocp.StandardCheckpointHandler(),
                META: ocp.JsonCheckpointHandler(filename=META_FILE),
                MANIFEST: ocp.JsonCheckpointHandler(filename=MANIFEST_FILE),
            },
        )

    # -- context manager ---------------------------------------------------------------

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- steps -------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Returns the committed steps (and one being saved), oldest first.

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as tmp, CheckpointManager(tmp) as mgr:
            ...     mgr.all_steps()
            []
        """
        return sorted(int(s) for s in self._mgr.all_steps())

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
        step = _check_int("CheckpointManager.should_save", "step", step, 0)
        return bool(self._mgr.should_save(step))

    def step_path(self, step: int) -> Path:
        """Returns the directory of ``step``, refusing anything but an integer step >= 0.

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as tmp, CheckpointManager(tmp) as mgr:
            ...     mgr.step_path(7).name
            '7'
        """
        step = _check_int("CheckpointManager", "step", step, 0)
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

        The state is converted to its canonical layout (``layout.to_canonical``, then every
        array copied to the host at its full logical shape), checksummed, and handed to
        Orbax, which commits the step atomically. The caller may change or donate the state's
        buffers as soon as this returns.

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
        """
        fn = "CheckpointManager.save"
        step = _check_int(fn, "step", step, 0)
        if self._read_only:
            raise ValueError(f"{fn}: the manager for {self.directory} is read-only")
        if not isinstance(force, bool):
            raise TypeError(f"{fn}: force must be a bool, got {force!r}")
        metrics = _check_metrics(fn, metrics)
        _check_json(fn, "config", config)
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
        description = ts.describe_tree(state)
        leaves = jax.tree.leaves(state)
        arrays = {
            _leaf_name(i): layout_lib.to_host(spec.path, leaf)
            for i, (spec, leaf) in enumerate(zip(description.leaves, leaves, strict=True))
        }
        meta = {
            "format": integrity.FORMAT,
            "step": step,
            "tree": description.to_json(),
            "metrics": metrics,
            "config": config,
        }
        manifest = integrity.build_manifest(step, arrays, meta)
        self._mgr.save(
            step,
            args=ocp.args.Composite(
                **{
                    STATE: ocp.args.StandardSave(arrays),
                    META: ocp.args.JsonSave(meta),
                    MANIFEST: ocp.args.JsonSave(manifest),
                }
            ),
            metrics=metrics,
            force=True,
        )
        return True

    def _move_aside_or_refuse(self, step: int) -> None:
        try:
            self.verify(step)
        except CheckpointCorruptError as err:
            stamp = datetime.datetime.now(tz=datetime.UTC).strftime("%Y%m%dT%H%M%S%f")
            target = self.directory / QUARANTINE / f"{step}-{stamp}"
            if _is_primary():
                target.parent.mkdir(exist_ok=True)
                shutil.move(str(self.step_path(step)), str(target))
                logger.warning(
                    "step %d failed verification (%s); moved it to %s", step, err, target
                )
            if jax.process_count() > 1:
                # Every process read the same bad files; none may list the step again
                # before process 0 has moved it.
                multihost_utils.sync_global_devices(f"scirs2 quarantine step {step}")
            self._mgr.reload()
            return
        raise ValueError(
            f"CheckpointManager.save: step {step} is already committed in {self.directory}; "
            "a committed checkpoint is never overwritten"
        )

    # -- restore -----------------------------------------------------------------------

    def restore(
        self,
        step: int | None = None,
        target: Any = None,
        *,
        params_only: bool = False,
        layout: Any = None,
        placement: Any = None,
    ) -> Restored:
        """Restores a verified checkpoint, with its types, onto the devices asked for.

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

        Returns:
            A :class:`Restored` ``(step, state, metrics, config)``.

        Raises:
            FileNotFoundError: there is no checkpoint (or no such step).
            CheckpointCorruptError: the step (or, with ``step=None``, every step) fails
                verification; names the step and file.
            ValueError, TypeError: a bad argument or a target that does not match.
        """
        fn = "CheckpointManager.restore"
        if not isinstance(params_only, bool):
            raise TypeError(f"{fn}: params_only must be a bool, got {params_only!r}")
        converter = layout_lib.as_layout(fn, layout)
        if converter is not None and params_only:
            raise ValueError(
                f"{fn}: layout converts the whole state; it cannot go with params_only"
            )
        if placement is not None and not isinstance(placement, (jax.sharding.Sharding, jax.Device)):
            raise TypeError(
                f"{fn}: placement must be a jax.sharding.Sharding, a jax.Device or None, "
                f"got {placement!r}"
            )
        self._mgr.wait_until_finished()
        steps = self.all_steps()
        if step is not None:
            step = _check_int(fn, "step", step, 0)
            if step not in steps:
                raise FileNotFoundError(
                    f"{fn}: no committed checkpoint for step {step} in {self.directory} "
                    f"(steps: {steps or 'none'})"
                )
            candidates = [step]
        else:
            if not steps:
                raise FileNotFoundError(f"{fn}: no checkpoint in {self.directory}")
            candidates = steps[::-1]
        skipped: list[str] = []
        for candidate in candidates:
            try:
                restored = self._restore_step(candidate, target, params_only, placement)
            except CheckpointCorruptError as err:
                if step is not None:
                    raise
                logger.warning("skipping checkpoint step %d: %s", candidate, err)
                skipped.append(str(err))
                continue
            if converter is not None:
                restored = restored._replace(state=converter.from_canonical(restored.state))
            return restored
        raise CheckpointCorruptError(
            candidates[0],
            str(self.directory),
            "no checkpoint verifies; " + "; ".join(skipped),
        )

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
        step = _check_int("CheckpointManager.verify", "step", step, 0)
        self._mgr.wait_until_finished()
        if step not in self.all_steps():
            raise FileNotFoundError(
                f"CheckpointManager.verify: no committed checkpoint for step {step} in "
                f"{self.directory}"
            )
        self._read_verified(step)

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
        self._mgr.wait_until_finished()
        out = []
        for step in self.all_steps():
            path = self.step_path(step)
            metrics: dict[str, float] | None = None
            error: str | None = None
            try:
                self._read_verified(step)
            except CheckpointCorruptError as err:
                error = str(err)
            try:
                metrics = self._read_json(step, META, META_FILE).get("metrics")
            except CheckpointCorruptError:
                metrics = None
            out.append(CheckpointInfo(step, str(path), _dir_size(path), metrics, error))
        return out

    def _read_json(self, step: int, item: str, filename: str) -> Any:
        file = self.step_path(step) / item / filename
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CheckpointCorruptError(step, str(file), "missing") from None
        except (OSError, UnicodeDecodeError) as err:
            raise CheckpointCorruptError(step, str(file), _short(err)) from None
        try:
            data = json.loads(text)
        except ValueError as err:
            raise CheckpointCorruptError(step, str(file), f"not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise CheckpointCorruptError(step, str(file), "not a JSON object")
        return data

    def _check_inside(self, step: int) -> None:
        try:
            root = self.step_path(step)
        except ValueError as err:
            raise CheckpointCorruptError(step, str(self.directory / str(step)), str(err)) from None
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                entry = Path(dirpath) / name
                if entry.is_symlink():
                    raise CheckpointCorruptError(
                        step, str(entry), f"a symbolic link (to {os.readlink(entry)}); refused"
                    )

    def _read_verified(self, step: int) -> tuple[dict, ts.TreeDescription, dict[str, np.ndarray]]:
        """Reads step ``step`` and verifies all of it; returns (meta, description, arrays)."""
        self._check_inside(step)
        step_dir = self.step_path(step)
        manifest_file = step_dir / MANIFEST / MANIFEST_FILE
        meta_file = step_dir / META / META_FILE
        manifest = self._read_json(step, MANIFEST, MANIFEST_FILE)
        meta = self._read_json(step, META, META_FILE)
        if manifest.get("format") != integrity.FORMAT or manifest.get("step") != step:
            raise CheckpointCorruptError(
                step,
                str(manifest_file),
                f"expected format {integrity.FORMAT!r} for step {step}, got "
                f"{manifest.get('format')!r} for step {manifest.get('step')!r}",
            )
        expected = manifest.get("arrays")
        if not isinstance(expected, dict):
            raise CheckpointCorruptError(step, str(manifest_file), "no array checksums")
        try:
            metadata_ok = integrity.json_sha256(meta) == manifest.get("metadata_sha256")
        except ValueError:
            metadata_ok = False
        if not metadata_ok:
            raise CheckpointCorruptError(
                step, str(meta_file), "its sha256 does not match the manifest"
            )
        try:
            description = ts.TreeDescription.from_json(meta["tree"])
        except (KeyError, ValueError) as err:
            raise CheckpointCorruptError(step, str(meta_file), str(err)) from None
        names = [_leaf_name(i) for i in range(len(description.leaves))]
        if sorted(names) != sorted(expected):
            raise CheckpointCorruptError(
                step, str(manifest_file), "the manifest and the metadata list different arrays"
            )
        state_dir = step_dir / STATE
        arrays = _read_arrays(step, state_dir, names) if names else {}
        for name, spec in zip(names, description.leaves, strict=True):
            value = arrays.get(name)
            if not isinstance(value, np.ndarray):
                raise CheckpointCorruptError(
                    step, str(state_dir), f"the array {name} for {spec.path} is missing"
                )
            if value.shape != spec.shape and not (spec.kind == ts.PRNG_KEY):
                raise CheckpointCorruptError(
                    step,
                    str(state_dir),
                    f"the array {name} for {spec.path} has shape {value.shape}, "
                    f"expected {spec.shape}",
                )
            if integrity.array_sha256(value) != expected[name]:
                raise CheckpointCorruptError(
                    step,
                    str(state_dir),
                    f"the array {name} for {spec.path} does not match its sha256 in "
                    f"{manifest_file}",
                )
        return meta, description, arrays

    def _restore_step(self, step: int, target: Any, params_only: bool, placement: Any) -> Restored:
        meta, description, arrays = self._read_verified(step)
        values = [arrays[_leaf_name(i)] for i in range(len(description.leaves))]
        if params_only:
            description, values = _params_subtree(step, self.directory, description, values)
        fn = "CheckpointManager.restore"
        if target is None:
            try:
                leaves = [
                    layout_lib.from_host(v, spec, spec.kind, None, placement)
                    for v, spec in zip(values, description.leaves, strict=True)
                ]
                state = ts.rebuild_tree(description, leaves)
            except TypeError as err:
                raise TypeError(f"{fn}: step {step}: {err}") from None
        else:
            wanted = _accept_abstract_scalars(description, ts.describe_tree(target), target)
            differences = ts.diff_descriptions(description, wanted)
            if differences:
                hint = ""
                if not params_only and _matches_params(step, self.directory, description, wanted):
                    hint = " (it matches the saved params: pass params_only=True to restore them)"
                raise ValueError(
                    f"{fn}: the target does not match checkpoint step {step} in "
                    f"{self.directory}{hint}: " + "; ".join(differences)
                )
            target_leaves, treedef = jax.tree.flatten(target)
            leaves = [
                layout_lib.from_host(v, spec, want.kind, t, placement)
                for v, spec, want, t in zip(
                    values, description.leaves, wanted.leaves, target_leaves, strict=True
                )
            ]
            state = jax.tree.unflatten(treedef, leaves)
        return Restored(step, state, meta.get("metrics"), meta.get("config"))

    # -- lifecycle ---------------------------------------------------------------------

    def wait(self) -> None:
        """Blocks until the save in flight (if any) is committed; re-raises its error."""
        self._mgr.wait_until_finished()
        self._purge_deleted()

    def close(self) -> None:
        """Waits for the save in flight, then releases Orbax's threads and files."""
        self._mgr.close()
        self._purge_deleted()

    def _purge_deleted(self) -> None:
        if not self._read_only and _is_primary():
            shutil.rmtree(self.directory / DELETED, ignore_errors=True)


def _is_primary() -> bool:
    """Whether this process writes what is written once (process 0, as for Orbax)."""
    return jax.process_index() == 0


_PY_KINDS = (ts.PY_BOOL, ts.PY_INT, ts.PY_FLOAT)


def _accept_abstract_scalars(
    saved: ts.TreeDescription, wanted: ts.TreeDescription, target: Any
) -> ts.TreeDescription:
    """Lets a 0-d ``ShapeDtypeStruct`` stand for a saved Python scalar (``jax.eval_shape``
    turns Python ints into int32 structs); the result keeps the saved Python type."""
    saved_by_path = {leaf.path: leaf for leaf in saved.leaves}
    leaves = []
    for spec, leaf in zip(wanted.leaves, jax.tree.leaves(target), strict=True):
        old = saved_by_path.get(spec.path)
        abstract = isinstance(leaf, jax.ShapeDtypeStruct) and spec.kind == ts.JAX_ARRAY
        if old is not None and old.kind in _PY_KINDS and abstract and spec.shape == ():
            spec = old
        leaves.append(spec)
    return ts.TreeDescription(wanted.nodes, tuple(leaves))


def _matches_params(
    step: int, directory: Path, saved: ts.TreeDescription, wanted: ts.TreeDescription
) -> bool:
    try:
        params, _ = _params_subtree(step, directory, saved, [])
    except ValueError:
        return False
    return not ts.diff_descriptions(params, wanted)


def _params_subtree(
    step: int, directory: Path, description: ts.TreeDescription, values: list[np.ndarray]
) -> tuple[ts.TreeDescription, list[np.ndarray]]:
    """The ``params`` child of the saved root: its description (paths re-rooted), values."""
    for child in description.nodes.get("children", []):
        path = child.get("path")
        if path in _PARAMS_PATHS:
            break
    else:
        raise ValueError(
            f"CheckpointManager.restore: params_only needs a state with a params field or key; "
            f"checkpoint step {step} in {directory} has none at its root"
        )
    indices = [
        i
        for i, leaf in enumerate(description.leaves)
        if leaf.path == path or leaf.path.startswith((path + "[", path + "."))
    ]
    offset = indices[0] if indices else 0

    def reroot(node: dict[str, Any]) -> dict[str, Any]:
        if "leaf" in node:
            return {"leaf": node["leaf"] - offset}
        out = dict(node, children=[reroot(c) for c in node["children"]])
        out["path"] = node["path"][len(path) :]
        return out

    leaves = tuple(
        ts.LeafSpec(leaf.path[len(path) :], leaf.kind, leaf.shape, leaf.dtype, leaf.key_impl)
        for leaf in (description.leaves[i] for i in indices)
    )
    chosen = [values[i] for i in indices] if values else []
    return ts.TreeDescription(reroot(child), leaves), chosen
