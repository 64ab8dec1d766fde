"""The engine's one seam: :func:`one_pass_step` and :func:`apply_gradients`.

The core's transformations say what they compute (:mod:`scirs2_optim_jax.transforms.description`).
:func:`one_pass_step` reads that description and, for the chains the engine can run in one
pass, returns a :class:`OnePassStep`: ``apply(grads, state, params)`` gives the new
parameters and state, equal to ``tx.update`` followed by ``optax.apply_updates``, with the
same state structure. Recognised:

- ``adam``, ``adamw``, ``lamb`` (or any :func:`~scirs2_optim_jax.transforms.chain` of
  ``scale_by_adam -> [add_decayed_weights] -> [scale_by_trust_ratio] ->
  scale_by_learning_rate``): one kernel pass (:mod:`scirs2_optim_jax.engine.adam_family`);
- ``chain(clip_by_global_norm(...), ..., <one of those>)``: the clipping factors folded
  into that pass (one read of the gradients for the norm, none to scale them);
- ``with_master_weights(<one of those>)``: master, moments and low-precision parameters
  written in the same pass;
- ``offload(<one of those>, compute="device")``: the same pass, the state streamed from
  host memory and back around it. (``compute="host"`` is not a traced step: its
  :class:`~scirs2_optim_jax.engine.offload.HostStep` runs between device programs, and
  :func:`apply_gradients` calls it.)

Anything else gets None, and :func:`apply_gradients` runs ``tx.update`` +
``optax.apply_updates``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.engine import adam_family as af
from scirs2_optim_jax.engine.kernels import sum_of_squares
from scirs2_optim_jax.engine.memory import to_memory
from scirs2_optim_jax.precision import MasterWeightsState, cast_floating, round_to_params
from scirs2_optim_jax.transforms.clipping import clip_factor
from scirs2_optim_jax.transforms.description import (
    Chain,
    ClipByGlobalNorm,
    MasterWeights,
    Offload,
    describe_of,
)
from scirs2_optim_jax.transforms.grouped import GroupedAdamState
from scirs2_optim_jax.transforms.norms import global_norm

__all__ = ["OnePassStep", "apply_gradients", "one_pass_step"]

Apply = Callable[..., tuple[Any, Any]]
Convert = Callable[[Any, Any], Any]


def _same_state(state: Any, params: Any) -> Any:
    del params
    return state


@dataclasses.dataclass(frozen=True)
class OnePassStep:
    """How the engine runs one transformation's step in one pass.

    Attributes:
        name: the transformation's name, for messages (``"adamw"``).
        apply: ``apply(grads, state, params, grad_scale=None) -> (new_params, new_state)``,
            equal to ``tx.update`` + ``optax.apply_updates`` for the gradients multiplied
            by ``grad_scale`` (a scalar) when given.
        to_canonical: ``(state, params) -> state`` in the chain's own layout, which
            checkpoints store: the identity, except for a state in the grouped layout.
        from_canonical: the inverse of ``to_canonical`` (the identity: ``apply`` takes
            the chain's own layout).
        apply_master: for Adam and AdamW, the master-weights pass
            ``(grads, state, master, params) -> (new_params, new_master, new_state)``, or
            None where it does not apply to these trees; None for other chains.
        grouped: for Adam, AdamW and LAMB (clipped or not), ``(state, params) -> state``
            with the moments in the grouped layout (one flat buffer per 256 leaves,
            :func:`~scirs2_optim_jax.engine.adam_family.group_moments`), or None where the
            kernel does not run on these parameters; None for other steps. ``apply`` takes
            either layout and returns the one it was given. The grouped layout has two
            arrays per 256 leaves instead of two per leaf, so a step that carries its
            state through ``jit`` (Flax's) has fewer arrays to pass in and out.
    """

    name: str
    apply: Apply
    to_canonical: Convert = _same_state
    from_canonical: Convert = _same_state
    apply_master: Callable[..., Any] | None = None
    grouped: Convert | None = None


def one_pass_step(tx: optax.GradientTransformation) -> OnePassStep | None:
    """The engine's one-pass form of ``tx``, or None where it has none.

    Example:
        >>> import optax
        >>> import scirs2_optim_jax as so
        >>> one_pass_step(so.adamw(1e-3)).name
        'adamw'
        >>> one_pass_step(optax.adamw(1e-3)) is None
        True
    """
    described = describe_of(tx)
    if isinstance(described, Offload):
        return _streamed_step(described) if described.compute == "device" else None
    if isinstance(described, MasterWeights):
        return _master_weights_step(tx, described)
    if isinstance(described, Chain):
        plan = af.match_adam_family(described)
        if plan is not None:
            return _adam_family_step(tx, described, plan)
        return _clipped_step(tx, described)
    return None


def apply_gradients(
    tx: optax.GradientTransformation, grads: Any, state: Any, params: Any
) -> tuple[Any, Any]:
    """``(new_params, new_state)``: the one-pass step where ``tx`` has one
    (:func:`one_pass_step`), else ``tx.update`` followed by ``optax.apply_updates``.

    For ``offload(tx, compute="host")`` it is the host step
    (:class:`~scirs2_optim_jax.engine.offload.HostStep`): called outside ``jit``, its
    arguments left intact.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> tx = optax.sgd(0.5)
        >>> params, state = apply_gradients(tx, {"w": jnp.ones(2)}, tx.init({}), {"w": jnp.ones(2)})
        >>> params["w"].tolist()
        [0.5, 0.5]
    """
    described = describe_of(tx)
    if isinstance(described, Offload) and described.compute == "host":
        return tx.host_step.apply(grads, state, params)  # type: ignore[attr-defined]
    step = one_pass_step(tx)
    if step is not None:
        return step.apply(grads, state, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def _scaled(grads: Any, grad_scale: Any) -> Any:
    if grad_scale is None:
        return grads
    return jax.tree.map(lambda g: g * grad_scale.astype(g.dtype), grads)


def _adam_family_step(
    tx: optax.GradientTransformation, chain: Chain, plan: af.AdamFamilyPlan
) -> OnePassStep:
    parts = chain.parts

    def to_canonical(state: Any, params: Any) -> Any:
        if not isinstance(state[0], GroupedAdamState):
            return state
        return (af.ungroup_moments(state[0], params), *state[1:])

    def grouped(state: Any, params: Any) -> Any:
        if isinstance(state[0], GroupedAdamState):
            return state
        float32 = params is not None and af.all_float32(params, state[0].mu, state[0].nu)
        if not af.kernel_applies(plan.name, plan.fused, float32, "params and moments"):
            return None
        return (af.group_moments(state[0], params), *state[1:])

    def apply(grads: Any, state: Any, params: Any, grad_scale: Any = None) -> tuple[Any, Any]:
        if not af.uses_kernel(plan, params, grads, state[0]):
            # A grouped state where the kernel does not run (other devices, other dtypes):
            # the chain's own step on the chain's layout, the result grouped again.
            layout = isinstance(state[0], GroupedAdamState)
            updates, state = tx.update(
                _scaled(grads, grad_scale), to_canonical(state, params), params
            )
            if layout:
                state = (af.group_moments(state[0], params), *state[1:])
            return optax.apply_updates(params, updates), state
        scale = 1.0 if grad_scale is None else grad_scale
        new_params, new_state, _ = af.kernel_step(
            plan, parts, grads, state, params, apply=True, grad_scale=scale
        )
        return new_params, new_state

    def apply_master(grads: Any, state: Any, master: Any, params: Any) -> Any:
        if not af.master_pass_applies(plan, grads, state, master, params):
            return None
        v.check_tree_matches(plan.name, params, master, tree_name="params", ref_name="master")
        new_master, new_state, new_params = af.kernel_step(
            plan, parts, grads, state, master, apply=True, low_params=params
        )
        return new_params, new_master, new_state

    return OnePassStep(plan.name, apply, to_canonical, apply_master=apply_master, grouped=grouped)


def _clip_factor(clip: ClipByGlobalNorm, grads: Any) -> jax.Array:
    """The clipping factor, the norm read once by the kernel where it applies."""
    leaves = [g for g in jax.tree.leaves(grads) if g is not None]
    float32 = all(jnp.result_type(g) == jnp.float32 for g in leaves)
    if (
        clip.axis_name is None
        and leaves
        and af.kernel_applies("clip_by_global_norm", clip.fused, float32, "gradients")
    ):
        # XLA:CPU reduces each leaf in its own single-threaded loop: 3.4 ms for 10M
        # parameters here, against 1.6-2.3 ms for the kernel (docs/benchmarks.md).
        norm = jnp.sqrt(jnp.sum(sum_of_squares(leaves)))
    else:
        norm = global_norm(grads, clip.axis_name)
    return clip_factor(norm, clip.max_norm)


def _clipped_step(tx: optax.GradientTransformation, chain: Chain) -> OnePassStep | None:
    """``chain(clip_by_global_norm, ..., last)`` with ``last`` one-pass: factors folded."""
    *scalers, last = chain.parts
    clips = [describe_of(t) for t in scalers]
    last_step = one_pass_step(last)
    if last_step is None or not clips or not all(isinstance(c, ClipByGlobalNorm) for c in clips):
        return None

    def apply(grads: Any, state: tuple[Any, ...], params: Any, grad_scale: Any = None) -> Any:
        scale = grad_scale  # None until a factor exists: the first norm reads grads as they are
        for clip in clips:
            factor = _clip_factor(clip, _scaled(grads, scale)).astype(jnp.float32)
            scale = factor if scale is None else scale * factor
        new_params, last_state = last_step.apply(grads, state[-1], params, grad_scale=scale)
        # Clipping is stateless (EmptyState), so only the last slot changes.
        return new_params, (*state[:-1], last_state)

    def with_last(state: tuple[Any, ...], last_state: Any) -> tuple[Any, ...]:
        # The same object when the last slot is unchanged: callers test for "no conversion".
        return state if last_state is state[-1] else (*state[:-1], last_state)

    def to_canonical(state: tuple[Any, ...], params: Any) -> tuple[Any, ...]:
        return with_last(state, last_step.to_canonical(state[-1], params))

    def from_canonical(state: tuple[Any, ...], params: Any) -> tuple[Any, ...]:
        return with_last(state, last_step.from_canonical(state[-1], params))

    grouped = None
    if last_step.grouped is not None:
        last_grouped = last_step.grouped

        def grouped(state: tuple[Any, ...], params: Any) -> tuple[Any, ...] | None:
            last_state = last_grouped(state[-1], params)
            return None if last_state is None else with_last(state, last_state)

    del tx
    return OnePassStep(last_step.name, apply, to_canonical, from_canonical, grouped=grouped)


def _streamed_step(described: Offload) -> OnePassStep | None:
    """``offload(inner, compute="device")``: the inner's one-pass step, the state moved
    from host memory to the device before it and back after it, in the same program."""
    inner = one_pass_step(described.inner)
    if inner is None:
        return None

    def apply(grads: Any, state: Any, params: Any, grad_scale: Any = None) -> tuple[Any, Any]:
        new_params, state = inner.apply(
            grads, to_memory(state, "device"), params, grad_scale=grad_scale
        )
        return new_params, to_memory(state, "host")

    return OnePassStep(inner.name, apply, inner.to_canonical, inner.from_canonical)


def _all_floating(tree: Any) -> bool:
    return all(jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in jax.tree.leaves(tree))


def _master_weights_step(tx: optax.GradientTransformation, described: MasterWeights) -> OnePassStep:
    """``with_master_weights(inner)``: the parameters become the rounded master directly
    (no update tree to write out and add), the master written by the inner one-pass step
    where ``inner`` has one, or by the kernel's master-weights mode, which also writes the
    low-precision parameters in the same pass."""
    inner = described.inner
    inner_step = one_pass_step(inner)
    fn = "with_master_weights"

    def new_master(grads: Any, state: Any) -> tuple[Any, Any]:
        cast = cast_floating(grads, described.master_dtype)
        same_dtype = all(
            jnp.result_type(c) == jnp.result_type(g)
            for c, g in zip(jax.tree.leaves(cast), jax.tree.leaves(grads), strict=True)
        )
        # Not when the gradients had to be cast: the cast would be written out as a fresh
        # buffer every step, which costs more than the pass it saves (measured, config g).
        if inner_step is not None and same_dtype and _all_floating(state.master):
            return inner_step.apply(cast, state.inner_state, state.master)
        updates, inner_state = inner.update(cast, state.inner_state, state.master)
        master = jax.tree.map(
            lambda m, u: (m + u.astype(m.dtype)) if jnp.issubdtype(m.dtype, jnp.floating) else m,
            state.master,
            updates,
        )
        return master, inner_state

    def apply(grads: Any, state: Any, params: Any, grad_scale: Any = None) -> tuple[Any, Any]:
        if params is None:
            raise ValueError(f"{fn}: update needs params (the low-precision parameters)")
        v.check_tree_matches(fn, grads, state.master, ref_name="master weights")
        grads = _scaled(grads, grad_scale)
        if inner_step is not None and inner_step.apply_master is not None:
            done = inner_step.apply_master(grads, state.inner_state, state.master, params)
            if done is not None:
                new_params, master, inner_state = done
                return new_params, MasterWeightsState(master=master, inner_state=inner_state)
        master, inner_state = new_master(grads, state)
        new_params = round_to_params(master, params)
        return new_params, MasterWeightsState(master=master, inner_state=inner_state)

    del tx
    return OnePassStep(fn, apply)
