"""ADOPT and Schedule-Free AdamW are elementwise: ZeRO-1 and ZeRO-2 on 8 devices equal one.

30 steps of the shared NNX MLP (no leaf divides 8, so the slices are padded), with the
data-parallel step on 8 fake CPU devices against the plain optimizer on the whole batch on
one device. For schedule-free, the evaluation parameters of the gathered state agree too.
"""

from __future__ import annotations

import jax
import optax
import pytest
from helpers import assert_trees_close
from parallel_workers import problem

import scirs2_optim_jax as so
from scirs2_optim_jax import parallel

STEPS = 30
TXS = {
    "adopt": lambda: so.adopt(so.warmup_stable_decay(3e-2, 5, 10, STEPS), nesterov=True),
    "schedule_free_adamw": lambda: so.schedule_free_adamw(3e-2, warmup_steps=5, weight_decay=1e-2),
}


def _reference(name: str):
    graphdef, params = problem.make_model()
    loss_fn = problem.make_loss_fn(graphdef)
    tx = TXS[name]()

    @jax.jit
    def step(p, s, batch):
        updates, s = tx.update(jax.grad(loss_fn)(p, batch), s, p)
        return optax.apply_updates(p, updates), s

    state = tx.init(params)
    for batch in problem.make_batches(STEPS):
        params, state = step(params, state, batch)
    return params, state


@pytest.mark.parametrize("name", sorted(TXS))
@pytest.mark.parametrize("zero_stage", [1, 2])
def test_zero_on_8_devices_equals_one_device(name: str, zero_stage: int) -> None:
    expected_params, expected_state = _reference(name)
    graphdef, params = problem.make_model()
    mesh = parallel.make_data_mesh(8)
    step = parallel.make_data_parallel_step(
        problem.make_loss_fn(graphdef), TXS[name](), mesh, zero_stage=zero_stage
    )
    params, opt_state = step.init(params)
    for batch in problem.make_batches(STEPS):
        params, opt_state, _ = step(params, opt_state, batch)
    assert_trees_close(params, expected_params, rtol=1e-5, atol=1e-6)
    # The state is sharded (padded 1-D slices); gathered, it is the one-device state.
    assert all(leaf.size % 8 for leaf in jax.tree.leaves(params))
    whole = parallel.zero_state_to_canonical(opt_state, params)
    assert_trees_close(
        jax.tree.leaves(whole), jax.tree.leaves(expected_state), rtol=1e-5, atol=1e-6
    )
    if name == "schedule_free_adamw":
        assert_trees_close(
            so.schedule_free_eval_params(whole, params),
            so.schedule_free_eval_params(expected_state, expected_params),
            rtol=1e-5,
            atol=1e-6,
        )
