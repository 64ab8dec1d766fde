"""Acceptance point 3: data parallel, ZeRO-1 and ZeRO-2 equal a single-device run.

50 steps of an NNX MLP whose leaf sizes do not divide 8, on 8 fake CPU devices, with
clipping + AdamW on a warmup-cosine schedule and with LAMB. One optimizer object (built
with ``axis_name="data"``) serves all three modes; the reference is the plain optimizer
(no axis name) on the whole batch on one device.
"""

from __future__ import annotations

import jax
import pytest
from helpers import assert_trees_close
from parallel_workers import problem

from scirs2_optim_jax import parallel

STEPS = 50


@pytest.mark.parametrize("name", ["clip_adamw", "lamb"])
@pytest.mark.parametrize("zero_stage", [0, 1, 2])
def test_data_parallel_equals_single_device(name: str, zero_stage: int) -> None:
    expected_params, expected_norms = problem.reference_run(name, STEPS)
    graphdef, params = problem.make_model()
    # Both mesh axis types: every stage runs once on each across the two optimizers.
    mesh = parallel.make_data_mesh(8, axis_type="auto" if name == "lamb" else "explicit")
    step = parallel.make_data_parallel_step(
        problem.make_loss_fn(graphdef),
        problem.make_tx(name, "data", STEPS),
        mesh,
        zero_stage=zero_stage,
    )
    params, opt_state = step.init(params)
    norms = []
    for batch in problem.make_batches(STEPS):
        params, opt_state, metrics = step(params, opt_state, batch)
        norms.append(float(metrics["grad_norm"]))
    assert_trees_close(params, expected_params, rtol=1e-5, atol=1e-6)
    assert_trees_close(tuple(norms), expected_norms, rtol=1e-5)
    if name == "clip_adamw":
        # The clip was active, so a per-shard norm would have changed the result.
        assert max(expected_norms) > problem.CLIP
    # Padding is real: no leaf of the model divides the 8 devices.
    assert all(leaf.size % 8 for leaf in jax.tree.leaves(params))
