"""``flax.nnx.Optimizer`` that takes the one-pass step where the transformation has one."""

from __future__ import annotations

from typing import Any

import jax
import optax
from flax import nnx

from scirs2_optim_jax.engine import HostStep, host_step, one_pass_step

__all__ = ["Optimizer"]


class Optimizer(nnx.Optimizer):
    """``flax.nnx.Optimizer``, whose ``update`` runs the engine's one-pass step when it can.

    Same constructor (``Optimizer(model, tx, wrt=nnx.Param)``), same state variables
    (``step``, ``opt_state``), same ``update(model, grads)``. When ``tx`` has a one-pass
    step (:func:`scirs2_optim_jax.engine.one_pass_step`) and no extra arguments are passed,
    the new parameters and state come from that step (one pass over memory on a CPU device,
    the chain elsewhere); otherwise this is ``nnx.Optimizer.update`` itself.

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

    def update(self, model: Any, grads: Any, /, **kwargs: Any) -> optax.Updates:
        """Updates the parameters of ``model`` and the state from ``grads``.

        Returns:
            The updates (new minus old parameters), as ``nnx.Optimizer.update`` returns
            them; unused under ``jit`` they cost nothing (XLA drops them).
        """
        # offload(tx, compute="host"): the host step (outside jit); else the one-pass step.
        step = None if kwargs else (host_step(self.tx) or one_pass_step(self.tx))
        if step is None:
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
