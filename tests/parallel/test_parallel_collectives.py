"""Acceptance point 7: the collectives each mode issues, checked against compiled HLO.

On 8 devices, per step and device: plain data parallelism all-reduces the gradients
(``G`` bytes); ZeRO-1 all-reduces them and all-gathers the padded updates (``Gp``);
ZeRO-2 reduce-scatters the gradients (``Gp/8`` out) and all-gathers ``Gp``, with no
gradient-sized all-reduce. What remains are scalar all-reduces (the loss, the gradient
norm, the clip's global norm), bounded below. The optimizer is clip + AdamW.
"""

from __future__ import annotations

import math

import jax
import pytest
from parallel_workers import problem

from scirs2_optim_jax import parallel

N = 8
# The loss, the gradient norm and the clip's global norm, in float32.
SCALAR_BYTES = 4 * 3


@pytest.mark.parametrize("zero_stage", [0, 1, 2])
def test_hlo_collectives_match_the_model(zero_stage: int) -> None:
    _, params, _, compiled = problem.compiled_step(N, zero_stage)
    hlo = compiled.as_text()
    measured = parallel.collective_bytes(hlo)
    expected = parallel.expected_collective_bytes(params, N, zero_stage)

    grads = sum(4 * math.prod(p.shape) for p in jax.tree.leaves(params))
    padded = sum(4 * N * parallel.zero_chunk_size(p.size, N) for p in jax.tree.leaves(params))
    assert grads == 4 * 820 and padded == 4 * 840
    assert (
        expected
        == {
            0: parallel.CollectiveBytes(all_reduce=grads),
            1: parallel.CollectiveBytes(all_reduce=grads, all_gather=padded),
            2: parallel.CollectiveBytes(reduce_scatter=padded // N, all_gather=padded),
        }[zero_stage]
    )

    assert measured.reduce_scatter == expected.reduce_scatter
    assert measured.all_gather == expected.all_gather
    assert expected.all_reduce <= measured.all_reduce <= expected.all_reduce + SCALAR_BYTES
    ops = {c.op for c in parallel.hlo_collectives(hlo)}
    assert ops <= {"all-reduce", "reduce-scatter", "all-gather"}
    if zero_stage == 2:
        # Nothing gradient-sized is all-reduced: every all-reduced array is a scalar.
        for collective in parallel.hlo_collectives(hlo):
            if collective.op == "all-reduce":
                assert set(collective.shapes) == {"f32[]"}, collective
    print(f"\nZeRO stage {zero_stage}: {measured}, ring bytes {measured.ring_bytes(N):.0f}")
