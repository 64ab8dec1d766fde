"""A data-parallel training step on ``jax.shard_map``: plain, ZeRO-1 or ZeRO-2.

The step is a pure function of ``(params, opt_state, batch)``. The batch's leading axis is
split over the mesh's data axis; each device computes the loss and gradients of its part,
and then:

- ``zero_stage=0``: the gradients are ``pmean``-ed and the optimizer runs on whole,
  replicated leaves;
- ``zero_stage=1`` / ``2``: the optimizer runs under :func:`~scirs2_optim_jax.parallel.zero.
  zero`, each device updating its slice of the state, and the updates are all-gathered.

The loss function is a plain ``loss_fn(params, batch)``, so the step works with any model:

- Flax Linen: ``loss_fn = lambda params, batch: loss(model.apply({"params": params}, x), y)``;
- Flax NNX: ``graphdef, params = nnx.split(model)`` and
  ``loss_fn = lambda params, batch: loss(nnx.merge(graphdef, params)(x), y)``; after
  training, ``nnx.update(model, params)``.

One optimizer serves every mode: build reducing transforms with ``axis_name="data"`` (the
mesh's data axis). Under ZeRO the leaves are slices and those transforms sum over the axis;
with ``zero_stage=0`` the leaves are whole, and the step runs the update with the axis bound
to a size-1 ``vmap`` axis, so the same sums are identities. (An optimizer built without
``axis_name`` also works with ``zero_stage=0``; ZeRO rejects it when traced.)

Metrics: ``loss`` (mean over the whole batch), ``grad_norm`` (of the mean gradient, equal to
the single-device value in every mode) and, with ``has_aux``, ``aux`` (averaged over
devices).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from scirs2_optim_jax.engine import host_step, offload_of, one_pass_step
from scirs2_optim_jax.parallel.host_offload import make_host_offload_step
from scirs2_optim_jax.parallel.placement import put_on_mesh
from scirs2_optim_jax.parallel.unit_axis import with_unit_axis
from scirs2_optim_jax.parallel.zero import (
    check_slices,
    gather_updates,
    reduce_gradients,
    shard_params,
    update_slices,
    zero_state_specs,
)
from scirs2_optim_jax.parallel.zero_layout import ZeroLayout
from scirs2_optim_jax.transforms.description import Chain, ClipByGlobalNorm, describe_of
from scirs2_optim_jax.transforms.norms import global_norm
from scirs2_optim_jax.transforms.shard_layout import use_layout

__all__ = ["DataParallelStep", "make_data_parallel_step", "with_unit_axis"]

P = PartitionSpec


def _clips_over_an_axis(tx: optax.GradientTransformation) -> bool:
    """Whether ``tx`` is a chain with a global-norm clip that reduces over a mesh axis."""
    described = describe_of(tx)
    if not isinstance(described, Chain):
        return False
    return any(
        isinstance(describe_of(part), ClipByGlobalNorm) and describe_of(part).axis_name
        for part in described.parts
    ) or any(_clips_over_an_axis(part) for part in described.parts)


def _structs(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def _mean_of_floats(tree: Any, axis_name: str) -> Any:
    return jax.tree.map(
        lambda x: jax.lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.inexact) else x,
        tree,
    )


@dataclasses.dataclass(frozen=True)
class DataParallelStep:
    """A compiled data-parallel step and the helpers to feed it; see
    :func:`make_data_parallel_step`.

    Attributes:
        mesh: the device mesh.
        axis_name: its data axis.
        zero_stage: 0 (plain data parallel), 1 or 2.
        num_shards: size of the data axis.
    """

    mesh: Mesh
    axis_name: str
    zero_stage: int
    num_shards: int
    _init: Callable[[Any], Any]
    _step: Callable[[Any, Any, Any], Any]

    def init(self, params: Any) -> tuple[Any, Any]:
        """Places ``params`` replicated on the mesh and builds the optimizer state there.

        Returns:
            ``(params, opt_state)`` as global arrays; with ZeRO the state's moments are
            flat, padded and split over the data axis.
        """
        params = put_on_mesh(params, self.mesh, P())
        with jax.set_mesh(self.mesh):
            return params, self._init(params)

    def shard_batch(self, batch: Any) -> Any:
        """Splits ``batch`` (the global batch, every leaf's axis 0 the batch axis) over the
        data axis. In a multi-process run every process passes the same global batch."""
        for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
            rows = jnp.shape(leaf)[0] if jnp.ndim(leaf) else None
            if rows is None or rows % self.num_shards:
                raise ValueError(
                    f"data_parallel_step: the batch leaf at {jax.tree_util.keystr(path)} has "
                    f"shape {jnp.shape(leaf)}; its leading axis must be divisible by the "
                    f"{self.num_shards} devices of {self.axis_name!r}"
                )
        return put_on_mesh(batch, self.mesh, P(self.axis_name))

    def __call__(self, params: Any, opt_state: Any, batch: Any) -> tuple[Any, Any, Any]:
        """One training step: returns ``(params, opt_state, metrics)``."""
        batch = self.shard_batch(batch)
        with jax.set_mesh(self.mesh):
            return self._step(params, opt_state, batch)

    def lower(self, params: Any, opt_state: Any, batch: Any) -> jax.stages.Lowered:
        """Lowers the step for inspection (``.compile().as_text()``, ``memory_analysis()``)."""
        batch = self.shard_batch(batch)
        with jax.set_mesh(self.mesh):
            return self._step.lower(params, opt_state, batch)  # type: ignore[attr-defined]


def make_data_parallel_step(
    loss_fn: Callable[[Any, Any], Any],
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    axis_name: str = "data",
    zero_stage: int = 0,
    has_aux: bool = False,
    donate: bool = True,
    check: bool = True,
) -> DataParallelStep:
    """Builds a jitted data-parallel training step over ``mesh``'s ``axis_name``.

    Args:
        loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)`` with ``has_aux``),
            the mean loss over the batch it is given.
        tx: the optimizer; reducing transforms built with ``axis_name`` (see module doc).
        mesh: a mesh with the axis ``axis_name`` (:func:`~scirs2_optim_jax.parallel.mesh.
            make_data_mesh`), Explicit or Auto.
        axis_name: the data axis.
        zero_stage: 0 (replicated optimizer state), 1 (state sharded) or 2 (state and
            gradients sharded).
        has_aux: ``loss_fn`` returns ``(loss, aux)``; floating ``aux`` leaves are averaged
            over devices and returned as ``metrics["aux"]``.
        donate: donate the parameter and state buffers to the step.
        check: with ZeRO, verify the optimizer's reductions when the step is traced.

    Returns:
        A :class:`DataParallelStep`: ``params, opt_state = step.init(params)``, then
        ``params, opt_state, metrics = step(params, opt_state, batch)``.

    Example:
        >>> import jax.numpy as jnp, scirs2_optim_jax as so
        >>> from scirs2_optim_jax.parallel import make_data_mesh
        >>> def loss_fn(params, batch):
        ...     return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
        >>> step = make_data_parallel_step(loss_fn, so.adamw(0.1), make_data_mesh(1),
        ...                                zero_stage=2)
        >>> params, opt_state = step.init({"w": jnp.zeros(3)})
        >>> batch = {"x": jnp.eye(3), "y": jnp.ones(3)}
        >>> for _ in range(50):
        ...     params, opt_state, metrics = step(params, opt_state, batch)
        >>> bool(metrics["loss"] < 0.01)
        True
    """
    fn = "make_data_parallel_step"
    if not callable(loss_fn):
        raise TypeError(f"{fn}: loss_fn must be callable, got {loss_fn!r}")
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(f"{fn}: tx must be an optax.GradientTransformation, got {tx!r}")
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{fn}: mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"{fn}: axis_name {axis_name!r} is not an axis of the mesh {mesh.axis_names}"
        )
    if isinstance(zero_stage, bool) or zero_stage not in (0, 1, 2):
        raise ValueError(f"{fn}: zero_stage must be 0, 1 or 2, got {zero_stage!r}")
    n = mesh.shape[axis_name]
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=has_aux)
    tx = optax.with_extra_args_support(tx)

    def local_grads(params: Any, batch: Any) -> tuple[Any, Any, Any]:
        out, grads = value_and_grad(params, batch)
        loss, aux = out if has_aux else (out, None)
        return jax.lax.pmean(loss, axis_name), grads, _mean_of_floats(aux, axis_name)

    # check_vma=False keeps per-device gradients of replicated parameters per device (with
    # it, JAX would insert the sum itself), and accepts the all-gathered updates, which are
    # replicated though all_gather types them as varying.
    def shard_map(f: Callable[..., Any], in_specs: Any, out_specs: Any) -> Callable[..., Any]:
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

    offloaded = offload_of(tx)
    if offloaded is not None and offloaded.compute == "host":
        # The state stays on the host: device programs around a host update.
        host = host_step(tx)
        step = make_host_offload_step(
            local_grads, host, mesh, axis_name, zero_stage, has_aux, donate
        )
        return DataParallelStep(mesh, axis_name, zero_stage, n, host.init, step)

    if zero_stage == 0:

        def reduced_grads(params: Any, batch: Any) -> tuple[Any, Any, Any]:
            loss, grads, aux = local_grads(params, batch)
            return loss, jax.lax.pmean(grads, axis_name), aux

        grads_fn = shard_map(reduced_grads, (P(), P(axis_name)), P())
        update = with_unit_axis(tx.update, axis_name)
        # The engine's one-pass step where ``tx`` has one; it reduces over no mesh axis
        # (an axis_name clip keeps the chain, which runs under a unit axis here).
        one_pass = None if _clips_over_an_axis(tx) else one_pass_step(tx)

        def apply(grads: Any, opt_state: Any, params: Any) -> tuple[Any, Any]:
            if one_pass is not None:
                return one_pass.apply(grads, opt_state, params)
            updates, opt_state = update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        def step(params: Any, opt_state: Any, batch: Any) -> tuple[Any, Any, Any]:
            loss, grads, aux = grads_fn(params, batch)
            params, opt_state = apply(grads, opt_state, params)
            metrics = {"loss": loss, "grad_norm": global_norm(grads)}
            if has_aux:
                metrics["aux"] = aux
            return params, opt_state, metrics

        init = jax.jit(tx.init)
    else:
        specs_cache: dict[Any, Any] = {}

        def state_specs(params: Any) -> Any:
            key = (
                jax.tree.structure(params),
                tuple((jnp.shape(p), jnp.result_type(p)) for p in jax.tree.leaves(params)),
            )
            if key not in specs_cache:
                specs_cache[key] = zero_state_specs(tx, params, n, axis_name)
            return specs_cache[key]

        one_pass = one_pass_step(tx)

        def apply_slices(grad_slices: Any, opt_state: Any, params: Any) -> tuple[Any, Any]:
            if one_pass is None:
                slices, opt_state = update_slices(
                    tx, grad_slices, opt_state, params, axis_name, check=check
                )
                return optax.apply_updates(params, gather_updates(slices, params, axis_name)), (
                    opt_state
                )
            # The one-pass step on this device's slices; the new parameter slices are
            # gathered instead of the updates (the same traffic). It computes what the
            # chain computes, so the chain's checks apply.
            if check:
                check_slices(tx, grad_slices, opt_state, params, axis_name)
            param_slices = shard_params(params, axis_name)
            new_slices, opt_state = one_pass.apply(grad_slices, opt_state, param_slices)
            return gather_updates(new_slices, params, axis_name), opt_state

        def local_step(params: Any, opt_state: Any, batch: Any) -> tuple[Any, Any, Any]:
            loss, grads, aux = local_grads(params, batch)
            grad_slices = reduce_gradients(grads, axis_name, zero_stage)
            params, opt_state = apply_slices(grad_slices, opt_state, params)
            metrics = {"loss": loss, "grad_norm": global_norm(grad_slices, axis_name)}
            if has_aux:
                metrics["aux"] = aux
            return params, opt_state, metrics

        def step(params: Any, opt_state: Any, batch: Any) -> tuple[Any, Any, Any]:
            specs = state_specs(params)
            return shard_map(local_step, (P(), specs, P(axis_name)), (P(), specs, P()))(
                params, opt_state, batch
            )

        def init(params: Any) -> Any:
            def local_init(p: Any) -> Any:
                with use_layout(ZeroLayout(_structs(p), axis_name)):
                    return tx.init(shard_params(p, axis_name))

            return jax.jit(shard_map(local_init, P(), state_specs(params)))(params)

    jitted = jax.jit(step, donate_argnums=(0, 1) if donate else ())
    return DataParallelStep(mesh, axis_name, zero_stage, n, init, jitted)
