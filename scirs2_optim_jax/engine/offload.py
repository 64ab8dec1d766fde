"""Optimizer state in host memory: :func:`offload`.

An optimizer's state (Adam's two moments, master weights) is often the largest thing an
accelerator holds besides the activations: 8 bytes per parameter for Adam, 12 more for
float32 master weights under bf16 training. :func:`offload` keeps it in host memory, in
one of two ways:

- ``compute="device"``: the state lives in the accelerator's host memory kind
  (``pinned_host``) and is streamed to the device for the update and back, inside the
  jitted step (the memory-kinds way: ``jax.device_put`` to ``jax.memory.Space``). Any
  optimizer of this package (or of optax) works so, under ``jit``, ``shard_map`` and
  ZeRO. Each step moves the whole state in and out: 2 x state bytes over the
  host link.
- ``compute="host"``: the state never reaches the device. The gradients go to the host,
  the update runs there on the host's CPU, and the new parameters come back to the
  devices they came from. Adam, AdamW and LAMB (with clipping and master weights) run as
  the engine's fused one-pass step (:func:`~scirs2_optim_jax.engine.one_pass_step`, its
  C++ kernel whatever the accelerator); any other transformation runs its own update,
  compiled for the host. With ``with_master_weights``
  the float32 master is in the state, so only the (bf16) gradients go down and the
  (bf16) parameters come up: the ZeRO-Offload way. This is a step *between* device
  programs, so ``update`` must be called outside ``jit``: the Flax drop-ins
  (:mod:`scirs2_optim_jax.flax`) called eagerly, :func:`~scirs2_optim_jax.apply_gradients`
  and :func:`~scirs2_optim_jax.parallel.make_data_parallel_step` do so; called while
  traced it raises ``TypeError`` instead of computing anything on the wrong side. It
  updates the state in place where its caller replaces it (the Flax ``Optimizer``, a
  donating ``make_data_parallel_step``), as a donating jitted step does; the optax
  protocol's ``update`` and ``apply_gradients`` leave their arguments intact.

Either way the state keeps the inner transformation's own structure (checkpoints store
it as is, and a state saved offloaded restores into a step that is not, see
:func:`place_state`), and the results equal the step without offload.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.engine.adam_family import host_program
from scirs2_optim_jax.engine.memory import (
    HOST_MEMORY_KIND,
    StaticStructs,
    host_device,
    host_sharding,
    is_traced,
    place_tree,
    to_memory,
)
from scirs2_optim_jax.engine.onepass import OnePassStep, one_pass_step
from scirs2_optim_jax.transforms.description import (
    DescribedTransformation,
    MasterWeights,
    Offload,
    describe_of,
)

__all__ = [
    "COMPUTE",
    "HOST_MEMORY_KIND",
    "HostStep",
    "host_device",
    "host_step",
    "offload",
    "offload_of",
    "place_state",
    "to_memory",
]

COMPUTE = ("device", "host")

Compute = Literal["device", "host"]


def offload_of(tx: Any) -> Offload | None:
    """The :class:`~scirs2_optim_jax.transforms.description.Offload` description of
    ``tx`` when it is :func:`offload`-ed, else None."""
    described = describe_of(tx)
    return described if isinstance(described, Offload) else None


def offload(
    tx: optax.GradientTransformation, *, compute: Compute = "device"
) -> DescribedTransformation:
    """``tx`` with its state kept in host memory; see the module docs for the two ways.

    Args:
        tx: any optax transformation. With ``compute="host"``, adam, adamw and lamb of
            this package (optionally after ``clip_by_global_norm``, optionally
            ``with_master_weights``) run as the fused one-pass step on the host.
        compute: ``"device"`` (stream the state to the device for the update) or
            ``"host"`` (update on the host's CPU, only gradients and parameters move).

    Returns:
        A transformation with the same ``init``/``update`` protocol and the same state
        structure as ``tx``, its state in host memory. ``update`` equals ``tx.update``
        (with ``compute="host"``, to float rounding: the updates are the new parameters
        minus the old).

    Raises:
        TypeError: ``tx`` is not a transformation, or is already offloaded.
        ValueError: ``compute`` is not one of ``"device"``, ``"host"``, or
            ``compute="device"`` on devices without a ``pinned_host`` memory.

    Example:
        >>> import jax, jax.numpy as jnp, optax, scirs2_optim_jax as so
        >>> tx = so.offload(so.adamw(0.1))
        >>> params = {"w": jnp.ones(3)}
        >>> state = tx.init(params)
        >>> state[0].mu["w"].sharding.memory_kind
        'pinned_host'
        >>> updates, state = jax.jit(tx.update)({"w": jnp.ones(3)}, state, params)
        >>> state[0].mu["w"].sharding.memory_kind, updates["w"].sharding.memory_kind
        ('pinned_host', 'device')
    """
    fn = "offload"
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(f"{fn}: tx must be an optax.GradientTransformation, got {tx!r}")
    v.check_one_of(fn, "compute", compute, COMPUTE)
    if (already := offload_of(tx)) is not None:
        raise TypeError(f"{fn}: tx is already offloaded ({already!r})")
    inner = optax.with_extra_args_support(tx)
    if compute == "host":
        return _host_transformation(inner)
    kinds = {m.kind for m in jax.local_devices()[0].addressable_memories()}
    if HOST_MEMORY_KIND not in kinds:
        raise ValueError(
            f"{fn}: compute='device' keeps the state in {HOST_MEMORY_KIND!r} memory, which "
            f"{jax.local_devices()[0].platform} devices here do not have (they have "
            f"{sorted(kinds)}); use compute='host'"
        )

    def init(params: Any) -> Any:
        return to_memory(inner.init(params), "host")

    def update(grads: Any, state: Any, params: Any = None, **extra: Any) -> Any:
        updates, state = inner.update(grads, to_memory(state, "device"), params, **extra)
        return updates, to_memory(state, "host")

    return DescribedTransformation(init, update, Offload(tx, "device"))


def place_state(tx: optax.GradientTransformation, state: Any) -> Any:
    """``state`` (of ``tx``'s structure, from a checkpoint or another step) placed where
    ``tx`` keeps it: host memory for an offloaded ``tx``, device memory otherwise. This is
    how a state saved offloaded restores into a step that is not, and the reverse.

    Example:
        >>> import jax.numpy as jnp, scirs2_optim_jax as so
        >>> plain = so.adamw(0.1)
        >>> state = plain.init({"w": jnp.ones(2)})
        >>> moved = place_state(so.offload(plain), state)
        >>> moved[0].nu["w"].sharding.memory_kind
        'pinned_host'
        >>> place_state(plain, moved)[0].nu["w"].sharding.memory_kind
        'device'
    """
    described = offload_of(tx)
    if described is not None and described.compute == "host":
        return place_tree(state, host_sharding())
    # A state kept by a host step lives on the host's CPU device: it goes to the default
    # device first (where an accelerator is the default), then into the memory asked for.
    default = jax.local_devices()[0]
    state = jax.tree.map(
        lambda x: jax.device_put(x, default) if _on_other_cpu(x, default) else x, state
    )
    return to_memory(state, "device" if described is None else "host")


def _on_other_cpu(x: Any, default: jax.Device) -> bool:
    devices = getattr(x, "devices", lambda: set())()
    return default.platform != "cpu" and bool(devices) and devices == {host_device()}


@dataclasses.dataclass(frozen=True)
class HostStep:
    """The update of an ``offload(tx, compute="host")``, run on the host.

    Attributes:
        name: the inner transformation's name (``"adamw"``).
        inner: the inner transformation.
        one_pass: its one-pass step, which runs on the host's CPU, or None: then the
            inner ``update`` and ``optax.apply_updates`` run there.
        master: whether the state holds master weights (then the parameters are not sent
            to the host: only their dtypes are needed there).
    """

    name: str
    inner: optax.GradientTransformation
    one_pass: OnePassStep | None
    master: bool
    _compiled: dict[Any, Callable[..., Any]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )

    def init(self, params: Any) -> Any:
        """The inner state for ``params``, built on the host."""
        if is_traced(params):
            raise TypeError(
                f"offload(compute='host'): init was called inside jit; the state lives on "
                f"the host, call {self.name}'s init outside jit"
            )
        _check_addressable(f"offload(compute='host') of {self.name}", params, "params")
        sharding = host_sharding()
        with jax.set_mesh(sharding.mesh):
            return jax.jit(self.inner.init)(jax.device_put(params, sharding))

    def _chain_apply(self, grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
        updates, state = self.inner.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    def _host_fn(
        self, axis_name: str | None, donate_state: bool, donate_params: bool
    ) -> Callable[..., Any]:
        key = (axis_name, donate_state, donate_params and not self.master)
        if key in self._compiled:
            return self._compiled[key]
        apply = self.one_pass.apply if self.one_pass is not None else self._chain_apply
        # The host program runs on a one-device mesh of the host, set while it runs (the
        # caller may be inside a device mesh's context). Transforms built with an
        # axis_name (for ZeRO) reduce over it; here they see whole leaves, so the axis is
        # bound to that mesh and their sums are the single-device ones.
        mesh = host_sharding(axis_name or "host").mesh
        if axis_name is not None:
            apply = jax.shard_map(
                apply,
                mesh=mesh,
                in_specs=PartitionSpec(),
                out_specs=PartitionSpec(),
                check_vma=False,
            )

        def step(grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
            if isinstance(params, StaticStructs):  # master weights: only the dtypes are read,
                # so zeros are built here instead of sending the parameters to the host
                params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params.tree)
            new_params, new_state = apply(grads, state, params)
            # Outputs in the donated inputs' order: JAX pairs each donated buffer with the
            # first free output of its shape, so (params, state) would pair the moments'
            # buffers with the parameters and copy every array around the in-place kernel.
            return new_state, new_params

        static = (2,) if self.master else ()
        # Updated in place where the caller replaces them, or they were copied to get here.
        donate = tuple(i for i, d in ((1, key[1]), (2, key[2])) if d)
        jitted = jax.jit(step, static_argnums=static, donate_argnums=donate)

        def run(grads: Any, state: Any, params: Any, lower: bool = False) -> Any:
            with jax.set_mesh(mesh), host_program():
                if lower:
                    return jitted.lower(grads, state, params)
                return jitted(grads, state, params)

        self._compiled[key] = run
        return run

    def _on_host(
        self, grads: Any, state: Any, params: Any, axis_name: str | None
    ) -> tuple[Any, Any, Any, bool, bool]:
        """The arguments on the host, and whether the state and the parameters there are
        copies (nothing of the caller's lived on the host's CPU device)."""
        host = host_sharding(axis_name or "host")
        grads_h, state_h = place_tree((grads, state), host)
        if self.master:
            return grads_h, state_h, StaticStructs(params), _copied(state), False
        return grads_h, state_h, place_tree(params, host), _copied(state), _copied(params)

    def lower(
        self, grads: Any, state: Any, params: Any, *, axis_name: str | None = None
    ) -> jax.stages.Lowered:
        """The host program for these arguments, lowered (for inspection)."""
        *args, _, _ = self._on_host(grads, state, params, axis_name)
        return self._host_fn(axis_name, False, False)(*args, lower=True)

    def apply(
        self,
        grads: Any,
        state: Any,
        params: Any,
        *,
        axis_name: str | None = None,
        donate_state: bool = False,
        donate_params: bool = False,
        place: bool = True,
    ) -> tuple[Any, Any]:
        """``(new_params, new_state)``: the step on the host. ``new_params`` are on the
        devices and shardings of ``params``; ``new_state`` stays on the host.

        Args:
            grads: the gradients (any devices; they are copied to the host).
            state: the inner state, on the host (moved there if it is not).
            params: the current parameters.
            axis_name: the data axis a transform of the inner chain reduces over, if any.
            donate_state, donate_params: the caller replaces ``state`` (``params``) with
                the result, so where it already is on the host it is updated in place and
                consumed, as a buffer donated to a jitted step is. A copy made to reach the
                host is always updated in place.
            place: put the new parameters back where ``params`` are; False leaves them
                on the host, for a caller that places them itself.

        Raises:
            TypeError: called while traced by ``jit``.
            ValueError: ``params`` is None, or an array spans other processes.
        """
        fn = f"offload(compute='host') of {self.name}"
        if is_traced((grads, state, params)):
            raise TypeError(
                f"{fn}: update was called inside jit; the host update runs between device "
                "programs: call it outside jit (compute the gradients in a jitted "
                "function, then optimizer.update / so.apply_gradients eagerly), or use "
                "offload(tx, compute='device'), which works inside jit"
            )
        if params is None:
            raise ValueError(f"{fn}: update needs params")
        for name, tree in (("grads", grads), ("state", state), ("params", params)):
            _check_addressable(fn, tree, name)
        *args, state_copied, params_copied = self._on_host(grads, state, params, axis_name)
        run = self._host_fn(axis_name, donate_state or state_copied, donate_params or params_copied)
        new_state, new_h = run(*args)
        if self.master:  # the host saw zeros for the parameters: keep the caller's
            # non-floating leaves, which with_master_weights leaves as they are
            host = host_sharding(axis_name or "host")
            new_h = jax.tree.map(
                lambda new, old: (
                    new
                    if jnp.issubdtype(jnp.result_type(old), jnp.floating)
                    else (old if place else jax.device_put(old, host))
                ),
                new_h,
                params,
            )
        if not place:
            return new_h, new_state
        # Back where the parameters were (one batched transfer; nothing moves on a CPU).
        shardings = jax.tree.map(
            lambda old, new: getattr(old, "sharding", new.sharding), params, new_h
        )
        return place_tree(new_h, shardings), new_state


def _copied(tree: Any) -> bool:
    """Whether placing ``tree`` on the host copies every array (none has a buffer on the
    host's CPU device that the placement could reuse)."""
    host = host_device()
    return all(
        host not in getattr(x, "sharding", jax.sharding.SingleDeviceSharding(host)).device_set
        for x in jax.tree.leaves(tree)
    )


def _check_addressable(fn: str, tree: Any, name: str) -> None:
    if jax.process_count() == 1:  # every array is addressable: nothing to walk per step
        return
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            raise ValueError(
                f"{fn}: {name}{jax.tree_util.keystr(path)} spans other processes; the host "
                "update runs in one process: use offload(tx, compute='device'), which keeps "
                "each device's state in its own host's memory"
            )


def host_step(tx: optax.GradientTransformation) -> HostStep | None:
    """The :class:`HostStep` of an ``offload(tx, compute="host")``, else None."""
    return getattr(tx, "host_step", None) if offload_of(tx) is not None else None


class _HostTransformation(DescribedTransformation):
    host_step: HostStep


def _name_of(tx: Any) -> str:
    described = describe_of(tx)
    return getattr(described, "name", None) or "the transformation"


def _host_transformation(inner: optax.GradientTransformation) -> DescribedTransformation:
    one_pass = one_pass_step(inner)
    master = isinstance(describe_of(inner), MasterWeights)
    name = one_pass.name if one_pass is not None else _name_of(inner)
    step = HostStep(name, inner, one_pass, master and one_pass is not None)

    def update(grads: Any, state: Any, params: Any = None, **extra: Any) -> Any:
        if extra:
            raise TypeError(
                f"offload(compute='host') of {step.name}: update takes no extra "
                f"arguments, got {sorted(extra)}"
            )
        new_params, state = step.apply(grads, state, params)
        updates = jax.tree.map(lambda n, p: n - p, new_params, params)
        return updates, state

    tx = _HostTransformation(step.init, update, Offload(inner, "host"))
    tx.host_step = step
    return tx
