"""``flax.training.train_state.TrainState`` that takes the one-pass step where it can."""

from __future__ import annotations

from typing import Any

from flax.training import train_state
from flax.training.train_state import OVERWRITE_WITH_GRADIENT

from scirs2_optim_jax.engine import host_step, one_pass_step

__all__ = ["TrainState"]


class TrainState(train_state.TrainState):
    """Flax's ``TrainState`` whose ``apply_gradients`` runs the one-pass step when it can.

    ``TrainState.create(apply_fn=..., params=..., tx=...)`` and the fields are Flax's own;
    a state of this class and one of Flax's hold the same pytrees, so a checkpoint of
    either restores into the other. ``apply_gradients(grads=...)`` takes the engine's
    one-pass step (:func:`scirs2_optim_jax.engine.one_pass_step`) where ``tx`` has one, and
    is Flax's ``apply_gradients`` otherwise (and for gradients that carry
    ``overwrite_with_gradient`` collections).

    Example:
        >>> import jax.numpy as jnp
        >>> import scirs2_optim_jax as so
        >>> state = TrainState.create(apply_fn=None, params={"w": jnp.ones(2)}, tx=so.adam(0.5))
        >>> state = state.apply_gradients(grads={"w": jnp.ones(2)})
        >>> int(state.step), [round(float(x), 4) for x in state.params["w"]]
        (1, [0.5, 0.5])
    """

    def apply_gradients(self, *, grads: Any, **kwargs: Any) -> TrainState:
        """``step + 1``, ``params`` and ``opt_state`` updated from ``grads``; ``kwargs``
        replaced, as Flax's ``apply_gradients``."""
        # offload(tx, compute="host"): the host step (outside jit); else the one-pass step.
        step = host_step(self.tx) or one_pass_step(self.tx)
        if step is None or (isinstance(grads, dict) and OVERWRITE_WITH_GRADIENT in grads):
            return super().apply_gradients(grads=grads, **kwargs)
        params, opt_state = step.apply(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **kwargs)
