"""Memory planner: per-device bytes of a training run, before anything is allocated.

For a parameter tree (or a parameter count), an optimizer, the state dtypes, the precision,
the ZeRO stage and the number of devices on the data axis, :func:`plan_memory` predicts what
each device holds between steps:

- **params**: replicated; stored in the precision's parameter dtype (bf16/fp16 or fp32);
- **grads**: one per parameter, in the parameter dtype; ZeRO-2 keeps only a shard;
- **optimizer state**: the moments, counters etc., from ``jax.eval_shape(tx.init, params)``
  (so any optax-protocol optimizer is planned exactly, its dtypes included);
- **master weights**: the float32 copy kept by
  :func:`~scirs2_optim_jax.precision.with_master_weights`, part of the optimizer state.

ZeRO (stages 1 and 2) partitions every parameter-shaped optimizer-state leaf (moments,
master weights) the way ``scirs2_optim_jax.parallel`` does: flattened, zero-padded to a
multiple of the device count ``N`` and split, so each device holds ``ceil(size / N)``
elements of it; stage 2 does the same to the gradients. Everything else stays replicated:
parameters, step counts, and state that is not parameter-shaped, such as Adafactor's
factored row and column statistics (``rows + cols`` numbers per factored leaf, whole on
every device), which ``parallel.layout.map_state`` tells from the moments.

With :func:`~scirs2_optim_jax.engine.offload` (``offload="device"`` or ``"host"``) the
optimizer state, master weights included, lives in host memory instead: the plan moves its
bytes from the device's column to the host's (per device: under ZeRO each device's shard)
and says what crosses the host link each step. ``compute="device"`` streams the state
through device memory during the update (``update_transient_bytes``, up to the whole
state); ``compute="host"`` sends the gradients to the host and the parameters back.
:func:`compiled_memory` splits a compiled executable's arguments and outputs the same way,
so the plan can be checked against the program XLA built.

Activations depend on the model and the batch size; :func:`profile_activations` measures
them from XLA's memory analysis of the compiled forward + backward pass at two batch sizes,
and :func:`recommend_batch_size` turns the plan and the profile into a micro-batch size and
a number of gradient-accumulation steps that fit the memory budget.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scirs2_optim_jax import validation as v
from scirs2_optim_jax.config.builder import build_optimizer, optimizer_arguments
from scirs2_optim_jax.config.registry import OFFLOAD_COMPUTE
from scirs2_optim_jax.config.schema import OPTIMIZER_NAMES, OptimizerConfig, RunConfig
from scirs2_optim_jax.engine import host_step, offload_of
from scirs2_optim_jax.engine import offload as offload_transformation
from scirs2_optim_jax.engine.memory import HOST_MEMORY_KIND
from scirs2_optim_jax.parallel.layout import map_state
from scirs2_optim_jax.precision import MasterWeightsState, precision_policy, with_master_weights

__all__ = [
    "OFFLOAD",
    "ActivationProfile",
    "BatchSizeRecommendation",
    "CompiledMemory",
    "MemoryPlan",
    "abstract_params",
    "compiled_memory",
    "compiled_train_step_memory",
    "format_bytes",
    "host_memory_of_hlo",
    "plan_for_config",
    "plan_memory",
    "profile_activations",
    "recommend_batch_size",
    "zero_shard_elements",
]


# Where plan_memory can put the optimizer state besides device memory (engine.offload's
# compute argument).
OFFLOAD: tuple[str, ...] = OFFLOAD_COMPUTE


def format_bytes(n: float) -> str:
    """Formats a byte count with a binary unit.

    Example:
        >>> format_bytes(1536), format_bytes(3 * 2**30)
        ('1.50 KiB', '3.00 GiB')
    """
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def zero_shard_elements(size: int, num_devices: int) -> int:
    """Elements of a ``size``-element leaf on each of ``num_devices`` under ZeRO.

    The leaf is flattened, zero-padded to a multiple of ``num_devices`` and split evenly.

    Example:
        >>> zero_shard_elements(10, 4), zero_shard_elements(1, 8), zero_shard_elements(16, 8)
        (3, 1, 2)
    """
    return -(-size // num_devices)


def _is_floating(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.floating)


def abstract_params(params: Any, param_dtype: Any = None) -> Any:
    """``params`` as ``jax.ShapeDtypeStruct`` leaves, floating ones cast to ``param_dtype``.

    Args:
        params: a pytree of arrays or shape/dtype structs, or an integer parameter count
            (one float32 leaf of that size).
        param_dtype: dtype for the floating leaves (None: keep each leaf's).

    Returns:
        A pytree of ``jax.ShapeDtypeStruct``; nothing is allocated.

    Example:
        >>> import jax.numpy as jnp
        >>> abstract_params({"w": jnp.ones((2, 3))}, jnp.bfloat16)["w"]
        ShapeDtypeStruct(shape=(2, 3), dtype=bfloat16)
    """
    if isinstance(params, (int, np.integer)) and not isinstance(params, bool):
        count = v.check_int("abstract_params", "params", params, 1)
        params = {"params": jax.ShapeDtypeStruct((count,), jnp.float32)}

    def leaf(x: Any) -> jax.ShapeDtypeStruct:
        dtype = jnp.result_type(x.dtype if hasattr(x, "dtype") else x)
        if param_dtype is not None and _is_floating(dtype):
            dtype = jnp.dtype(param_dtype)
        return jax.ShapeDtypeStruct(np.shape(x), dtype)

    tree = jax.tree.map(leaf, params)
    if not jax.tree.leaves(tree):
        raise ValueError("abstract_params: params has no array leaves")
    return tree


def _leaf_bytes(leaf: Any, shards: int) -> int:
    size = int(np.prod(leaf.shape, dtype=np.int64))
    return zero_shard_elements(size, shards) * jnp.dtype(leaf.dtype).itemsize


def _tree_bytes(tree: Any, shards: int = 1) -> int:
    return sum(_leaf_bytes(x, shards) for x in jax.tree.leaves(tree))


def _state_bytes(leaves: list[Any], moments: set[int], shards: int) -> int:
    """Bytes of state leaves: moments (ids in ``moments``) split ``shards`` ways, the rest
    replicated."""
    return sum(_leaf_bytes(x, shards if id(x) in moments else 1) for x in leaves)


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted bytes each device holds between steps (see :func:`plan_memory`).

    ``param_bytes``, ``grad_bytes``, ``optimizer_state_bytes`` and ``master_weights_bytes``
    are per device wherever they live; ``offload`` says where the optimizer state (master
    weights included) is: None in device memory, ``"device"`` or ``"host"`` in host memory
    (the ``compute`` of :func:`~scirs2_optim_jax.engine.offload`). ``streamed_bytes`` is
    what crosses the busiest device's host link per step with offload (0 without), the
    link that sets the step's time.
    """

    num_params: int
    num_devices: int
    zero_stage: int
    precision: str
    param_bytes: int
    grad_bytes: int
    optimizer_state_bytes: int
    master_weights_bytes: int
    offload: str | None = None
    streamed_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        """Params + grads + optimizer state + master weights, per device, wherever they
        live (``device_bytes + host_bytes``)."""
        return (
            self.param_bytes
            + self.grad_bytes
            + self.optimizer_state_bytes
            + self.master_weights_bytes
        )

    @property
    def persistent_bytes(self) -> int:
        """What lives across steps (params, optimizer state, master weights), per device."""
        return self.param_bytes + self.optimizer_state_bytes + self.master_weights_bytes

    @property
    def state_bytes(self) -> int:
        """Optimizer state + master weights, per device."""
        return self.optimizer_state_bytes + self.master_weights_bytes

    @property
    def host_bytes(self) -> int:
        """Host memory per device: the offloaded state (its ZeRO shard), else 0."""
        return self.state_bytes if self.offload is not None else 0

    @property
    def device_bytes(self) -> int:
        """Device memory per device between steps: ``total_bytes`` less ``host_bytes``
        (with offload: params + grads)."""
        return self.total_bytes - self.host_bytes

    @property
    def update_transient_bytes(self) -> int:
        """Device memory the update may need on top of ``device_bytes``: with
        ``offload="device"`` the state streams through device memory (up to all of it at
        once, as XLA schedules the copies); 0 otherwise."""
        return self.state_bytes if self.offload == "device" else 0

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data, ``total_bytes``, ``device_bytes``, ``host_bytes`` and
        ``update_transient_bytes`` included."""
        return {
            **asdict(self),
            "total_bytes": self.total_bytes,
            "device_bytes": self.device_bytes,
            "host_bytes": self.host_bytes,
            "update_transient_bytes": self.update_transient_bytes,
        }

    def describe(self) -> str:
        """A human-readable table of the plan.

        Example:
            >>> print(plan_memory(1000, "adamw", offload="device").describe())
            memory per device: 1,000 params, fp32, ZeRO stage 0, 1 device(s)
              optimizer state in host memory (offload compute="device": streamed for each update)
              params           device      3.91 KiB  (4,000 B)
              grads            device      3.91 KiB  (4,000 B)
              optimizer state  host        7.82 KiB  (8,004 B)
              master weights   host             0 B  (0 B)
              device memory                7.81 KiB  (8,000 B)
              host memory                  7.82 KiB  (8,004 B)
              total                       15.63 KiB  (16,004 B)
              streamed/step               15.63 KiB  (16,008 B)  state to the device and back
              the state streams through device memory during the update: the peak then
              may include up to 7.82 KiB (8,004 B) more (update_transient_bytes)
        """
        head = (
            f"memory per device: {self.num_params:,} params, {self.precision}, "
            f"ZeRO stage {self.zero_stage}, {self.num_devices} device(s)"
        )
        if self.offload is None:
            rows = [
                ("params", self.param_bytes),
                ("grads", self.grad_bytes),
                ("optimizer state", self.optimizer_state_bytes),
                ("master weights", self.master_weights_bytes),
                ("total", self.total_bytes),
            ]
            lines = [head] + [f"  {name:<16}{format_bytes(n):>12}  ({n:,} B)" for name, n in rows]
            return "\n".join(lines)

        def row(name: str, where: str, n: int, note: str = "") -> str:
            line = f"  {name:<17}{where:<8}{format_bytes(n):>12}  ({n:,} B)"
            return f"{line}  {note}" if note else line

        moved = (
            "state to the device and back"
            if self.offload == "device"
            else "grads down, params up (and down, without master weights)"
        )
        where = (
            "streamed for each update" if self.offload == "device" else "updated on the host's CPU"
        )
        lines = [
            head,
            f'  optimizer state in host memory (offload compute="{self.offload}": {where})',
            row("params", "device", self.param_bytes),
            row("grads", "device", self.grad_bytes),
            row("optimizer state", "host", self.optimizer_state_bytes),
            row("master weights", "host", self.master_weights_bytes),
            row("device memory", "", self.device_bytes),
            row("host memory", "", self.host_bytes),
            row("total", "", self.total_bytes),
            row("streamed/step", "", self.streamed_bytes, moved),
        ]
        if self.update_transient_bytes:
            n = self.update_transient_bytes
            lines.append(
                "  the state streams through device memory during the update: the peak then\n"
                f"  may include up to {format_bytes(n)} ({n:,} B) more (update_transient_bytes)"
            )
        return "\n".join(lines)


def _split_master(state: Any) -> tuple[list[Any], list[Any]]:
    """(master-weight leaves, other leaves) of an abstract optimizer state."""
    master: list[Any] = []
    other: list[Any] = []
    nodes = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, MasterWeightsState))
    for node in nodes:
        if isinstance(node, MasterWeightsState):
            master.extend(jax.tree.leaves(node.master))
            more_master, rest = _split_master(node.inner_state)
            master.extend(more_master)
            other.extend(rest)
        else:
            other.append(node)
    return master, other


def _host_keeps_master(tx: Any) -> bool:
    """Whether the host step of ``offload(tx, compute="host")`` reads its master weights
    rather than the parameters (then only gradients go down)."""
    if offload_of(tx) is None:
        tx = offload_transformation(tx, compute="host")
    step = host_step(tx)
    return bool(step is not None and step.master)


def plan_memory(
    params: Any,
    optimizer: str | optax.GradientTransformation = "adamw",
    *,
    precision: str = "fp32",
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    master_weights: bool | None = None,
    zero_stage: int = 0,
    num_devices: int = 1,
    offload: str | None = None,
) -> MemoryPlan:
    """Predicts the per-device bytes of params, grads, optimizer state and master weights.

    Args:
        params: the parameter pytree (arrays or ``jax.ShapeDtypeStruct``, e.g. from
            ``jax.eval_shape``) or a parameter count (one flat leaf).
        optimizer: an alias name from :mod:`scirs2_optim_jax.optimizers` or any
            ``optax.GradientTransformation``; its state is derived with ``jax.eval_shape``.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the dtype of params and grads.
        mu_dtype, nu_dtype: moment dtypes for a named optimizer (default: the dtype the
            optimizer is initialised with: float32 with master weights).
        master_weights: wrap a named optimizer in
            :func:`~scirs2_optim_jax.precision.with_master_weights` (default: when
            ``precision`` is not fp32). A transformation passed in is planned as it is.
        zero_stage: 0 (replicated), 1 (optimizer state sharded) or 2 (also gradients).
        num_devices: devices on the data axis.
        offload: None (the state in device memory), ``"device"`` or ``"host"``: the state
            (master weights included) in host memory, as
            ``engine.offload(tx, compute=offload)`` keeps it. An ``offload``-ed
            transformation passed as ``optimizer`` is planned with its own ``compute``.

    Returns:
        A :class:`MemoryPlan`.

    Raises:
        ValueError: an argument is out of range, or ``offload`` is not None, ``"device"``
            or ``"host"``, or differs from the ``compute`` of an offloaded ``optimizer``.

    Example:
        >>> plan = plan_memory(1_000_000, "adamw")
        >>> plan.param_bytes, plan.optimizer_state_bytes  # fp32 mu and nu, plus a count
        (4000000, 8000004)
        >>> plan_memory(1_000_000, "adamw", zero_stage=1, num_devices=8).optimizer_state_bytes
        1000004
        >>> offloaded = plan_memory(1_000_000, "adamw", precision="bf16", offload="host")
        >>> offloaded.device_bytes, offloaded.host_bytes  # bf16 params + grads; fp32 state
        (4000000, 12000004)
    """
    fn = "plan_memory"
    policy = precision_policy(precision)
    stage = v.check_int(fn, "zero_stage", zero_stage, 0)
    if stage > 2:
        raise ValueError(f"{fn}: zero_stage must be 0, 1 or 2, got {zero_stage!r}")
    devices = v.check_int(fn, "num_devices", num_devices, 1)
    if offload is not None and (not isinstance(offload, str) or offload not in OFFLOAD):
        raise ValueError(f"{fn}: offload must be None, 'device' or 'host', got {offload!r}")
    abstract = abstract_params(params, policy.param_dtype)
    offloaded = None  # the optimizer, when it is offloaded itself
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZER_NAMES:
            raise ValueError(
                f"{fn}: optimizer must be one of {', '.join(OPTIMIZER_NAMES)} or an "
                f"optax.GradientTransformation, got {optimizer!r}"
            )
        from scirs2_optim_jax import optimizers

        dtypes = {
            "mu_dtype": None if mu_dtype is None else jnp.dtype(mu_dtype).name,
            "nu_dtype": None if nu_dtype is None else jnp.dtype(nu_dtype).name,
        }
        kwargs = optimizer_arguments(
            OptimizerConfig(name=optimizer, **{k: v for k, v in dtypes.items() if v})
        )
        tx: optax.GradientTransformation = getattr(optimizers, optimizer)(1e-3, **kwargs)
        if policy.is_mixed if master_weights is None else master_weights:
            tx = with_master_weights(tx)
    elif isinstance(optimizer, optax.GradientTransformation):
        if mu_dtype is not None or nu_dtype is not None or master_weights is not None:
            raise ValueError(
                f"{fn}: mu_dtype, nu_dtype and master_weights apply to a named optimizer; "
                "build them into the transformation instead"
            )
        tx = optimizer
        described = offload_of(tx)
        if described is not None:
            if offload is not None and offload != described.compute:
                raise ValueError(
                    f"{fn}: offload={offload!r} differs from the optimizer's own "
                    f"offload(compute={described.compute!r}); pass offload=None or "
                    f"{described.compute!r}"
                )
            offload, offloaded, tx = described.compute, tx, described.inner
    else:
        raise TypeError(
            f"{fn}: optimizer must be a name or an optax.GradientTransformation, got {optimizer!r}"
        )
    state = jax.eval_shape(tx.init, abstract)
    master, other = _split_master(state)
    state_shards = devices if stage >= 1 else 1
    marks = map_state(
        state,
        abstract,
        lambda *_: True,
        lambda *_: False,
        single_leaf_is_moment=lambda leaf, param: np.shape(leaf) == np.shape(param),
    )
    moments = {
        id(leaf)
        for leaf, mark in zip(jax.tree.leaves(state), jax.tree.leaves(marks), strict=True)
        if mark
    }
    floating = [x for x in jax.tree.leaves(abstract) if _is_floating(x.dtype)]
    param_bytes = _tree_bytes(abstract)
    state_bytes = _state_bytes(other, moments, state_shards)
    master_bytes = _state_bytes(master, moments, state_shards)
    if offload == "device":  # the state to the device for the update, and back
        streamed = 2 * (state_bytes + master_bytes)
    elif offload == "host":
        # Over the busiest device's link: the gradients go down (under ZeRO each device its
        # slice; without it one device sends them whole), the new parameters come up as
        # each device's slice (all-gathered on the devices), and without master weights
        # the parameters go down too, whole, from one device.
        streamed = _tree_bytes(floating, devices if stage >= 1 else 1)
        streamed += _tree_bytes(abstract, devices)
        if not _host_keeps_master(offloaded or tx):
            streamed += param_bytes
    else:
        streamed = 0
    return MemoryPlan(
        num_params=sum(int(np.prod(x.shape, dtype=np.int64)) for x in jax.tree.leaves(abstract)),
        num_devices=devices,
        zero_stage=stage,
        precision=precision,
        param_bytes=param_bytes,
        grad_bytes=_tree_bytes(floating, devices if stage >= 2 else 1),
        optimizer_state_bytes=state_bytes,
        master_weights_bytes=master_bytes,
        offload=offload,
        streamed_bytes=streamed,
    )


def plan_for_config(
    config: RunConfig, params: Any, *, num_devices: int | None = None
) -> MemoryPlan:
    """:func:`plan_memory` for the optimizer, precision, ZeRO stage and optimizer-state
    offload (``parallel.offload_optimizer``) of a run config.

    Args:
        config: the run config (its feature flags applied).
        params: the parameter tree or count.
        num_devices: devices on the data axis (default: ``parallel.num_devices``, else 1).

    Returns:
        A :class:`MemoryPlan`.

    Example:
        >>> from scirs2_optim_jax.config import production_default
        >>> plan_for_config(production_default(), 1000).master_weights_bytes
        0
    """
    if not isinstance(config, RunConfig):
        raise TypeError(f"plan_for_config: config must be a RunConfig, got {config!r}")
    devices = num_devices if num_devices is not None else config.parallel.num_devices or 1
    return plan_memory(
        params,
        build_optimizer(config),
        precision=config.precision.mode,
        zero_stage=config.parallel.zero_stage,
        num_devices=devices,
        offload=config.parallel.offload_optimizer,
    )


@dataclass(frozen=True)
class CompiledMemory:
    """XLA's memory analysis of a compiled function, in bytes (per device).

    ``argument_bytes``, ``output_bytes``, ``alias_bytes`` and ``temp_bytes`` are in device
    memory; the ``host_*`` fields are the arguments, outputs, aliases and temporaries in
    host memory (e.g. an :func:`~scirs2_optim_jax.engine.offload`-ed optimizer state).
    """

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    generated_code_bytes: int
    host_argument_bytes: int = 0
    host_output_bytes: int = 0
    host_alias_bytes: int = 0
    host_temp_bytes: int = 0

    @property
    def peak_bytes(self) -> int:
        """Device memory: arguments + outputs not aliased to arguments + temporaries."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


# XLA's memory space of host memory in a layout (``Layout::kHostMemorySpace``), written
# ``S(5)`` in HLO text.
_HOST_MEMORY_SPACE = 5
_HLO_BITS = {
    "pred": 8,
    "s2": 2,
    "u2": 2,
    "s4": 4,
    "u4": 4,
    "s8": 8,
    "u8": 8,
    "s16": 16,
    "u16": 16,
    "f16": 16,
    "bf16": 16,
    "s32": 32,
    "u32": 32,
    "f32": 32,
    "s64": 64,
    "u64": 64,
    "f64": 64,
    "c64": 64,
    "c128": 128,
}
# An array shape with its layout: ``f32[64,32]{1,0:S(5)}``, ``s32[]{:S(5)}``, ``bf16[8]{0}``.
_HLO_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([^\]]*)\](\{[^{}]*\})?")
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")
_ALIAS = re.compile(r"\{[\d,\s]*\}\s*:\s*\((\d+)\s*,")


def _array_bytes(dtype: str, dims: str) -> int | None:
    bits = _HLO_BITS.get(dtype) or (8 if dtype.startswith("f8") else None)
    if bits is None:
        return None
    size = math.prod(int(d) for d in re.findall(r"\d+", dims)) if dims.strip() else 1
    return -(-size * bits // 8)


def _matching(text: str, start: int) -> int:
    """The index just past the bracket that closes the one at ``text[start]``."""
    pairs = {"(": ")", "{": "}"}
    depth, opener = 0, text[start]
    for i in range(start, len(text)):
        if text[i] == opener:
            depth += 1
        elif text[i] == pairs[opener]:
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError("unbalanced brackets")


def _host_arrays(section: str) -> list[int | None]:
    """Per array of a layout section: its bytes if it is in host memory (``S(5)``), 0 if in
    device memory, None if its size is unknown."""
    sizes: list[int | None] = []
    for dtype, dims, layout in _HLO_ARRAY.findall(section):
        space = _MEMORY_SPACE.search(layout or "")
        host = space is not None and int(space.group(1)) == _HOST_MEMORY_SPACE
        sizes.append(_array_bytes(dtype, dims) if host else 0)
    return sizes


def host_memory_of_hlo(text: str) -> tuple[int, int, int] | None:
    """Host-memory bytes of an HLO module's entry parameters, outputs and aliased
    parameters, from its ``entry_computation_layout`` (arrays marked ``S(5)``).

    Backends whose memory analysis does not split host from device memory (CPU) still
    mark the layout so; :func:`compiled_memory` uses this there.

    Returns:
        ``(host_argument_bytes, host_output_bytes, host_alias_bytes)``, or None when the
        text has no entry computation layout or an array of unknown size is in host memory.

    Example:
        >>> text = (
        ...     "HloModule m, input_output_alias={ {1}: (1, {}, may-alias) }, "
        ...     "entry_computation_layout={(f32[8]{0}, f32[4,2]{1,0:S(5)})"
        ...     "->(f32[8]{0}, f32[4,2]{1,0:S(5)})}"
        ... )
        >>> host_memory_of_hlo(text)
        (32, 32, 32)
    """
    header = text.split("\n", 1)[0]
    header = re.sub(r"/\*.*?\*/", "", header)
    at = header.find("entry_computation_layout=")
    if at < 0:
        return None
    start = header.index("{", at)
    try:
        layout = header[start + 1 : _matching(header, start) - 1]
    except ValueError:
        return None
    if "->" not in layout:
        return None
    if layout.startswith("("):
        end = _matching(layout, 0)
        params_text, outputs_text = layout[1 : end - 1], layout[end:].lstrip()[2:]
    else:
        params_text, outputs_text = layout.split("->", 1)
    # One entry per top-level parameter (a tuple parameter sums its arrays).
    params: list[int | None] = []
    depth, begin = 0, 0
    for i, ch in enumerate(params_text + ","):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif ch == "," and depth == 0:
            sizes = _host_arrays(params_text[begin:i])
            params.append(None if None in sizes else sum(s for s in sizes if s))
            begin = i + 1
    outputs = _host_arrays(outputs_text)
    if None in params or None in outputs:
        return None
    aliased = {int(n) for n in _ALIAS.findall(header[:at])}
    host_args = sum(p or 0 for p in params)
    host_alias = sum(params[n] or 0 for n in aliased if n < len(params))
    return host_args, sum(o or 0 for o in outputs), host_alias


def compiled_memory(compiled: Any) -> CompiledMemory | None:
    """The memory analysis of a ``jax.stages.Compiled``, or None if the backend gives none.

    Arguments, outputs, aliases and temporaries are split into device and host memory: from
    the analysis' own ``host_*`` figures where the backend fills them (GPU), else from the
    ``S(5)`` (host memory space) marks of the program's entry layout (CPU, whose analysis
    counts host-memory arguments with the device's), see :func:`host_memory_of_hlo`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> compiled = jax.jit(lambda x: x * 2).lower(jnp.ones(256)).compile()
        >>> compiled_memory(compiled).argument_bytes
        1024
        >>> host = jax.sharding.SingleDeviceSharding(jax.devices()[0], memory_kind="pinned_host")
        >>> x = jax.ShapeDtypeStruct((256,), jnp.float32, sharding=host)
        >>> step = jax.jit(lambda x, y: jax.device_put(x, jax.memory.Space.Device)[:8] + y)
        >>> memory = compiled_memory(step.lower(x, jnp.ones(8)).compile())
        >>> memory.argument_bytes, memory.host_argument_bytes
        (32, 1024)
    """
    try:
        stats = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        return None
    if stats is None:
        return None
    memory = CompiledMemory(
        argument_bytes=int(stats.argument_size_in_bytes),
        output_bytes=int(stats.output_size_in_bytes),
        alias_bytes=int(stats.alias_size_in_bytes),
        temp_bytes=int(stats.temp_size_in_bytes),
        generated_code_bytes=int(stats.generated_code_size_in_bytes),
        host_argument_bytes=int(getattr(stats, "host_argument_size_in_bytes", 0) or 0),
        host_output_bytes=int(getattr(stats, "host_output_size_in_bytes", 0) or 0),
        host_alias_bytes=int(getattr(stats, "host_alias_size_in_bytes", 0) or 0),
        host_temp_bytes=int(getattr(stats, "host_temp_size_in_bytes", 0) or 0),
    )
    if memory.host_argument_bytes or memory.host_output_bytes or memory.host_temp_bytes:
        return memory  # the backend split them (it counts host memory apart)
    try:
        text = compiled.as_text()
    except (NotImplementedError, RuntimeError):
        return memory
    host = host_memory_of_hlo(text) if isinstance(text, str) else None
    if host is None or not any(host):
        return memory
    args, outputs, alias = host
    return dataclasses.replace(
        memory,
        argument_bytes=memory.argument_bytes - args,
        output_bytes=memory.output_bytes - outputs,
        alias_bytes=max(0, memory.alias_bytes - alias),
        host_argument_bytes=args,
        host_output_bytes=outputs,
        host_alias_bytes=alias if memory.alias_bytes else 0,
    )


def compiled_train_step_memory(
    tx: optax.GradientTransformation,
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    batch: Any,
) -> CompiledMemory | None:
    """Compiles one train step from shapes alone and returns its memory analysis.

    The step is ``grads = grad(loss_fn)(params, batch)``, ``tx.update``, apply, with params
    and optimizer state donated; it is lowered from ``jax.ShapeDtypeStruct`` inputs, so
    nothing is allocated. Its ``argument_bytes`` minus the batch's bytes is what the plan
    calls :attr:`MemoryPlan.persistent_bytes` (params, optimizer state, master weights).

    For an ``engine.offload(tx, compute="device")`` the state is an argument in host
    memory (``host_argument_bytes``), so ``argument_bytes`` minus the batch is the params
    alone. For ``compute="host"`` the update is not part of a device program: the device
    program compiled is the loss and the gradients, its arguments params and batch.

    Args:
        tx: the optimizer.
        loss_fn: ``loss_fn(params, batch) -> scalar loss``.
        params: parameter tree (arrays or shape structs).
        batch: a batch (arrays or shape structs).

    Returns:
        The step's :class:`CompiledMemory`, or None if the backend has no memory analysis.
    """
    abstract = abstract_params(params)
    abstract_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), batch)
    described = offload_of(tx)
    if described is not None and described.compute == "host":
        grads_program = jax.jit(jax.value_and_grad(loss_fn))
        return compiled_memory(grads_program.lower(abstract, abstract_batch).compile())
    if described is not None:  # eval_shape drops the memory kind: put it back
        state = jax.eval_shape(described.inner.init, abstract)
        host = jax.sharding.SingleDeviceSharding(jax.devices()[0], memory_kind=HOST_MEMORY_KIND)
        state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=host), state)
    else:
        state = jax.eval_shape(tx.init, abstract)

    def step(p: Any, s: Any, b: Any) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(p, b)
        updates, s = tx.update(grads, s, p)
        p = jax.tree.map(lambda x, u: (x + u).astype(x.dtype), p, updates)
        return p, s, loss

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(abstract, state, abstract_batch).compile()
    return compiled_memory(compiled)


@dataclass(frozen=True)
class ActivationProfile:
    """Activation memory as a linear function of the per-device batch size.

    ``bytes_at(b) = fixed_bytes + per_example_bytes * b`` covers the batch itself and XLA's
    temporaries of the forward + backward pass (activations saved for the backward pass,
    workspace); gradients and the persistent state are in the :class:`MemoryPlan`.
    """

    fixed_bytes: int
    per_example_bytes: int
    batch_sizes: tuple[int, int]

    def bytes_at(self, batch_size: int) -> int:
        """Predicted activation bytes at ``batch_size`` examples per device."""
        return self.fixed_bytes + self.per_example_bytes * batch_size


def profile_activations(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    batch_for: Callable[[int], Any],
    batch_sizes: tuple[int, int] = (8, 16),
) -> ActivationProfile | None:
    """Measures activation memory from the compiled forward + backward pass.

    Compiles ``jax.grad(loss_fn)`` (from shapes alone) at two batch sizes and fits
    ``temporaries + batch bytes`` linearly in the batch size.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        params: parameter tree (arrays or shape structs).
        batch_for: ``batch_for(b)`` returns a batch of ``b`` examples (arrays or
            ``jax.ShapeDtypeStruct``).
        batch_sizes: two different batch sizes to measure at.

    Returns:
        An :class:`ActivationProfile`, or None if the backend has no memory analysis.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> loss = lambda p, x: jnp.sum(jnp.tanh(x @ p["w"]) ** 2)
        >>> batch = lambda b: jax.ShapeDtypeStruct((b, 64), jnp.float32)
        >>> profile = profile_activations(loss, {"w": jnp.ones((64, 64))}, batch)
        >>> profile.per_example_bytes > 0
        True
    """
    fn = "profile_activations"
    small, large = (v.check_int(fn, "batch_sizes", b, 1) for b in batch_sizes)
    if small == large:
        raise ValueError(f"{fn}: batch_sizes must be two different sizes, got {batch_sizes!r}")
    abstract = abstract_params(params)
    param_bytes = _tree_bytes(abstract)
    grad_fn = jax.jit(jax.grad(loss_fn))
    measured = []
    for b in (small, large):
        batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), batch_for(b))
        memory = compiled_memory(grad_fn.lower(abstract, batch).compile())
        if memory is None:
            return None
        measured.append(memory.temp_bytes + memory.argument_bytes - param_bytes)
    per_example = max(0, math.ceil((measured[1] - measured[0]) / (large - small)))
    fixed = max(0, measured[0] - per_example * small)
    return ActivationProfile(fixed, per_example, (small, large))


@dataclass(frozen=True)
class BatchSizeRecommendation:
    """A micro-batch size and accumulation steps that reach a target global batch.

    ``micro_batch_size * accumulation_steps * num_devices == global_batch_size``.
    ``fits`` is False when even one example per device exceeds the budget.
    """

    global_batch_size: int
    num_devices: int
    micro_batch_size: int
    accumulation_steps: int
    per_device_bytes: int
    budget_bytes: int
    fits: bool

    def describe(self) -> str:
        """One line for people."""
        verdict = "fits" if self.fits else "does NOT fit"
        return (
            f"batch {self.global_batch_size} = {self.micro_batch_size} per device x "
            f"{self.accumulation_steps} accumulation step(s) x {self.num_devices} device(s): "
            f"{format_bytes(self.per_device_bytes)} per device, {verdict} in "
            f"{format_bytes(self.budget_bytes)}"
        )


def _step_bytes(plan: MemoryPlan, activations: ActivationProfile, micro: int) -> int:
    return plan.device_bytes + max(activations.bytes_at(micro), plan.update_transient_bytes)


def recommend_batch_size(
    plan: MemoryPlan,
    activations: ActivationProfile,
    available_bytes: int,
    global_batch_size: int,
    *,
    max_fraction: float = 0.9,
) -> BatchSizeRecommendation:
    """The largest micro-batch that fits, and the accumulation steps to reach the batch.

    Per device the step needs ``plan.device_bytes + activations.bytes_at(micro)`` (without
    offload ``device_bytes`` is ``total_bytes``; with ``offload="device"`` the update's
    streamed state, ``plan.update_transient_bytes``, counts instead of the activations when
    it is larger: the backward pass has freed them by the update); the budget is
    ``max_fraction * available_bytes``. The micro-batch divides the per-device batch
    (``global_batch_size / plan.num_devices``) exactly, so the accumulated batch is exactly
    ``global_batch_size``.

    Args:
        plan: the state plan.
        activations: the activation profile (e.g. from :func:`profile_activations`).
        available_bytes: memory per device.
        global_batch_size: examples per optimizer step over all devices; a multiple of
            ``plan.num_devices``.
        max_fraction: share of ``available_bytes`` to plan for, in (0, 1].

    Returns:
        A :class:`BatchSizeRecommendation`.

    Example:
        >>> plan = plan_memory(1000, "adam")
        >>> profile = ActivationProfile(fixed_bytes=0, per_example_bytes=1000, batch_sizes=(1, 2))
        >>> rec = recommend_batch_size(plan, profile, 100_000, 256, max_fraction=1.0)
        >>> rec.micro_batch_size, rec.accumulation_steps
        (64, 4)
    """
    fn = "recommend_batch_size"
    available = v.check_int(fn, "available_bytes", available_bytes, 1)
    target = v.check_int(fn, "global_batch_size", global_batch_size, 1)
    if not (isinstance(max_fraction, (int, float)) and 0 < max_fraction <= 1):
        raise ValueError(f"{fn}: max_fraction must be a number in (0, 1], got {max_fraction!r}")
    if target % plan.num_devices:
        raise ValueError(
            f"{fn}: global_batch_size must be a multiple of the {plan.num_devices} devices, "
            f"got {target}"
        )
    budget = int(available * max_fraction)
    per_device = target // plan.num_devices
    for steps in range(1, per_device + 1):
        if per_device % steps:
            continue
        micro = per_device // steps
        need = _step_bytes(plan, activations, micro)
        if need <= budget:
            return BatchSizeRecommendation(
                target, plan.num_devices, micro, steps, need, budget, True
            )
    need = _step_bytes(plan, activations, 1)
    return BatchSizeRecommendation(target, plan.num_devices, 1, per_device, need, budget, False)
