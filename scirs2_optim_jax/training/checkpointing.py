"""Checkpoints of the demo training job: save every K steps, resume exactly, on any mesh.

:class:`RunCheckpoints` ties :func:`~scirs2_optim_jax.training.train_digits` to the
package's :class:`~scirs2_optim_jax.checkpoint.CheckpointManager`. A checkpoint holds a
:class:`~scirs2_optim_jax.checkpoint.CheckpointState` in the canonical layout: the
parameters, the optimizer state as ``tx.init`` lays it out (a ZeRO state is gathered and
unpadded first), and the data position (how many batches the run has consumed). The run's
:class:`~scirs2_optim_jax.training.TrainSpec` goes into the checkpoint's config, and a resume
is refused unless the spec is the same, because another optimizer, schedule length, batch
size or seed would silently train a different model. The device count, the number of
processes, the ZeRO stage and the optimizer-state offload may change between save and
resume: an offloaded state (:func:`~scirs2_optim_jax.engine.offload`) is stored as the same
state in device memory would be, and a restored state is placed where the run's optimizer
keeps it (:func:`~scirs2_optim_jax.engine.place_state`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec

from scirs2_optim_jax import parallel
from scirs2_optim_jax.checkpoint import CheckpointManager, CheckpointState, opt_state_layout
from scirs2_optim_jax.engine import offload_of, place_state
from scirs2_optim_jax.training.errors import RunSetupError
from scirs2_optim_jax.training.spec import AXIS, TrainSpec

__all__ = ["RunCheckpoints"]


def _spec_differences(saved: Any, current: dict[str, Any]) -> list[str]:
    if not isinstance(saved, dict):
        return [f"the checkpoint records no run spec (config {saved!r})"]
    names = sorted(set(saved) | set(current))
    return [
        f"{name}: {saved.get(name)!r} in the checkpoint, {current.get(name)!r} now"
        for name in names
        if saved.get(name) != current.get(name)
    ]


def _how_to_resume(saved: Any, current: dict[str, Any]) -> str:
    """What to do instead, when only the run's length differs."""
    if not isinstance(saved, dict):
        return ""
    changed = {name for name in set(saved) | set(current) if saved.get(name) != current.get(name)}
    if changed != {"steps"}:
        return ". Resume with the options the checkpoint records, or use another directory"
    return (
        f". --steps is part of the run: it sets the length of the learning-rate schedule, "
        f"so the run in this directory is a {saved['steps']}-step run. To finish it, resume "
        f"with --steps {saved['steps']}; to train for {current['steps']} steps, start a new "
        "run in another --checkpoint-dir"
    )


class RunCheckpoints:
    """Saves and restores one training run's state in a checkpoint directory.

    Args:
        directory: the checkpoint directory (created when missing).
        spec: the run's spec, stored with every checkpoint and compared on resume.
        mesh: the run's mesh; restored state is placed on it.
        zero_stage: the step's ZeRO stage (0: replicated optimizer state).
        params_like: the parameters (arrays or shape/dtype structs).
        tx: the optimizer the step runs (for the canonical optimizer state's structure,
            and where the restored state goes: host memory when it is offloaded).
        save_every: save every this many steps.
        keep: how many of the newest checkpoints to keep.
        async_save: write in the background.
        resume: :meth:`restore` continues from the newest good checkpoint; without it, a
            directory that already holds checkpoints is refused.

    Raises:
        RunSetupError: the directory holds checkpoints and ``resume`` is False.

    Example:
        >>> import tempfile, jax.numpy as jnp
        >>> from scirs2_optim_jax.parallel import make_data_mesh
        >>> spec = TrainSpec.create(steps=4)
        >>> tx, _ = spec.make_optimizer()
        >>> params = {"w": jnp.zeros(3)}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     run = RunCheckpoints(tmp, spec=spec, mesh=make_data_mesh(1), zero_stage=0,
        ...                          params_like=params, tx=tx, save_every=2, async_save=False)
        ...     _ = run.save(2, params, tx.init(params), jnp.float32(0.5))
        ...     last = run.close()
        ...     again = RunCheckpoints(tmp, spec=spec, mesh=make_data_mesh(1), zero_stage=0,
        ...                            params_like=params, tx=tx, save_every=2, resume=True)
        ...     step, restored, _ = again.restore()
        ...     _ = again.close()
        >>> last, step, restored["w"].tolist()
        (2, 2, [0.0, 0.0, 0.0])
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        spec: TrainSpec,
        mesh: Mesh,
        zero_stage: int,
        params_like: Any,
        tx: optax.GradientTransformation,
        save_every: int,
        keep: int = 3,
        async_save: bool = True,
        resume: bool = False,
    ) -> None:
        self._manager = CheckpointManager(
            directory, save_interval_steps=save_every, keep_last=keep, async_save=async_save
        )
        latest = self._manager.latest_step()
        if latest is not None and not resume:
            self._manager.close()
            raise RunSetupError(
                f"train_digits: the checkpoint directory {self._manager.directory} already "
                f"holds checkpoints (newest: step {latest}); resume from them (--resume) or "
                "choose another directory"
            )
        self._spec = spec.to_json()
        self._mesh = mesh
        self._zero_stage = zero_stage
        self._save_every = save_every
        self._resume = resume
        self._abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params_like)
        self._tx = tx
        offloaded = offload_of(tx)
        # The state's structure is the inner optimizer's (an optimizer updated on the host
        # builds its state only outside jit, so it is read from the inner one).
        inner = tx if offloaded is None else offloaded.inner
        self._opt_structure = jax.tree.structure(jax.eval_shape(inner.init, self._abstract))
        # Updated on the host, the state is whole there at every ZeRO stage: the canonical
        # layout already.
        self._on_host = offloaded is not None and offloaded.compute == "host"
        self._layout = None
        if zero_stage and not self._on_host:
            abstract = self._abstract
            self._layout = opt_state_layout(
                lambda s: parallel.zero_state_to_canonical(s, abstract),
                lambda s: parallel.zero_state_from_canonical(s, abstract, mesh, AXIS),
            )
        self._config = {
            "spec": self._spec,
            "devices": mesh.shape[AXIS],
            "zero_stage": zero_stage,
            "offload_optimizer": None if offloaded is None else offloaded.compute,
        }
        self._last_saved: int | None = latest

    @property
    def directory(self) -> str:
        """The checkpoint directory (absolute)."""
        return str(self._manager.directory)

    def restore(self) -> tuple[int, Any, Any] | None:
        """Restores the newest checkpoint that verifies, placed for this run's step.

        Returns:
            ``(step, params, opt_state)``, or None when resuming is off or there is no
            checkpoint yet.

        Raises:
            RunSetupError: the checkpoint belongs to a run with another spec (the message
                lists the differing fields).
            CheckpointCorruptError: no checkpoint verifies.
        """
        if not self._resume or self._manager.latest_step() is None:
            return None
        restored = self._manager.restore()
        config = restored.config if isinstance(restored.config, dict) else {}
        differences = _spec_differences(config.get("spec"), self._spec)
        if differences:
            raise RunSetupError(
                f"train_digits: checkpoint step {restored.step} in {self.directory} was "
                f"written by another run; resuming it would train a different model: "
                + "; ".join(differences)
                + _how_to_resume(config.get("spec"), self._spec)
            )
        state = restored.state
        if not isinstance(state, CheckpointState):
            raise RunSetupError(
                f"train_digits: checkpoint step {restored.step} in {self.directory} does not "
                f"hold a CheckpointState (got {type(state).__name__})"
            )
        position = state.data_position if isinstance(state.data_position, dict) else {}
        if position.get("batches") != restored.step:
            raise RunSetupError(
                f"train_digits: checkpoint step {restored.step} in {self.directory} records "
                f"the data position {state.data_position!r}; expected "
                f"{{'batches': {restored.step}}}"
            )
        if jax.tree.structure(state.opt_state) != self._opt_structure:
            raise RunSetupError(
                f"train_digits: the optimizer state in checkpoint step {restored.step} of "
                f"{self.directory} does not have this optimizer's structure"
            )
        params = parallel.put_on_mesh(state.params, self._mesh, PartitionSpec())
        if self._layout is not None:
            opt_state = self._layout.from_canonical(state).opt_state
        elif self._on_host:
            opt_state = state.opt_state  # place_state puts it on the host, whole
        else:
            opt_state = parallel.put_on_mesh(state.opt_state, self._mesh, PartitionSpec())
        opt_state = place_state(self._tx, opt_state)
        self._last_saved = restored.step
        return restored.step, params, opt_state

    def save(
        self, step: int, params: Any, opt_state: Any, loss: Any, *, force: bool = False
    ) -> bool:
        """Saves ``step`` when it is a multiple of ``save_every`` (or ``force``) and new.

        Args:
            step: the step the state is at.
            params, opt_state: the state as the step holds it (sharded or not).
            loss: the step's loss (stored as the checkpoint's metric), or None.
            force: save whatever the interval says (the end of the run, a preemption).

        Returns:
            True when a save was started.
        """
        if step == self._last_saved or not (force or step % self._save_every == 0):
            return False
        state = CheckpointState(params, opt_state, None, {"batches": step})
        metrics = None
        if loss is not None:
            value = float(np.asarray(jax.device_get(loss)))
            metrics = {"loss": value} if np.isfinite(value) else None
        self._manager.save(step, state, metrics, self._config, force=True, layout=self._layout)
        self._last_saved = step
        return True

    def close(self) -> int | None:
        """Waits for the save in flight and releases the manager; returns the newest step."""
        try:
            self._manager.wait()
        finally:
            self._manager.close()
        return self._last_saved
