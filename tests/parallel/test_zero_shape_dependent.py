"""ZeRO never trains a shape-dependent optimizer wrongly: exact for so.muon / so.adafactor,
a named error for everything else that is not exact on flat slices.

On 8 fake CPU devices, with the NNX MLP of the other parallel tests (leaves 13x29, 29,
29x11, 11, 11x7, 7: none divides 8, so every slice is padded):

- Muon and Adafactor under ``make_data_parallel_step`` at ZeRO-1 and ZeRO-2 equal one
  device (rtol 1e-4) over 30 steps;
- Muon's extra traffic (two all-to-alls) and Adafactor's (row/column all-reduces) are read
  from the compiled HLO and equal the model; each matrix's Newton-Schulz iterations sit in
  exactly one branch of the per-device ``conditional``, and run on one device only;
- optax's shape-dependent transformations (``contrib.muon``, ``adafactor``,
  ``adaptive_grad_clip``, ``clip_by_block_rms``, ...) raise a ValueError naming them, from
  ``zero(...)``, ``make_data_parallel_step`` and ``zero_gspmd``;
- every transformation of this package either runs exactly under ``zero`` or raises.
"""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from helpers import assert_trees_close
from jax.sharding import PartitionSpec as P
from parallel_workers import problem

import scirs2_optim_jax as so
from scirs2_optim_jax import parallel
from scirs2_optim_jax.config import plan_memory
from scirs2_optim_jax.parallel.zero_layout import ZeroLayout, exchange_plan
from scirs2_optim_jax.transforms.shard_layout import map_whole_leaves, use_layout

N = 8
STEPS = 30


def _muon() -> optax.GradientTransformation:
    return so.muon(0.02, weight_decay=0.01)


def _adafactor() -> optax.GradientTransformation:
    # Threshold 8: 13x29 and 29x11 are factored, 11x7 is not; a rank-based decay mask.
    return so.adafactor(
        0.01,
        min_dim_size_to_factor=8,
        momentum=0.9,
        weight_decay_rate=1e-3,
        weight_decay_mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p),
    )


OPTIMIZERS = {"muon": _muon, "adafactor": _adafactor}


def _step(tx: optax.GradientTransformation, n: int, stage: int) -> parallel.DataParallelStep:
    graphdef, _ = problem.make_model()
    return parallel.make_data_parallel_step(
        problem.make_loss_fn(graphdef), tx, parallel.make_data_mesh(n), zero_stage=stage
    )


@functools.cache
def _run(name: str, n: int, stage: int) -> tuple[dict, object]:
    step = _step(OPTIMIZERS[name](), n, stage)
    params, state = step.init(problem.make_model()[1])
    for batch in problem.make_batches(STEPS):
        params, state, _ = step(params, state, batch)
    return params, state


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_zero_equals_one_device(name: str, stage: int) -> None:
    expected, _ = _run(name, 1, 0)
    got, state = _run(name, N, stage)
    assert_trees_close(got, expected, rtol=1e-4, atol=1e-6)
    # The state stays sharded like any moment: its canonical layout is tx.init(params)'s.
    canonical = parallel.zero_state_to_canonical(state, got)
    reference = OPTIMIZERS[name]().init(problem.make_model()[1])
    assert jax.tree.structure(canonical) == jax.tree.structure(reference)
    for a, b in zip(jax.tree.leaves(canonical), jax.tree.leaves(reference), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype


def test_zero_state_is_planned_exactly() -> None:
    """Per-device state bytes of ZeRO-1 on 8 devices equal plan_memory's: moments sharded,
    Adafactor's row/column statistics and the counts replicated."""
    params = problem.make_model()[1]
    for name in sorted(OPTIMIZERS):
        _, state = _run(name, N, 1)
        device = jax.devices()[0]
        actual = sum(
            shard.data.nbytes
            for leaf in jax.tree.leaves(state)
            for shard in leaf.addressable_shards
            if shard.device == device
        )
        plan = plan_memory(params, OPTIMIZERS[name](), zero_stage=1, num_devices=N)
        assert plan.optimizer_state_bytes == actual, name


def _hlo(name: str, stage: int) -> str:
    step = _step(OPTIMIZERS[name](), N, stage)
    params, state = step.init(problem.make_model()[1])
    return step.lower(params, state, problem.make_batches(1)[0]).compile().as_text()


def _matrices(params: dict) -> list[tuple[tuple[int, ...], object, float]]:
    """Muon's matrices in leaf order, with the cost its owners are balanced by."""
    return [
        (x.shape, x.dtype, float(x.shape[0] * x.shape[1] * min(x.shape)))
        for x in jax.tree.leaves(params)
        if x.ndim == 2
    ]


def _computations(hlo: str) -> dict[str, list[str]]:
    bodies: dict[str, list[str]] = {}
    current = None
    for line in hlo.splitlines():
        match = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{\s*$", line)
        if match:
            current = bodies.setdefault(match.group(1), [])
        elif line.startswith("}"):
            current = None
        elif current is not None:
            current.append(line)
    return bodies


def _dots(bodies: dict[str, list[str]], name: str, seen: set[str]) -> int:
    """dot instructions in computation ``name`` and everything it calls."""
    if name in seen:
        return 0
    seen.add(name)
    lines = bodies.get(name, [])
    count = sum(1 for line in lines if re.search(r"\bdot\(", line))
    for line in lines:
        for group in re.findall(
            r"(?:calls|to_apply|branch_computations|body)=\{?([%\w.\-, ]+)", line
        ):
            for callee in group.split(","):
                count += _dots(bodies, callee.strip().lstrip("%"), seen)
    return count


@pytest.mark.parametrize("stage", [1, 2])
def test_muon_traffic_and_work_from_the_hlo(stage: int) -> None:
    hlo = _hlo("muon", stage)
    params = problem.make_model()[1]
    measured = parallel.collective_bytes(hlo)
    expected = parallel.expected_collective_bytes(params, N, stage, whole_leaves=_matrices(params))
    # Two all-to-alls of 8 rows x 48 floats: 48 = ceil(13 * 29 / 8), the largest slice one
    # owner receives (each of the three matrices has its own owner).
    assert expected.all_to_all == 2 * N * 48 * 4 == 3072
    assert measured.all_to_all == expected.all_to_all
    assert measured.all_gather == expected.all_gather
    assert measured.reduce_scatter == expected.reduce_scatter
    # What remains all-reduced: the gradients (stage 1), the loss and the gradient norm.
    assert expected.all_reduce <= measured.all_reduce <= expected.all_reduce + 8
    ops = [c.op for c in parallel.hlo_collectives(hlo)]
    assert ops.count("all-to-all") == 2
    # One conditional with a branch per device; each matrix's 5 Newton-Schulz iterations
    # (3 dots each) are in exactly one branch: the work is done once, not on every device.
    (line,) = [line for line in hlo.splitlines() if " conditional(" in line]
    branches = re.search(r"branch_computations=\{([^}]*)\}", line).group(1).split(",")
    bodies = _computations(hlo)
    per_branch = sorted(_dots(bodies, b.strip().lstrip("%"), set()) for b in branches)
    assert per_branch == [0] * (N - 3) + [15, 15, 15]
    print(f"\nMuon ZeRO-{stage}: {measured}, ring bytes {measured.ring_bytes(N):.0f}")


def test_adafactor_traffic_from_the_hlo() -> None:
    """ZeRO-2: the row/column sums of the two factored leaves (13 + 29 and 29 + 11 floats)
    and one float per leaf for each of the two block RMSs are all-reduced, besides the loss
    and the gradient norm; nothing else changes."""
    hlo = _hlo("adafactor", 2)
    params = problem.make_model()[1]
    measured = parallel.collective_bytes(hlo)
    expected = parallel.expected_collective_bytes(params, N, 2)
    assert measured.reduce_scatter == expected.reduce_scatter
    assert measured.all_gather == expected.all_gather
    assert measured.all_to_all == 0
    assert measured.all_reduce == 4 * ((13 + 29) + (29 + 11) + 2 * 6 + 2) == 384
    print(f"\nAdafactor ZeRO-2: {measured}")


def test_each_whole_leaf_runs_on_its_owner_only() -> None:
    """A debug callback in each whole-leaf function records where it ran: every leaf once,
    on the device the plan gives it."""
    shapes = [(13, 29), (29, 11), (5,), (11, 7), (3, 3)]
    calls: list[tuple[int, int]] = []

    def record(leaf: int, device: jax.Array) -> None:
        calls.append((leaf, int(device)))

    def leaf_fn(j: int):
        def fn(x: jax.Array) -> jax.Array:
            jax.debug.callback(record, j, jax.lax.axis_index("data"))
            return 2 * x

        return fn

    layout = ZeroLayout(
        {i: jax.ShapeDtypeStruct(s, jnp.float32) for i, s in enumerate(shapes)}, "data"
    )
    wholes = [jnp.arange(math.prod(s), dtype=jnp.float32).reshape(s) for s in shapes]

    def local(tree: dict) -> dict:
        slices = parallel.shard_params(tree)
        with use_layout(layout):
            out = map_whole_leaves(
                [leaf_fn(j) for j in range(len(shapes))],
                [slices[j] for j in range(len(shapes))],
                shapes,
            )
        return parallel.gather_updates(dict(enumerate(out)), tree)

    mesh = parallel.make_data_mesh(N)
    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P(), out_specs=P(), check_vma=False))
    with jax.set_mesh(mesh):
        result = fn(parallel.put_on_mesh(dict(enumerate(wholes)), mesh, P()))
    jax.effects_barrier()
    for j, whole in enumerate(wholes):
        np.testing.assert_array_equal(result[j], 2 * whole)
    chunks = [parallel.zero_chunk_size(math.prod(s), N) for s in shapes]
    owners = exchange_plan(chunks, [float(math.prod(s)) for s in shapes], N).owners
    assert sorted(calls) == sorted(enumerate(owners))


def _zero_update(tx: optax.GradientTransformation, stage: int = 2) -> tuple[dict, dict, dict]:
    """One ``zero(tx)`` update on 8 devices with different per-device gradients, and the
    parameters and mean gradient for the plain update to compare with."""
    mesh = parallel.make_data_mesh(N)
    params = {"a": jnp.linspace(-1.0, 1.0, 13), "b": jnp.arange(15.0).reshape(3, 5) / 7 - 1}
    grads = jax.tree.map(lambda p: jnp.stack([p * (i + 1) + 0.1 * i for i in range(N)]), params)
    ztx = parallel.zero(tx, "data", stage)

    def local(params: dict, grads: dict) -> dict:
        grads = jax.tree.map(lambda g: g[0], grads)
        state = ztx.init(params)
        _, state = ztx.update(grads, state, params)
        updates, _ = ztx.update(grads, state, params)
        return updates

    fn = jax.jit(
        jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data")), out_specs=P(), check_vma=False)
    )
    with jax.set_mesh(mesh):
        updates = fn(
            parallel.put_on_mesh(params, mesh, P()), parallel.put_on_mesh(grads, mesh, P("data"))
        )
    return updates, params, jax.tree.map(lambda g: g.mean(0), grads)


def _plain_update(tx: optax.GradientTransformation, params: dict, grads: dict) -> dict:
    update = parallel.with_unit_axis(tx.update, "data")
    state = tx.init(params)
    _, state = update(grads, state, params)
    updates, _ = update(grads, state, params)
    return updates


# optax's transformations whose math depends on a leaf's shape: (factory, what the error
# must name). Some reduce per leaf as well, and are caught by the reduction check first,
# which then names the shape-dependent part too.
OPTAX_REFUSED = {
    "contrib.muon": (lambda: optax.contrib.muon(0.1), r"optax\.contrib\._muon\.scale_by_muon"),
    "adafactor": (lambda: optax.adafactor(0.1), r"optax\._src\.factorized\.scale_by_factored_rms"),
    "scale_by_factored_rms": (
        lambda: optax.scale_by_factored_rms(min_dim_size_to_factor=2),
        r"optax\._src\.factorized\.scale_by_factored_rms",
    ),
    "adaptive_grad_clip": (lambda: optax.adaptive_grad_clip(0.1), r"adaptive_grad_clip"),
    "clip_by_block_rms": (lambda: optax.clip_by_block_rms(0.5), r"clip_by_block_rms"),
    "scale_by_param_block_rms": (
        lambda: optax.scale_by_param_block_rms(),
        r"scale_by_param_block_rms",
    ),
    "add_noise": (lambda: optax.add_noise(0.1, 0.5, 0), r"optax\.transforms\._adding\.add_noise"),
}


def _reads_a_shape() -> optax.GradientTransformation:
    """A user's transform that reads each leaf's shape: divide by the leading dimension."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: u / u.shape[0], updates), state

    return optax.GradientTransformation(optax.init_empty_state, update)


@pytest.mark.parametrize("name", sorted(OPTAX_REFUSED))
def test_zero_refuses_optax_shape_dependent_transforms(name: str) -> None:
    factory, names = OPTAX_REFUSED[name]
    with jax.numpy_dtype_promotion("standard"), pytest.raises(ValueError, match=names):
        _zero_update(factory(), stage=1)


def test_zero_refuses_a_transform_that_reads_shapes() -> None:
    with pytest.raises(parallel.ShardShapeError, match=r"_reads_a_shape.*at \['a'\] in step 1"):
        _zero_update(_reads_a_shape())


@pytest.mark.parametrize("stage", [1, 2])
def test_data_parallel_step_refuses_optax_muon_and_adafactor(stage: int) -> None:
    params = problem.make_model()[1]
    batch = problem.make_batches(1)[0]
    for factory, names in (OPTAX_REFUSED["contrib.muon"], OPTAX_REFUSED["adafactor"]):
        step = _step(factory(), N, stage)
        with jax.numpy_dtype_promotion("standard"), pytest.raises(ValueError, match=names):
            step(*step.init(params), batch)


def test_zero_gspmd_refuses_optax_muon_and_runs_ours_exactly() -> None:
    mesh = parallel.make_data_mesh(N)
    params = {"w": jnp.arange(15.0).reshape(3, 5) / 10 - 0.5, "b": jnp.linspace(0, 1, 5)}
    grads = jax.tree.map(lambda p: jnp.cos(3 * p), params)

    def run(tx: optax.GradientTransformation) -> dict:
        ztx = parallel.zero_gspmd(tx, mesh)
        with jax.set_mesh(mesh):
            state = jax.jit(ztx.init)(params)
            return jax.jit(lambda g, s, p: ztx.update(g, s, p)[0])(grads, state, params)

    for tx in (so.muon(0.1), so.adafactor(0.1, min_dim_size_to_factor=2)):
        # Muon's iterations amplify the rounding of differently ordered sums: rtol 1e-4.
        assert_trees_close(run(tx), _plain_update_one(tx, params, grads), rtol=1e-4, atol=1e-6)
    with (
        jax.numpy_dtype_promotion("standard"),
        pytest.raises(
            parallel.ShardShapeError, match=r"zero_gspmd: optax\.contrib\._muon\.scale_by_muon"
        ),
    ):
        run(optax.contrib.muon(0.1))
    with pytest.raises(parallel.ShardShapeError, match=r"zero_gspmd: .*clip_by_block_rms"):
        run(so.clip_by_block_rms(0.5, axis_name="data"))


def _plain_update_one(tx: optax.GradientTransformation, params: dict, grads: dict) -> dict:
    return parallel.with_unit_axis(tx.update, "data")(grads, tx.init(params), params)[0]


# Every transformation and optimizer of this package, built as a user of ZeRO would
# (reducing ones with axis_name="data"): each must run exactly under zero or raise.
PACKAGE = {
    "adam": lambda: so.adam(0.1),
    "adamw": lambda: so.adamw(0.1, weight_decay=0.1),
    "lamb": lambda: so.lamb(0.1, axis_name="data"),
    "lars": lambda: so.lars(0.1, axis_name="data"),
    "sgd": lambda: so.sgd(0.1, momentum=0.9, nesterov=True),
    "lion": lambda: so.lion(0.01),
    "rmsprop": lambda: so.rmsprop(0.1, centered=True, momentum=0.5),
    "radam": lambda: so.radam(0.1),
    "adagrad": lambda: so.adagrad(0.1),
    "muon": lambda: so.muon(0.1, weight_decay=0.1),
    "muon_adaptive_rms": lambda: so.muon(0.1, adaptive=True, consistent_rms=0.2),
    "adafactor": lambda: so.adafactor(0.1, min_dim_size_to_factor=2),
    "adafactor_momentum": lambda: so.adafactor(0.1, min_dim_size_to_factor=2, momentum=0.9),
    "scale_by_shape": lambda: so.scale_by_shape({"a": None, "b": so.MuonDimensionNumbers()}),
    "scale_by_param_block_rms": lambda: so.scale_by_param_block_rms(),
    "scale_by_factored_rms": lambda: so.scale_by_factored_rms(min_dim_size_to_factor=2),
    "clip": lambda: so.clip(0.5),
    "clip_by_global_norm": lambda: so.clip_by_global_norm(1.0, axis_name="data"),
    "clip_by_leaf_norm": lambda: so.clip_by_leaf_norm(1.0, axis_name="data"),
    "clip_by_block_rms": lambda: so.clip_by_block_rms(1.0, axis_name="data"),
    "adaptive_grad_clip": lambda: so.adaptive_grad_clip(0.1, axis_name="data"),
    "trace": lambda: so.trace(0.9, nesterov=True),
    "scale_by_rss": lambda: so.scale_by_rss(),
    "scale_by_stddev": lambda: so.scale_by_stddev(),
    "master_weights": lambda: so.with_master_weights(so.adamw(0.1)),
}
REFUSED_FROM_PACKAGE = {"clip_by_block_rms", "adaptive_grad_clip"}


@pytest.mark.parametrize("name", sorted(PACKAGE))
def test_every_transformation_of_the_package_is_exact_or_refused(name: str) -> None:
    tx = PACKAGE[name]()
    if name in REFUSED_FROM_PACKAGE:
        with pytest.raises(ValueError, match=name):
            _zero_update(tx)
        return
    updates, params, mean = _zero_update(tx)
    # Muon's iterations amplify the rounding of differently ordered sums: rtol 1e-4.
    rtol = 1e-4 if name.startswith("muon") else 1e-5
    assert_trees_close(updates, _plain_update(tx, params, mean), rtol=rtol, atol=1e-6)
