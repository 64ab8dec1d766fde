"""What each parallel mode communicates per step, predicted and read from compiled HLO.

With ``G`` the gradient bytes (one copy of the parameters), ``Gp`` the same with every leaf
padded to a multiple of the device count ``N``, per device and per step:

========== =========================== ===================== ===========================
mode       gradients                   updates / parameters  ring traffic sent per device
========== =========================== ===================== ===========================
plain DP   all-reduce of ``G``          (none)                ``2 (N-1)/N * G``
ZeRO-1     all-reduce of ``G``          all-gather to ``Gp``  ``2 (N-1)/N * G + (N-1)/N * Gp``
ZeRO-2     reduce-scatter ``Gp -> Gp/N`` all-gather to ``Gp``  ``2 (N-1)/N * Gp``
========== =========================== ===================== ===========================

ZeRO-2 moves the same bytes as plain data parallelism (an all-reduce *is* a reduce-scatter
plus an all-gather) while holding 1/N of the optimizer state; ZeRO-1 adds one all-gather.
On top come a few scalar all-reduces: the loss, the gradient norm, and the partial sums of
clipping and of LAMB/LARS trust ratios (two floats per leaf), which XLA often fuses into
the gradient all-reduce as extra tuple elements.

:func:`hlo_collectives` reads the collectives of a compiled program
(``jax.jit(f).lower(...).compile().as_text()``) so tests and benchmarks can check these
figures against what XLA actually emits.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from scirs2_optim_jax.parallel.layout import padded_size
from scirs2_optim_jax.parallel.zero_layout import exchange_bytes

__all__ = [
    "Collective",
    "CollectiveBytes",
    "collective_bytes",
    "expected_collective_bytes",
    "hlo_collectives",
]

_OPS = ("all-reduce", "reduce-scatter", "all-gather", "all-to-all", "collective-permute")
_INSTRUCTION = re.compile(
    r"=\s*(?P<shape>\(.*?\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?)\s+"
    r"(?P<op>" + "|".join(_OPS) + r")(?P<start>-start)?\("
)
_ARRAY = re.compile(r"(?P<dtype>[a-z]+[0-9]*)\[(?P<dims>[0-9,]*)\]")
_ITEMSIZE = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "f8e4m3fn": 1,
    "f8e5m2": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective instruction of an HLO module: its op and result shapes and bytes."""

    op: str
    shapes: tuple[str, ...]
    result_bytes: int


@dataclasses.dataclass(frozen=True)
class CollectiveBytes:
    """Result bytes per device and step, by collective kind.

    For an all-reduce the result is the reduced buffer; for a reduce-scatter, this device's
    slice (the operand is ``N`` times larger); for an all-gather, the gathered buffer.
    """

    all_reduce: int = 0
    reduce_scatter: int = 0
    all_gather: int = 0
    all_to_all: int = 0

    def ring_bytes(self, num_devices: int) -> float:
        """Bytes each device sends with ring algorithms: ``2 (N-1)/N`` of an all-reduce,
        ``(N-1)/N`` of a reduce-scatter's operand, of an all-gather's result and of an
        all-to-all's buffer (the part that leaves the device)."""
        n = num_devices
        return (
            (n - 1)
            / n
            * (2 * self.all_reduce + n * self.reduce_scatter + self.all_gather + self.all_to_all)
        )


def _array_bytes(text: str) -> int:
    total = 0
    for match in _ARRAY.finditer(text):
        dims = [int(d) for d in match["dims"].split(",") if d]
        total += math.prod(dims) * _ITEMSIZE.get(match["dtype"], 0)
    return total


def hlo_collectives(hlo_text: str) -> list[Collective]:
    """Lists the collective instructions of compiled HLO text.

    Synchronous collectives and ``*-start`` forms of all-reduce are read exactly; for other
    ``*-start`` forms, whose result tuple also holds the operand, the last array is taken.

    Args:
        hlo_text: ``compiled.as_text()`` of a compiled JAX computation.

    Returns:
        One :class:`Collective` per instruction, in program order.

    Example:
        >>> text = "%ar = f32[4,2]{1,0} all-reduce(f32[4,2]{1,0} %x), to_apply=%add"
        >>> hlo_collectives(text)
        [Collective(op='all-reduce', shapes=('f32[4,2]',), result_bytes=32)]
    """
    found = []
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.search(line)
        if match is None:
            continue
        shape, op = match["shape"], match["op"]
        arrays = [m.group(0) for m in _ARRAY.finditer(shape)]
        if match["start"] and op != "all-reduce":
            arrays = arrays[-1:]
        found.append(Collective(op, tuple(arrays), sum(_array_bytes(a) for a in arrays)))
    return found


def collective_bytes(hlo_text: str) -> CollectiveBytes:
    """Totals the result bytes of the all-reduces, reduce-scatters, all-gathers and
    all-to-alls.

    Example:
        >>> collective_bytes("%g = f32[16]{0} all-gather(f32[2]{0} %x), dimensions={0}")
        CollectiveBytes(all_reduce=0, reduce_scatter=0, all_gather=64, all_to_all=0)
    """
    totals = {"all-reduce": 0, "reduce-scatter": 0, "all-gather": 0, "all-to-all": 0}
    for collective in hlo_collectives(hlo_text):
        if collective.op in totals:
            totals[collective.op] += collective.result_bytes
    return CollectiveBytes(
        totals["all-reduce"], totals["reduce-scatter"], totals["all-gather"], totals["all-to-all"]
    )


def expected_collective_bytes(
    params_like: Any,
    num_devices: int,
    zero_stage: int,
    *,
    whole_leaves: Sequence[tuple[tuple[int, ...], Any, float]] = (),
) -> CollectiveBytes:
    """Gradient and update traffic of one data-parallel step (scalars not included).

    Args:
        params_like: the parameters (arrays or shape/dtype structs); gradients have their
            dtypes.
        num_devices: size of the data axis ``N``.
        zero_stage: 0 (plain data parallel), 1 or 2.
        whole_leaves: under ZeRO, the leaves the optimizer computes whole (Muon's matrices),
            as ``(shape, dtype, cost)`` in the order it maps them: they add two all-to-alls
            (:func:`~scirs2_optim_jax.parallel.zero_layout.exchange_bytes`).

    Returns:
        A :class:`CollectiveBytes` per device and step.

    Example:
        >>> import numpy as np
        >>> params = {"w": np.zeros((3, 3), np.float32)}  # 9 elements, padded to 16 on 8
        >>> expected_collective_bytes(params, 8, 2)
        CollectiveBytes(all_reduce=0, reduce_scatter=8, all_gather=64, all_to_all=0)
        >>> expected_collective_bytes(params, 8, 2, whole_leaves=[((3, 3), np.float32, 27.0)])
        CollectiveBytes(all_reduce=0, reduce_scatter=8, all_gather=64, all_to_all=128)
    """
    if isinstance(zero_stage, bool) or zero_stage not in (0, 1, 2):
        raise ValueError(
            f"expected_collective_bytes: zero_stage must be 0, 1 or 2, got {zero_stage!r}"
        )
    leaves = jax.tree.leaves(params_like)
    whole = sum(math.prod(np.shape(p)) * np.dtype(p.dtype).itemsize for p in leaves)
    padded = sum(
        padded_size(math.prod(np.shape(p)), num_devices) * np.dtype(p.dtype).itemsize
        for p in leaves
    )
    if zero_stage == 0:
        return CollectiveBytes(all_reduce=whole)
    exchanged = exchange_bytes(
        [tuple(s) for s, _, _ in whole_leaves],
        [d for _, d, _ in whole_leaves],
        [c for _, _, c in whole_leaves],
        num_devices,
    )
    if zero_stage == 1:
        return CollectiveBytes(all_reduce=whole, all_gather=padded, all_to_all=exchanged)
    return CollectiveBytes(
        reduce_scatter=padded // num_devices, all_gather=padded, all_to_all=exchanged
    )
