"""Flax drop-ins that take the engine's one-pass step: :class:`Optimizer`, :class:`TrainState`.

``scirs2_optim_jax.flax.Optimizer`` is ``flax.nnx.Optimizer`` and
``scirs2_optim_jax.flax.TrainState`` is ``flax.training.train_state.TrainState``, with one
difference: where the transformation has a one-pass step
(:func:`scirs2_optim_jax.engine.one_pass_step`: ``adam``, ``adamw``, ``lamb``, clipped
chains of them, master weights), ``update`` / ``apply_gradients`` take it instead of
``tx.update`` + ``optax.apply_updates``. The state is the transformation's own, so results,
checkpoints and every other tool see no difference; with any other transformation they are
Flax's classes. With ``state_layout="engine"`` the engine keeps Adam's moments in its
grouped layout where its CPU kernel runs (fewer arrays for a jitted step to pass), and
``Optimizer.set_state_layout`` / ``TrainState.with_state_layout`` give Flax's layout back.
Needs the ``[flax]`` extra.
"""

from scirs2_optim_jax.flax.optimizer import Optimizer
from scirs2_optim_jax.flax.train_state import TrainState

__all__ = ["Optimizer", "TrainState"]
