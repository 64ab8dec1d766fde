"""Adam, AdamW and LAMB chains as one kernel pass: recognised from their descriptions.

On XLA:CPU the chained transforms compile to several loops per leaf (AdamW: three, moving
40 bytes per parameter where 28 would do). A chain ``scale_by_adam -> [add_decayed_weights]
-> [scale_by_trust_ratio] -> scale_by_learning_rate`` (what ``adam``, ``adamw`` and ``lamb``
are) runs here as one kernel call per group of leaves that reads parameters, gradients and
moments once and writes the new parameters and moments in place. The state is the chain's
own; the learning rate
and the decay rate come from running the chain's own transformations on a scalar, so
schedules and injected values behave identically.

The kernel runs when every parameter, gradient and moment is float32 and, with
``fused=None``, when JAX's default backend is the CPU with a single device and the kernels
built on this machine. Otherwise the chain itself runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import optax

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.engine.kernels import fused_step, hyper_vector, load_kernels
from scirs2_optim_jax.transforms.adaptive import ScaleByAdamState
from scirs2_optim_jax.transforms.description import (
    AddDecayedWeights,
    Chain,
    ScaleByAdam,
    ScaleByLearningRate,
    ScaleByTrustRatio,
    describe_of,
)
from scirs2_optim_jax.transforms.grouped import GroupedAdamState, group_bounds
from scirs2_optim_jax.transforms.masking import mask_leaves
from scirs2_optim_jax.transforms.moments import bias_correction, safe_increment
from scirs2_optim_jax.transforms.weight_decay import add_decayed_weights

__all__ = [
    "AdamFamilyPlan",
    "group_moments",
    "host_program",
    "kernel_applies",
    "match_adam_family",
    "ungroup_moments",
]


@dataclasses.dataclass(frozen=True)
class AdamFamilyPlan:
    """What the kernel computes for one recognised chain, and where its state lives.

    ``decay_index`` is the chain slot of ``add_decayed_weights`` (None without one); the
    learning rate is always the last slot and Adam's moments the first.
    """

    name: str
    kind: str  # "adam" or "lamb"
    adam: ScaleByAdam
    decay_index: int | None
    decay: AddDecayedWeights | None
    fused: bool | None


def _is_default_trust_ratio(d: ScaleByTrustRatio) -> bool:
    # The kernel's LAMB is scale_by_trust_ratio with its defaults on whole leaves.
    plain = (d.min_norm, d.trust_coefficient, d.eps) == (0.0, 1.0, 0.0)
    return plain and d.mask is None and d.axis_name is None


def match_adam_family(chain: Chain) -> AdamFamilyPlan | None:
    """The plan for ``chain`` if the kernel computes exactly it, else None.

    Example:
        >>> from scirs2_optim_jax.optimizers import adamw, lamb
        >>> match_adam_family(adamw(1e-3).description).kind
        'adam'
        >>> match_adam_family(lamb(1e-3).description).kind
        'lamb'
        >>> match_adam_family(adamw(1e-3, fused=False).description) is None
        True
    """
    if chain.fused is False:
        return None
    described = [describe_of(part) for part in chain.parts]
    if len(described) < 2:
        return None
    first, *middle, last = described
    if not isinstance(first, ScaleByAdam) or first.nesterov:
        return None
    if not isinstance(last, ScaleByLearningRate):
        return None
    decay_index, decay, kind = None, None, "adam"
    for index, d in enumerate(middle, start=1):
        if isinstance(d, AddDecayedWeights) and decay is None and kind == "adam":
            decay_index, decay = index, d
        elif isinstance(d, ScaleByTrustRatio) and kind == "adam" and _is_default_trust_ratio(d):
            kind = "lamb"
        else:
            return None
    return AdamFamilyPlan(chain.name, kind, first, decay_index, decay, chain.fused)


_HOST_PROGRAM: contextvars.ContextVar[bool] = contextvars.ContextVar("host_program", default=False)


@contextlib.contextmanager
def host_program() -> Iterator[None]:
    """While a program for the host's CPU device alone is traced (the update of
    ``offload(tx, compute="host")``), the kernels apply whatever the default backend and
    the number of devices."""
    token = _HOST_PROGRAM.set(True)
    try:
        yield
    finally:
        _HOST_PROGRAM.reset(token)


def kernel_applies(name: str, fused: bool | None, float32: bool, what: str) -> bool:
    """Whether a step built with ``fused`` runs its CPU kernel on these leaves.

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
    on_host = _HOST_PROGRAM.get()  # a host program runs on one CPU device, whatever the rest
    if (
        fused is None
        and not on_host
        and (jax.default_backend() != "cpu" or jax.device_count() != 1)
    ):
        return False
    if fused and not on_host and jax.default_backend() != "cpu":
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


def all_float32(*trees: Any) -> bool:
    """Whether every leaf of every tree is a float32 array."""
    return all(
        getattr(leaf, "dtype", None) == jnp.float32
        for tree in trees
        for leaf in jax.tree.leaves(tree)
    )


def uses_kernel(plan: AdamFamilyPlan, params: Any, grads: Any, adam_state: Any) -> bool:
    """Whether the kernel runs this step (see :func:`kernel_applies`)."""
    if params is None:
        return False
    float32 = all_float32(params, grads, adam_state.mu, adam_state.nu)
    return kernel_applies(plan.name, plan.fused, float32, "params, grads and moments")


def _scalar_rates(
    plan: AdamFamilyPlan, tx_parts: tuple[optax.GradientTransformation, ...], state: Any
) -> tuple[jax.Array, jax.Array, list[Any]]:
    """``(neg_lr, decay_rate, new_state)``: the chain's own learning-rate and decay
    transformations run on a scalar, advancing their states exactly as the chain would."""
    new_state = list(state)
    rate = jnp.zeros([], jnp.float32)
    if plan.decay is not None:
        # The decay rate alone: add_decayed_weights without its mask (which would read the
        # scalar as a parameter), on the chain's own decay state.
        i = plan.decay_index
        rate_tx = add_decayed_weights(plan.decay.weight_decay)
        rate, new_state[i] = rate_tx.update(jnp.zeros([], jnp.float32), state[i], jnp.ones([]))
    neg_lr, new_state[-1] = tx_parts[-1].update(jnp.ones([], jnp.float32), state[-1])
    return neg_lr, rate, new_state


def _decay_flags(plan: AdamFamilyPlan, params: Any, grads: Any, count: int) -> list[bool]:
    """Per leaf, whether ``weight_decay * param`` joins its direction."""
    decay = plan.decay
    if decay is None or (isinstance(decay.weight_decay, (int, float)) and decay.weight_decay == 0):
        return [False] * count
    return mask_leaves(decay.mask, params, grads)


# XLA:CPU runs a program whose estimated cost is under 1000 flops inline, on the thread
# that called it, and a kernel call counts as 0 flops; see _released().
_RELEASE_ELEMENTS = 1024


def _released(scale: Any) -> jax.Array:
    """``scale`` plus an exact ``0.0`` that XLA counts as 2,048 flops.

    XLA:CPU executes a program it estimates at under 1000 flops on the calling thread
    before the call returns (a heuristic for programs cheaper than a thread switch); its
    cost analysis counts a custom call as 0 flops. A one-pass step is a kernel call and a
    few scalars, so without this it ran inline: the Python thread was held for the whole
    kernel, and the output handling of the call (building the new arrays, Flax's state)
    waited for it instead of overlapping it. The sum of squares of a 1,024-element zero
    vector, kept from constant folding by an optimization barrier, makes the program count
    as what it is, a costly one, so it runs asynchronously like an XLA update; it costs
    about a microsecond and leaves the value unchanged.
    """
    zeros = jax.lax.optimization_barrier(jnp.zeros(_RELEASE_ELEMENTS, jnp.float32))
    return jnp.asarray(scale, jnp.float32) + jnp.sum(zeros * zeros)


def kernel_step(
    plan: AdamFamilyPlan,
    tx_parts: tuple[optax.GradientTransformation, ...],
    grads: Any,
    state: tuple[Any, ...],
    params: Any,
    *,
    apply: bool,
    grad_scale: Any = 1.0,
    low_params: Any = None,
) -> tuple[Any, tuple[Any, ...], Any]:
    """One kernel pass: ``(outputs, new_state, new_low_params)``.

    ``outputs`` are the new parameters (``apply``) or the optax updates; with
    ``low_params`` (master-weights mode) ``params`` is the float32 master copy and the new
    low-precision parameters come back third.
    """
    adam_state = state[0]
    grouped = isinstance(adam_state, GroupedAdamState)
    v.check_tree_matches(plan.name, grads, params, ref_name="params")
    if grouped:
        _check_groups(plan.name, adam_state, params)
    else:
        v.check_tree_matches(plan.name, grads, adam_state.mu)
    leaves, treedef = jax.tree.flatten(grads)
    count = safe_increment(adam_state.count)
    neg_lr, rate, new_state = _scalar_rates(plan, tx_parts, state)
    b1, b2 = plan.adam.b1, plan.adam.b2
    hyper = hyper_vector(
        neg_lr,
        b1,
        b2,
        plan.adam.eps,
        plan.adam.eps_root,
        rate,
        bias_correction(b1, count),
        bias_correction(b2, count),
        _released(grad_scale),
    )
    if grouped:
        mu, nu = list(adam_state.mu), list(adam_state.nu)
    else:
        mu, nu = treedef.flatten_up_to(adam_state.mu), treedef.flatten_up_to(adam_state.nu)
    low = None if low_params is None else treedef.flatten_up_to(low_params)
    outs, new_mu, new_nu, new_low = fused_step(
        plan.kind,
        hyper,
        treedef.flatten_up_to(params),
        leaves,
        mu,
        nu,
        apply=apply,
        decay=_decay_flags(plan, params, grads, len(leaves)),
        low_params=low,
        grouped=grouped,
    )
    if grouped:
        new_state[0] = GroupedAdamState(count=count, mu=tuple(new_mu), nu=tuple(new_nu))
    else:
        new_state[0] = ScaleByAdamState(
            count=count, mu=treedef.unflatten(new_mu), nu=treedef.unflatten(new_nu)
        )
    new_low_tree = None if low_params is None else treedef.unflatten(new_low)
    return treedef.unflatten(outs), tuple(new_state), new_low_tree


def master_pass_applies(
    plan: AdamFamilyPlan, grads: Any, state: Any, master: Any, params: Any
) -> bool:
    """Whether the kernel's master-weights mode runs: Adam/AdamW, bfloat16 or float32
    parameters and gradients, float32 master and moments."""
    if plan.kind != "adam" or plan.fused is False:
        return False
    low_leaves = jax.tree.leaves(params)
    ok_dtypes = (jnp.bfloat16, jnp.float32)
    if (
        not low_leaves
        or any(jnp.result_type(x) not in ok_dtypes for x in low_leaves)
        or any(jnp.result_type(g) not in ok_dtypes for g in jax.tree.leaves(grads))
        or not all_float32(master, state[0].mu, state[0].nu)
    ):
        return False
    return kernel_applies(plan.name, plan.fused, True, "master weights and moments")


def _group_sizes(params: Any) -> list[int]:
    """The element count of each group of :func:`group_bounds` over ``params``' leaves."""
    sizes = [int(jnp.size(x)) for x in jax.tree.leaves(params)]
    return [sum(sizes[start:end]) for start, end in group_bounds(len(sizes))]


def _check_groups(name: str, state: GroupedAdamState, params: Any) -> None:
    expected = _group_sizes(params)
    for which, buffers in (("mu", state.mu), ("nu", state.nu)):
        got = [int(jnp.size(b)) for b in buffers]
        if got != expected:
            raise ValueError(
                f"{name}: the grouped moments {which} hold {got} elements per group, "
                f"the parameters need {expected}; the state belongs to other parameters"
            )


def group_moments(adam_state: ScaleByAdamState, params: Any) -> GroupedAdamState:
    """Adam's moments as one flat float32 buffer per group of ``params``' leaves.

    The kernel reads the same numbers from either layout; the grouped one has two arrays
    per 256 leaves instead of two per leaf, which is what a step's caller pays for.

    Example:
        >>> import jax.numpy as jnp
        >>> params = {"a": jnp.ones((2, 2)), "b": jnp.ones(3)}
        >>> state = ScaleByAdamState(jnp.zeros([], jnp.int32), params, params)
        >>> [x.shape for x in group_moments(state, params).mu]
        [(7,)]
    """
    treedef = jax.tree.structure(params)

    def flat(tree: Any) -> tuple[jax.Array, ...]:
        leaves = treedef.flatten_up_to(tree)
        return tuple(
            jnp.concatenate([jnp.ravel(x) for x in leaves[start:end]])
            for start, end in group_bounds(len(leaves))
        )

    return GroupedAdamState(count=adam_state.count, mu=flat(adam_state.mu), nu=flat(adam_state.nu))


def ungroup_moments(state: GroupedAdamState, params: Any) -> ScaleByAdamState:
    """The inverse of :func:`group_moments`: one moment array per leaf of ``params``."""
    _check_groups("ungroup_moments", state, params)
    leaves, treedef = jax.tree.flatten(params)

    def tree(buffers: tuple[jax.Array, ...]) -> Any:
        out: list[jax.Array] = []
        for buffer, (start, end) in zip(buffers, group_bounds(len(leaves)), strict=True):
            offset = 0
            for leaf in leaves[start:end]:
                size = int(jnp.size(leaf))
                out.append(jnp.reshape(buffer[offset : offset + size], jnp.shape(leaf)))
                offset += size
        return treedef.unflatten(out)

    return ScaleByAdamState(count=state.count, mu=tree(state.mu), nu=tree(state.nu))
