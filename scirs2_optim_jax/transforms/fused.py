"""Adam, AdamW and LAMB as one-pass fused steps on CPU, same state and results as the chains.

On XLA:CPU the chained transforms compile to several loops per leaf (AdamW: three, moving 40
bytes per parameter where 28 would do). :func:`fused_adam_family` returns a transformation
with exactly the state of the corresponding chain (``adam``, ``adamw`` or ``lamb``), whose
``update`` runs the moments, bias correction, weight decay, trust ratio and learning rate in
one kernel (:mod:`scirs2_optim_jax.kernels`). Its ``update`` also carries an ``apply``
method that writes the new parameters in the same pass; :func:`apply_gradients` uses it when
present and falls back to ``update`` + ``optax.apply_updates`` otherwise.

The kernel runs when every parameter, gradient and moment is float32 and, with
``fused=None`` (the default), when JAX's default backend is the CPU with a single device and
the kernels built on this machine. Otherwise the chain itself runs, so results never depend
on which path was taken beyond float rounding (the parity tests hold them to rtol 1e-6).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.kernels import fused_step, group_bounds, hyper_vector, load_kernels
from scirs2_optim_jax.transforms.adaptive import ScaleByAdamState
from scirs2_optim_jax.transforms.masking import Mask, mask_leaves
from scirs2_optim_jax.transforms.moments import bias_correction, safe_increment
from scirs2_optim_jax.transforms.weight_decay import add_decayed_weights

__all__ = [
    "FactorUpdate",
    "FusedUpdate",
    "GroupedAdamState",
    "apply_gradients",
    "chain",
    "fused_adam_family",
    "kernel_applies",
]


class GroupedAdamState(NamedTuple):
    """Adam's state with the moments in the grouped layout (``state_layout="grouped"``).

    ``mu`` and ``nu`` hold one flat float32 buffer per group of leaves
    (:func:`~scirs2_optim_jax.kernels.group_bounds`), the group's leaves back to back in
    ``jax.tree.leaves`` order. ``update.to_canonical`` turns it into a ``ScaleByAdamState``.
    """

    count: jax.Array
    mu: tuple[jax.Array, ...]
    nu: tuple[jax.Array, ...]


class FusedUpdate:
    """An optax ``update`` function that can also apply the step to the parameters itself.

    Calling it is the optax protocol: ``updates, state = update(grads, state, params)``.
    ``apply(grads, state, params, grad_scale=None)`` returns ``(new_params, new_state)`` in
    one pass, equal to ``optax.apply_updates(params, updates)`` with the same state, for the
    gradients multiplied by ``grad_scale`` (a scalar) when it is given.

    ``to_canonical(state, params)`` and ``from_canonical(state, params)`` convert the state
    to and from the chain's own state (the canonical layout that checkpoints store); with the
    tree layout both return the state unchanged.

    ``apply_master(grads, state, master, params)``, where given (Adam and AdamW), is the
    step of :func:`~scirs2_optim_jax.precision.with_master_weights` in one pass: ``master``
    is the float32 copy of ``params`` (bfloat16 or float32 leaves), and it returns
    ``(new_params, new_master, new_state)``, or None where that pass does not apply to these
    trees.
    """

    def __init__(
        self,
        update: Callable[..., tuple[Any, Any]],
        apply: Callable[..., tuple[Any, Any]],
        to_canonical: Callable[[Any, Any], Any],
        from_canonical: Callable[[Any, Any], Any],
        apply_master: Callable[..., Any] | None = None,
    ) -> None:
        self._update = update
        self.apply = apply
        self.to_canonical = to_canonical
        self.from_canonical = from_canonical
        self.apply_master = apply_master

    def __call__(
        self, updates: optax.Updates, state: Any, params: optax.Params | None = None, **extra: Any
    ) -> tuple[optax.Updates, Any]:
        del extra  # accepted and ignored, like optax's transformations without extra args
        return self._update(updates, state, params)


class FactorUpdate:
    """An optax ``update`` function that multiplies the whole tree by one scalar.

    ``factor(updates, state, params)`` returns ``(factor, new_state)`` without touching the
    tree, so that :func:`chain` can hand the factor to a fused step instead of writing the
    scaled gradients out (global-norm clipping: one read of the gradients, not three passes).
    """

    def __init__(self, factor: Callable[[Any, Any, Any], tuple[jax.Array, Any]]) -> None:
        self.factor = factor

    def __call__(
        self, updates: optax.Updates, state: Any, params: optax.Params | None = None, **extra: Any
    ) -> tuple[optax.Updates, Any]:
        del extra
        factor, state = self.factor(updates, state, params)
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state


def chain(*transforms: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``optax.chain`` that keeps a fused one-pass step available to :func:`apply_gradients`.

    When the last transformation has a fused ``apply`` (``adam``, ``adamw``, ``lamb`` on the
    CPU) and every one before it scales the tree by a scalar (``clip_by_global_norm``), the
    chain's ``update`` gets an ``apply`` that folds those factors into the fused step.
    Otherwise this is exactly ``optax.chain``.

    Example:
        >>> import jax.numpy as jnp
        >>> from scirs2_optim_jax import optimizers
        >>> from scirs2_optim_jax.transforms import clip_by_global_norm
        >>> tx = chain(clip_by_global_norm(1.0), optimizers.sgd(1.0))
        >>> params = {"w": jnp.zeros(2)}
        >>> new, _ = apply_gradients(tx, {"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
        >>> [round(float(x), 4) for x in new["w"]]
        [-0.6, -0.8]
    """
    combined = optax.chain(*transforms)
    *scalers, last = transforms
    last_apply = getattr(last.update, "apply", None)
    if last_apply is None or not all(hasattr(t.update, "factor") for t in scalers):
        return combined

    def apply(grads: Any, state: tuple[Any, ...], params: Any) -> tuple[Any, Any]:
        scale = jnp.ones([], jnp.float32)
        new_state = list(state)
        for i, t in enumerate(scalers):
            scaled = jax.tree.map(lambda g, s=scale: g * s.astype(g.dtype), grads)
            factor, new_state[i] = t.update.factor(scaled, state[i], params)
            scale = scale * factor.astype(jnp.float32)
        new_params, new_state[-1] = last_apply(grads, state[-1], params, grad_scale=scale)
        return new_params, tuple(new_state)

    def to_canonical(state: tuple[Any, ...], params: Any) -> tuple[Any, ...]:
        return (*state[:-1], last.update.to_canonical(state[-1], params))

    def from_canonical(state: tuple[Any, ...], params: Any) -> tuple[Any, ...]:
        return (*state[:-1], last.update.from_canonical(state[-1], params))

    return optax.GradientTransformationExtraArgs(
        combined.init, FusedUpdate(combined.update, apply, to_canonical, from_canonical)
    )


def apply_gradients(
    tx: optax.GradientTransformation, grads: Any, state: Any, params: Any
) -> tuple[Any, Any]:
    """``(new_params, new_state)``: the fused one-pass step when ``tx`` has one, else
    ``tx.update`` followed by ``optax.apply_updates``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> tx = optax.sgd(0.5)
        >>> params, state = apply_gradients(tx, {"w": jnp.ones(2)}, tx.init({}), {"w": jnp.ones(2)})
        >>> params["w"].tolist()
        [0.5, 0.5]
    """
    apply = getattr(tx.update, "apply", None)
    if apply is not None:
        return apply(grads, state, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def _leaves_are_float32(*trees: Any) -> bool:
    return all(
        getattr(leaf, "dtype", None) == jnp.float32
        for tree in trees
        for leaf in jax.tree.leaves(tree)
    )


def kernel_applies(name: str, fused: bool | None, float32: bool, what: str) -> bool:
    """Whether a transformation built with ``fused`` runs its CPU kernel on these leaves.

    ``fused=None`` takes the kernel where it applies: float32 leaves (``float32``), JAX's
    default backend the CPU with a single device, and the kernels built on this machine.
    ``fused=True`` requires it: float32 leaves and the CPU backend, else an error naming
    ``name`` and ``what`` the leaves are. ``fused=False`` never takes it.

    Raises:
        ValueError: ``fused=True`` with leaves that are not float32 or a non-CPU backend.
        RuntimeError: ``fused=True`` and the kernels could not be built here.

    Example:
        >>> kernel_applies("adamw", False, True, "params")
        False
    """
    if fused is False:
        return False
    if not float32:
        if fused:
            raise ValueError(
                f"{name}: fused=True needs float32 {what}; "
                "pass fused=None to fall back where they are not"
            )
        return False
    if fused is None and (jax.default_backend() != "cpu" or jax.device_count() != 1):
        return False
    if fused and jax.default_backend() != "cpu":
        raise ValueError(
            f"{name}: fused=True runs on the CPU backend only, "
            f"got {jax.default_backend()!r}; pass fused=None"
        )
    if load_kernels() is None:
        if fused:
            raise RuntimeError(
                f"{name}: fused=True but the CPU kernels are not available; see the log"
            )
        return False
    return True


def _flat_groups(leaves: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
    return tuple(
        jnp.concatenate([jnp.ravel(x) for x in leaves[start:end]])
        for start, end in group_bounds(len(leaves))
    )


def _split_groups(flats: Sequence[jax.Array], like: Sequence[Any]) -> list[jax.Array]:
    leaves = []
    for (start, end), flat in zip(group_bounds(len(like)), flats, strict=True):
        offset = 0
        for x in like[start:end]:
            size = int(np.prod(jnp.shape(x)))
            leaves.append(flat[offset : offset + size].reshape(jnp.shape(x)))
            offset += size
    return leaves


def fused_adam_family(
    name: str,
    parts: Sequence[optax.GradientTransformation],
    *,
    kind: str,
    b1: Any,
    b2: Any,
    eps: Any,
    eps_root: Any,
    weight_decay: Any,
    mask: Mask,
    fused: bool | None,
    with_weight_decay: bool,
    state_layout: str = "tree",
) -> optax.GradientTransformationExtraArgs:
    """The chain of ``parts`` (``scale_by_adam``, [``add_decayed_weights``],
    [``scale_by_trust_ratio``], ``scale_by_learning_rate``) with a fused kernel path.

    Args:
        name: the alias, for error messages (``"adamw"``).
        parts: the transformations of the chain, whose states this one keeps.
        kind: ``"adam"`` or ``"lamb"``.
        b1, b2, eps, eps_root: as given to ``scale_by_adam``.
        weight_decay: as given to ``add_decayed_weights`` (0 for ``adam``).
        mask: which leaves decay, as given to ``add_decayed_weights``.
        fused: True to require the kernel, None to use it where it applies (see the module).
        with_weight_decay: whether ``parts[1]`` is ``add_decayed_weights`` (not in ``adam``).
        state_layout: ``"tree"`` keeps the chain's state exactly; ``"grouped"`` keeps Adam's
            moments as a :class:`GroupedAdamState` (float32 parameters only): far fewer
            arrays per step for trees of many leaves. Either converts with
            ``update.to_canonical`` / ``update.from_canonical``.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose ``update`` is a
        :class:`FusedUpdate`.

    Example:
        >>> import jax.numpy as jnp
        >>> from scirs2_optim_jax import optimizers
        >>> tx = optimizers.adamw(0.1, fused=None)
        >>> params = {"w": jnp.ones(3)}
        >>> new_params, _ = apply_gradients(tx, {"w": jnp.ones(3)}, tx.init(params), params)
        >>> [round(float(x), 4) for x in new_params["w"]]
        [0.9, 0.9, 0.9]
    """
    if state_layout not in ("tree", "grouped"):
        raise ValueError(f"{name}: state_layout must be 'tree' or 'grouped', got {state_layout!r}")
    grouped = state_layout == "grouped"
    combined = optax.chain(*parts)
    # The decay rate and the learning rate (with its sign) come from the same transformations
    # the chain uses, run on a scalar, so schedules and injected values behave identically.
    rate_tx = add_decayed_weights(weight_decay) if with_weight_decay else None
    lr_tx = parts[-1]
    decays_at_all = rate_tx is not None and not (
        isinstance(weight_decay, (int, float)) and weight_decay == 0
    )

    def to_canonical(state: tuple[Any, ...], params: Any) -> tuple[Any, ...]:
        if not grouped:
            return state
        adam_state, leaves = state[0], jax.tree.leaves(params)
        treedef = jax.tree.structure(params)
        mu = treedef.unflatten(_split_groups(adam_state.mu, leaves))
        nu = treedef.unflatten(_split_groups(adam_state.nu, leaves))
        return (ScaleByAdamState(count=adam_state.count, mu=mu, nu=nu), *state[1:])

    def from_canonical(state: tuple[Any, ...], params: Any) -> tuple[Any, ...]:
        if not grouped:
            return state
        adam_state = state[0]
        v.check_tree_matches(name, adam_state.mu, params, tree_name="mu", ref_name="params")
        mu = _flat_groups(jax.tree.leaves(adam_state.mu))
        nu = _flat_groups(jax.tree.leaves(adam_state.nu))
        return (GroupedAdamState(count=adam_state.count, mu=mu, nu=nu), *state[1:])

    def init(params: Any) -> tuple[Any, ...]:
        if grouped and not _leaves_are_float32(params):
            raise ValueError(
                f"{name}: state_layout='grouped' needs float32 params; "
                "use state_layout='tree' for other dtypes"
            )
        return from_canonical(combined.init(params), params)

    def use_kernel(params: Any, grads: Any, adam_state: Any) -> bool:
        if fused is False or params is None:
            return False
        float32 = _leaves_are_float32(params, grads, adam_state.mu, adam_state.nu)
        return kernel_applies(name, fused, float32, "params, grads and moments")

    def step(
        grads: Any,
        state: tuple[Any, ...],
        params: Any,
        apply: bool,
        grad_scale: Any = 1.0,
        low_params: Any = None,
    ) -> tuple[Any, Any, Any]:
        adam_state = state[0]
        v.check_tree_matches(name, grads, params, ref_name="params")
        if not grouped:
            v.check_tree_matches(name, grads, adam_state.mu)
        leaves, treedef = jax.tree.flatten(grads)
        param_leaves = treedef.flatten_up_to(params)
        count = safe_increment(adam_state.count)
        new_state = list(state)
        if rate_tx is not None:
            rate, new_state[1] = rate_tx.update(jnp.zeros([], jnp.float32), state[1], jnp.ones([]))
        else:
            rate = jnp.zeros([], jnp.float32)
        neg_lr, new_state[-1] = lr_tx.update(jnp.ones([], jnp.float32), state[-1])
        hyper = hyper_vector(
            neg_lr,
            b1,
            b2,
            eps,
            eps_root,
            rate,
            bias_correction(b1, count),
            bias_correction(b2, count),
            grad_scale,
        )
        decays = mask_leaves(mask, params, grads) if decays_at_all else [False] * len(leaves)
        if grouped:
            mu, nu = list(adam_state.mu), list(adam_state.nu)
        else:
            mu, nu = treedef.flatten_up_to(adam_state.mu), treedef.flatten_up_to(adam_state.nu)
        low = None if low_params is None else treedef.flatten_up_to(low_params)
        outs, new_mu, new_nu, new_low = fused_step(
            kind,
            hyper,
            param_leaves,
            leaves,
            mu,
            nu,
            apply=apply,
            decay=decays,
            grouped=grouped,
            low_params=low,
        )
        if grouped:
            new_state[0] = GroupedAdamState(count=count, mu=tuple(new_mu), nu=tuple(new_nu))
        else:
            new_state[0] = ScaleByAdamState(
                count=count, mu=treedef.unflatten(new_mu), nu=treedef.unflatten(new_nu)
            )
        new_low_tree = None if low_params is None else treedef.unflatten(new_low)
        return treedef.unflatten(outs), tuple(new_state), new_low_tree

    def chain_update(grads: Any, state: tuple[Any, ...], params: Any) -> tuple[Any, Any]:
        if not grouped:
            return combined.update(grads, state, params)
        if params is None:
            raise ValueError(f"{name}: update needs params with state_layout='grouped'")
        # Off the kernel path the grouped state goes through the chain in its own layout.
        updates, canonical = combined.update(grads, to_canonical(state, params), params)
        return updates, from_canonical(canonical, params)

    def update(grads: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        # Through the protocol the kernel must write the updates to a fresh buffer, which
        # measured slower than the chain on XLA:CPU (first-touch page faults each step; see
        # docs/benchmarks.md), so only fused=True takes it here.
        if fused is not True or not use_kernel(params, grads, state[0]):
            return chain_update(grads, state, params)
        return step(grads, state, params, apply=False)[:2]

    def apply(grads: Any, state: Any, params: Any, grad_scale: Any = None) -> tuple[Any, Any]:
        if not use_kernel(params, grads, state[0]):
            if grad_scale is not None:
                grads = jax.tree.map(lambda g: g * grad_scale.astype(g.dtype), grads)
            updates, state = chain_update(grads, state, params)
            return optax.apply_updates(params, updates), state
        return step(
            grads, state, params, apply=True, grad_scale=1.0 if grad_scale is None else grad_scale
        )[:2]

    def apply_master(grads: Any, state: Any, master: Any, params: Any) -> Any:
        # bfloat16 (and float32) parameters with this optimizer on their float32 master copy:
        # gradients read as they are (float32 or bfloat16), the master, moments and
        # parameters written in one pass. None where that pass does not apply; the caller
        # then takes its own.
        if kind != "adam" or fused is False:
            return None
        low_leaves = jax.tree.leaves(params)
        grad_leaves = jax.tree.leaves(grads)
        if (
            not low_leaves
            or any(jnp.result_type(x) not in (jnp.bfloat16, jnp.float32) for x in low_leaves)
            or any(jnp.result_type(g) not in (jnp.float32, jnp.bfloat16) for g in grad_leaves)
            or not _leaves_are_float32(master, state[0].mu, state[0].nu)
        ):
            return None
        if not kernel_applies(name, fused, True, "master weights and moments"):
            return None
        v.check_tree_matches(name, params, master, tree_name="params", ref_name="master")
        new_master, new_state, new_params = step(grads, state, master, True, low_params=params)
        return new_params, new_master, new_state

    return optax.GradientTransformationExtraArgs(
        init, FusedUpdate(update, apply, to_canonical, from_canonical, apply_master)
    )
