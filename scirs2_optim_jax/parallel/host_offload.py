"""The data-parallel step of ``offload(tx, compute="host")``: device programs around a host
update.

The optimizer state never reaches the devices, so the step is three parts instead of one
program:

1. a device program (``jax.shard_map`` over the data axis) computes the loss and the
   gradients and reduces them: ``pmean`` (``zero_stage=0``) or, with ZeRO, each device
   keeps its slice of the mean gradient (``zero_stage=1``: ``pmean`` then slice;
   ``zero_stage=2``: ``psum_scatter``, so no device ever holds the whole mean gradient);
2. the gradients (each device's slice under ZeRO, so each device sends ``1/N`` of them)
   go to the host, where the engine's one-pass step updates the parameters and the state
   (:class:`~scirs2_optim_jax.engine.offload.HostStep`);
3. the new parameters go back to the devices: each device receives its ``1/N`` slice
   from the host and a device program all-gathers them (as ZeRO-Offload does), so the
   host link carries one copy of the parameters per step, not one per device.

The host holds the state whole, in the inner optimizer's own layout (what a checkpoint
stores). Transforms built with ``axis_name`` (a ZeRO chain's clip or LAMB) see whole leaves
there, with the axis bound to a one-device mesh of the host, so their sums are the
single-device ones. Results equal the same step without offload.

One process only: the host step reads every gradient slice, which in a multi-process run
would be on other hosts; :func:`make_host_offload_step` raises ``ValueError`` there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scirs2_optim_jax.engine.memory import StaticStructs, host_sharding, place_tree
from scirs2_optim_jax.engine.offload import HostStep
from scirs2_optim_jax.parallel.layout import zero_chunk_size
from scirs2_optim_jax.parallel.zero import gather_updates, reduce_gradients
from scirs2_optim_jax.transforms.norms import global_norm

__all__ = ["HostOffloadedStep", "make_host_offload_step"]

P = PartitionSpec


def _padded(params: Any, n: int) -> Any:
    """Each leaf flattened and zero-padded to ``N * chunk`` elements (ZeRO's layout), so
    that splitting it over ``N`` devices gives each device its slice."""

    def leaf(x: jax.Array) -> jax.Array:
        return jnp.pad(x.reshape(-1), (0, n * zero_chunk_size(x.size, n) - x.size))

    return jax.tree.map(leaf, params)


def _whole(slices: Any, structs: Any) -> Any:
    """Each leaf's concatenated, padded slices (``N * chunk`` elements) back in the shape of
    its parameter (``structs``: the parameters' shapes)."""
    leaves, treedef = jax.tree.flatten(slices)
    whole = [
        s[: math.prod(p.shape)].reshape(p.shape)
        for s, p in zip(leaves, treedef.flatten_up_to(structs), strict=True)
    ]
    return jax.tree.unflatten(treedef, whole)


class HostOffloadedStep:
    """``(params, opt_state, batch) -> (params, opt_state, metrics)``: the device program,
    the host update and the placement back; ``lower`` lowers the device program."""

    def __init__(
        self,
        grads_program: Callable[..., Any],
        host: HostStep,
        axis_name: str,
        sliced: bool,
        has_aux: bool,
        donate: bool,
    ) -> None:
        self._grads = grads_program
        self._host = host
        self._axis_name = axis_name
        self._sliced = sliced
        self._has_aux = has_aux
        self._donate = donate
        self._whole = jax.jit(lambda g, structs: _whole(g, structs.tree), static_argnums=1)
        self._padded = jax.jit(_padded, static_argnums=1)
        self._gathers: dict[StaticStructs, Callable[[Any], Any]] = {}

    def _gather(self, mesh: Mesh, structs: StaticStructs) -> Callable[[Any], Any]:
        """The device program that all-gathers the parameter slices, replicated."""
        if structs not in self._gathers:
            axis = self._axis_name
            gather = jax.shard_map(
                lambda s: gather_updates(s, structs.tree, axis),
                mesh=mesh,
                in_specs=P(axis),
                out_specs=P(),
                check_vma=False,
            )
            self._gathers[structs] = jax.jit(gather)
        return self._gathers[structs]

    def _to_devices(self, new: Any, params: Any, structs: StaticStructs) -> Any:
        """The new parameters, on the host, placed as ``params`` (of ``structs``) are:
        replicated."""
        leaves = jax.tree.leaves(params)
        mesh = getattr(leaves[0].sharding, "mesh", None) if leaves else None
        if not isinstance(mesh, Mesh) or mesh.shape[self._axis_name] == 1:
            return place_tree(new, jax.tree.map(lambda p: p.sharding, params))
        n = mesh.shape[self._axis_name]
        with jax.set_mesh(host_sharding(self._axis_name).mesh):
            flat = self._padded(new, n)
        # Each device receives its slice: one copy of the parameters over the host link.
        slices = jax.device_put(flat, NamedSharding(mesh, P(self._axis_name)))
        with jax.set_mesh(mesh):
            return self._gather(mesh, structs)(slices)

    def __call__(self, params: Any, opt_state: Any, batch: Any) -> tuple[Any, Any, Any]:
        loss, grads, aux, grad_norm = self._grads(params, batch)
        structs = StaticStructs(params)
        if self._sliced:
            # Each device's slice goes to the host (1/N of the gradient per device); the
            # host puts the whole mean gradient back together.
            host = host_sharding(self._axis_name)
            with jax.set_mesh(host.mesh):
                grads = self._whole(jax.device_put(grads, host), structs)
        new_host, opt_state = self._host.apply(
            grads,
            opt_state,
            params,
            axis_name=self._axis_name,
            donate_state=self._donate,
            donate_params=self._donate,
            place=False,
        )
        new_params = self._to_devices(new_host, params, structs)
        metrics = {"loss": loss, "grad_norm": grad_norm}
        if self._has_aux:
            metrics["aux"] = aux
        return new_params, opt_state, metrics

    def lower(self, params: Any, opt_state: Any, batch: Any) -> jax.stages.Lowered:
        """The device program (loss, gradients, their reduction), lowered."""
        del opt_state
        return self._grads.lower(params, batch)  # type: ignore[attr-defined]


def make_host_offload_step(
    local_grads: Callable[[Any, Any], tuple[Any, Any, Any]],
    host: HostStep,
    mesh: Mesh,
    axis_name: str,
    zero_stage: int,
    has_aux: bool,
    donate: bool = True,
) -> HostOffloadedStep:
    """The step of :func:`~scirs2_optim_jax.parallel.make_data_parallel_step` for an
    ``offload(tx, compute="host")`` (see the module docs).

    Args:
        local_grads: ``(params, batch) -> (loss, grads, aux)`` on one device's batch, the
            loss and aux already averaged over ``axis_name``.
        host: the transformation's host step.
        mesh, axis_name, zero_stage, has_aux, donate: as for ``make_data_parallel_step``.

    Raises:
        ValueError: in a multi-process run.
    """
    if jax.process_count() > 1:
        raise ValueError(
            "make_data_parallel_step: offload(compute='host') runs in one process (the host "
            f"update reads every gradient slice); this run has {jax.process_count()} "
            "processes: use offload(tx, compute='device'), which keeps each device's state "
            "slice in its own host's memory"
        )

    def shard_map(f: Callable[..., Any], in_specs: Any, out_specs: Any) -> Callable[..., Any]:
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

    if zero_stage == 0:

        def grads_local(params: Any, batch: Any) -> tuple[Any, ...]:
            loss, grads, aux = local_grads(params, batch)
            grads = jax.lax.pmean(grads, axis_name)
            return loss, grads, aux, global_norm(grads)

        out_specs: Any = (P(), P(), P(), P())
    else:

        def grads_local(params: Any, batch: Any) -> tuple[Any, ...]:
            loss, grads, aux = local_grads(params, batch)
            grad_slices = reduce_gradients(grads, axis_name, zero_stage)
            return loss, grad_slices, aux, global_norm(grad_slices, axis_name)

        out_specs = (P(), P(axis_name), P(), P())
    program = jax.jit(shard_map(grads_local, (P(), P(axis_name)), out_specs))
    return HostOffloadedStep(program, host, axis_name, zero_stage > 0, has_aux, donate)
