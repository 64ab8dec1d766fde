"""``flax.training.train_state.TrainState`` that takes the one-pass step where it can."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax.training import train_state
from flax.training.train_state import OVERWRITE_WITH_GRADIENT

from scirs2_optim_jax.engine import host_step, one_pass_step
from scirs2_optim_jax.flax.optimizer import check_state_layout

__all__ = ["TrainState"]


def _overwrites(tree: Any) -> bool:
    """Whether ``tree`` (a dict or ``FrozenDict``) has an ``overwrite_with_gradient``
    collection, which Flax's ``apply_gradients`` treats apart."""
    return isinstance(tree, Mapping) and OVERWRITE_WITH_GRADIENT in tree


class TrainState(train_state.TrainState):
    """Flax's ``TrainState`` whose ``apply_gradients`` runs the one-pass step when it can.

    ``TrainState.create(apply_fn=..., params=..., tx=...)`` and the fields are Flax's own;
    a state of this class and one of Flax's hold the same pytrees, so a checkpoint of
    either restores into the other. ``apply_gradients(grads=...)`` takes the engine's
    one-pass step (:func:`scirs2_optim_jax.engine.one_pass_step`) where ``tx`` has one, and
    is Flax's ``apply_gradients`` otherwise (and for gradients that carry
    ``overwrite_with_gradient`` collections).

    ``create(..., state_layout="engine")`` (or :meth:`with_state_layout`) lets the engine
    pick the layout of ``opt_state`` its step runs fastest from, as
    :class:`~scirs2_optim_jax.flax.Optimizer` does: grouped Adam moments where the CPU
    kernel runs, else Flax's. ``with_state_layout("flax")`` gives back the state Flax's
    class holds (for checkpoints read by it).

    Example:
        >>> import jax.numpy as jnp
        >>> import scirs2_optim_jax as so
        >>> state = TrainState.create(apply_fn=None, params={"w": jnp.ones(2)}, tx=so.adam(0.5))
        >>> state = state.apply_gradients(grads={"w": jnp.ones(2)})
        >>> int(state.step), [round(float(x), 4) for x in state.params["w"]]
        (1, [0.5, 0.5])
    """

    @classmethod
    def create(
        cls, *, apply_fn: Any, params: Any, tx: Any, state_layout: str = "flax", **kwargs: Any
    ) -> TrainState:
        """Flax's ``TrainState.create``; ``state_layout``: ``"flax"`` (the default, the
        state Flax's class holds) or ``"engine"`` (see the class)."""
        check_state_layout(state_layout)
        state = super().create(apply_fn=apply_fn, params=params, tx=tx, **kwargs)
        return state.with_state_layout(state_layout)

    def with_state_layout(self, state_layout: str) -> TrainState:
        """This state with ``opt_state`` in ``state_layout`` (the numbers unchanged).

        Example:
            >>> import jax.numpy as jnp
            >>> import scirs2_optim_jax as so
            >>> params = {"w": jnp.ones(2)}
            >>> s = TrainState.create(apply_fn=None, params=params, tx=so.adam(0.5),
            ...                       state_layout="engine")
            >>> s.with_state_layout("flax").opt_state[0].mu["w"].tolist()
            [0.0, 0.0]
        """
        check_state_layout(state_layout)
        step = one_pass_step(self.tx)
        # With an overwrite_with_gradient collection Flax's apply_gradients updates part
        # of the parameters through tx.update: that state keeps Flax's layout.
        if step is None or _overwrites(self.params):
            return self
        try:
            if state_layout == "flax":
                opt_state = step.to_canonical(self.opt_state, self.params)
            else:
                grouped = step.grouped and step.grouped(self.opt_state, self.params)
                opt_state = self.opt_state if grouped is None else grouped
        except ValueError as error:
            raise ValueError(
                f"TrainState.with_state_layout: params and opt_state do not match ({error})"
            ) from error
        return self if opt_state is self.opt_state else self.replace(opt_state=opt_state)

    def apply_gradients(self, *, grads: Any, **kwargs: Any) -> TrainState:
        """``step + 1``, ``params`` and ``opt_state`` updated from ``grads``; ``kwargs``
        replaced, as Flax's ``apply_gradients``."""
        # offload(tx, compute="host"): the host step (outside jit); else the one-pass step.
        step = host_step(self.tx) or one_pass_step(self.tx)
        if step is None or _overwrites(grads):
            return super().apply_gradients(grads=grads, **kwargs)
        params, opt_state = step.apply(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **kwargs)
