"""Which steps a run keeps, and when it saves: the retention rules as Orbax policies.

The rules are optional and combine as "keep if any rule keeps it"; with none set every
checkpoint is kept. ``keep_last`` keeps the newest steps, ``keep_every`` every step that is
a multiple of it, ``keep_best`` the best steps by the metric ``best_metric`` (``best_mode``
"min" or "max"); the newest checkpoint is never deleted. Orbax applies them after each
commit: a step it drops is first renamed into :data:`DELETED` (atomic), so a crash
mid-deletion never leaves a half-deleted directory that looks like a committed step; the
manager then empties it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

__all__ = ["DELETED", "Retention", "orbax_options"]

DELETED = ".deleted"


class Retention(NamedTuple):
    """The retention rules of a manager, already checked (module doc).

    Attributes:
        keep_last, keep_every, keep_best: integers >= 1, or None for a rule not set.
        best_metric: the metric ``keep_best`` ranks by; None unless ``keep_best`` is set.
        best_mode: "min" or "max".

    Example:
        >>> Retention(keep_last=3, keep_every=None, keep_best=None, best_metric=None,
        ...           best_mode="min").keep_last
        3
    """

    keep_last: int | None
    keep_every: int | None
    keep_best: int | None
    best_metric: str | None
    best_mode: str


def orbax_options(
    interval: int, retention: Retention, async_save: bool, read_only: bool
) -> ocp.CheckpointManagerOptions:
    """Orbax's options for the save interval and the retention rules.

    Args:
        interval: a save is written only at steps that are multiples of it (unless forced).
        retention: the rules (module doc).
        async_save: Orbax writes in its own background thread; False when the manager calls
            it from its own (:mod:`~scirs2_optim_jax.checkpoint.writer`), or for a save
            that blocks until committed.
        read_only: options that list, verify and restore only (the rules do not matter).

    Example:
        >>> keep_3 = Retention(3, None, None, None, "min")
        >>> options = orbax_options(10, keep_3, async_save=False, read_only=False)
        >>> options.todelete_subdir, options.enable_async_checkpointing
        ('.deleted', False)
    """
    if read_only:
        # Lists, verifies and restores only: creates, cleans and deletes nothing.
        return ocp.CheckpointManagerOptions(
            save_interval_steps=0, read_only=True, create=False, save_root_metadata=False
        )
    keep_last, keep_every, keep_best, best_metric, best_mode = retention
    rules: list[Any] = []
    if keep_last is not None or keep_every is not None or keep_best is not None:
        rules.append(policies.LatestN(n=max(keep_last or 1, 1)))
    if keep_every is not None:
        rules.append(policies.EveryNSteps(interval_steps=keep_every))
    if keep_best is not None:
        rules.append(
            policies.BestN(
                get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min", n=keep_best
            )
        )
    return ocp.CheckpointManagerOptions(
        save_decision_policy=policies.FixedIntervalPolicy(interval),
        preservation_policy=policies.AnyPreservationPolicy(rules) if rules else None,
        # Orbax writes the metrics it ranks by only when best_fn is set.
        best_fn=(lambda m: m[best_metric]) if keep_best is not None else None,
        best_mode=best_mode,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        todelete_subdir=DELETED,
    )
