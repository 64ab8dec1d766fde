"""``flax.nnx.Optimizer`` that takes the one-pass step where the transformation has one."""

from __future__ import annotations

from typing import Any

import jax
import optax
from flax import nnx
from flax.nnx.training.optimizer import to_opt_state

from scirs2_optim_jax.engine import HostStep, OnePassStep, host_step, one_pass_step

__all__ = ["STATE_LAYOUTS", "Optimizer", "check_state_layout"]

STATE_LAYOUTS = ("flax", "engine")


def check_state_layout(layout: Any) -> str:
    """``layout`` if it is one of :data:`STATE_LAYOUTS`, else a ``ValueError`` naming it."""
    if layout not in STATE_LAYOUTS:
        raise ValueError(f"state_layout must be one of {STATE_LAYOUTS}, got {layout!r}")
    return layout


class Optimizer(nnx.Optimizer):
    """``flax.nnx.Optimizer``, whose ``update`` runs the engine's one-pass step when it can.

    Same constructor (``Optimizer(model, tx, wrt=nnx.Param)``), same state variables
    (``step``, ``opt_state``), same ``update(model, grads)``. When ``tx`` has a one-pass
    step (:func:`scirs2_optim_jax.engine.one_pass_step`), the new parameters and state come
    from that step (one pass over memory on a CPU device, the chain elsewhere); otherwise
    this is ``nnx.Optimizer.update`` itself. Extra ``update`` arguments (``value=loss``,
    ...) go to ``tx.update`` through Flax's method, except for the Adam, AdamW and LAMB
    chains (clipped or not), none of whose transformations reads them.

    ``state_layout="flax"`` (the default) keeps ``opt_state`` exactly as
    ``nnx.Optimizer`` keeps it, so ``nnx.state(optimizer)`` saves and restores across the
    two classes. ``state_layout="engine"`` lets the engine pick the layout its step runs
    fastest from: where the CPU kernel runs Adam, AdamW or LAMB, Adam's moments become one
    flat buffer per 256 parameter leaves (elsewhere it is Flax's layout). A jitted step
    then passes two arrays per 256 leaves instead of two per leaf; on a model of many
    leaves that is most of what the step costs (docs/optimizers.md, "In Flax's training
    loops"). The numbers are the same;
    only their arrangement in ``opt_state`` differs, so convert with
    :meth:`set_state_layout` before exchanging checkpoints with ``nnx.Optimizer``.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import scirs2_optim_jax as so
        >>> loss = lambda m: jnp.sum(m(jnp.ones((1, 2))) ** 2)
        >>> ours, theirs = nnx.Linear(2, 1, rngs=nnx.Rngs(0)), nnx.Linear(2, 1, rngs=nnx.Rngs(0))
        >>> ours_opt = Optimizer(ours, so.adamw(0.01), wrt=nnx.Param)
        >>> flax_opt = nnx.Optimizer(theirs, so.adamw(0.01), wrt=nnx.Param)
        >>> for _ in range(5):
        ...     _ = ours_opt.update(ours, nnx.grad(loss)(ours))
        ...     _ = flax_opt.update(theirs, nnx.grad(loss)(theirs))
        >>> bool(jnp.allclose(ours.kernel[...], theirs.kernel[...])), int(ours_opt.step[...])
        (True, 5)
    """

    def __init__(
        self,
        model: Any,
        tx: optax.GradientTransformation,
        *,
        wrt: Any,
        state_layout: str = "flax",
        **kwargs: Any,
    ) -> None:
        check_state_layout(state_layout)
        super().__init__(model, tx, wrt=wrt, **kwargs)
        if state_layout != "flax":
            self.set_state_layout(model, state_layout)

    def _params(self, model: Any) -> Any:
        graph = {"graph": self.graph} if hasattr(self, "graph") else {}
        return nnx.state(model, self.wrt, **graph)

    def set_state_layout(self, model: Any, state_layout: str) -> None:
        """Rearranges ``opt_state`` into ``state_layout`` (the numbers are unchanged).

        ``"flax"``: the layout ``nnx.Optimizer(model, tx, wrt=...)`` holds, with the same
        variable types, so ``nnx.state(optimizer)`` saves into and restores from Flax's
        class. ``"engine"``: the layout the engine's step runs fastest from on this
        backend (grouped moments where the CPU kernel runs, else Flax's).

        Example:
            >>> import jax.numpy as jnp
            >>> from flax import nnx
            >>> import scirs2_optim_jax as so
            >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
            >>> opt = Optimizer(model, so.adam(0.1), wrt=nnx.Param, state_layout="engine")
            >>> opt.set_state_layout(model, "flax")
            >>> sorted(opt.opt_state[0].mu)
            ['bias', 'kernel']
        """
        check_state_layout(state_layout)
        step = one_pass_step(self.tx)
        if step is None:
            return
        params = self._params(model)
        pure_params = nnx.as_pure(params)
        state = nnx.as_pure(self.opt_state)
        try:
            if state_layout == "engine":
                grouped = None if step.grouped is None else step.grouped(state, pure_params)
                if grouped is not None and grouped is not state:
                    self.opt_state = nnx.data(to_opt_state(grouped))
                return
            canonical = step.to_canonical(state, pure_params)
        except ValueError as error:
            raise ValueError(
                "Optimizer.set_state_layout: the parameters of model (filtered by wrt) do "
                f"not match the optimizer state ({error})"
            ) from error
        if canonical is state:
            return
        # Flax's own variable types and metadata, then the values.
        flax_state = to_opt_state(self.tx.init(params))
        nnx.update(flax_state, nnx.state(canonical))
        self.opt_state = nnx.data(flax_state)

    def update(self, model: Any, grads: Any, /, **kwargs: Any) -> optax.Updates:
        """Updates the parameters of ``model`` and the state from ``grads``.

        Returns:
            The updates (new minus old parameters), as ``nnx.Optimizer.update`` returns
            them; unused under ``jit`` they cost nothing (XLA drops them).
        """
        # offload(tx, compute="host"): the host step (outside jit); else the one-pass step.
        step = host_step(self.tx) or one_pass_step(self.tx)
        # Extra arguments are for tx.update, except where no part of the chain reads them:
        # the chains that have a grouped layout (Adam, AdamW, LAMB, clipped or not).
        takes_kwargs = isinstance(step, OnePassStep) and step.grouped is not None
        if step is None or (kwargs and not takes_kwargs):
            return super().update(model, grads, **kwargs)
        graph = {"graph": self.graph} if hasattr(self, "graph") else {}
        params = nnx.as_pure(nnx.state(model, self.wrt, **graph))
        grad_arrays = nnx.as_pure(nnx.state(grads, self.wrt, **graph))
        opt_state = nnx.as_pure(self.opt_state)
        if isinstance(step, HostStep):  # the state is replaced below: updated in place
            new_params, new_opt_state = step.apply(
                grad_arrays, opt_state, params, donate_state=True
            )
        else:
            new_params, new_opt_state = step.apply(grad_arrays, opt_state, params)
        nnx.update(model, new_params)
        nnx.update(self.opt_state, nnx.state(new_opt_state, **graph))
        self.step[...] += 1
        return jax.tree.map(lambda new, old: new - old, new_params, params)
