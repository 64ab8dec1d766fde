"""The fused CPU path of adam/adamw/lamb: same numbers, same state, optax protocol, fallbacks.

Parity is held to rtol 1e-6 against the chained (XLA) path over 100 jitted steps, through
both ``update`` (the optax protocol) and ``apply_gradients`` (the one-pass step); LAMB's
trust ratios come from norms summed in another order, so its tolerance is relative to each
leaf's scale. The kernels are built by the tests like anywhere else (a C++ compiler is part
of the documented setup), and a missing kernel fails here rather than skipping.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import decay_mask, run_on_one_device

import scirs2_optim_jax as so
from scirs2_optim_jax.engine import apply_gradients, one_pass_step
from scirs2_optim_jax.engine.kernels import fused_step, hyper_vector, kernels_available

STEPS = 100
SCHEDULE = so.warmup_cosine_decay_schedule(0.0, 1e-2, 10, 100, 1e-4)
# Mixed ranks, plus a leaf large enough to be split into several chunks across threads.
SHAPES = {
    "scale": (),
    "bias": (7,),
    "kernel": (13, 29),
    "conv": (3, 4, 5, 6),
    "embed": (300, 256),
}

CASES = {
    "adamw-schedule-callable-mask": (
        "adamw",
        {"learning_rate": SCHEDULE, "weight_decay": 0.1, "mask": decay_mask},
    ),
    "adamw-tree-mask": (
        "adamw",
        {
            "learning_rate": 1e-2,
            "weight_decay": 0.05,
            "mask": {"scale": False, "bias": False, "kernel": True, "conv": True, "embed": True},
        },
    ),
    "adamw-scheduled-decay": (
        "adamw",
        {"learning_rate": 1e-2, "weight_decay": optax.linear_schedule(0.1, 0.0, 50)},
    ),
    "adam": ("adam", {"learning_rate": 1e-2, "b1": 0.8, "b2": 0.99, "eps_root": 1e-8}),
    "lamb": ("lamb", {"learning_rate": 1e-2, "weight_decay": 0.01}),
    "lamb-schedule-mask": (
        "lamb",
        {"learning_rate": SCHEDULE, "weight_decay": 0.01, "mask": decay_mask},
    ),
}


def _tree(seed: int, scale: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(scale * rng.standard_normal(s), jnp.float32) for k, s in SHAPES.items()}


def _run(tx: optax.GradientTransformation, fused_apply: bool) -> tuple:
    @jax.jit
    def step(params: dict, state: tuple, grads: dict) -> tuple:
        if fused_apply:
            return apply_gradients(tx, grads, state, params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = _tree(0)
    state = tx.init(params)
    for i in range(STEPS):
        params, state = step(params, state, _tree(100 + i, 0.1))
    return params, state


def _assert_close(actual: object, expected: object, leaf_scaled: bool) -> None:
    flat_a = jax.tree_util.tree_leaves_with_path(actual)
    flat_e = jax.tree.leaves(expected)
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), e in zip(flat_a, flat_e, strict=True):
        a, e = np.asarray(a), np.asarray(e)
        assert a.dtype == e.dtype, jax.tree_util.keystr(path)
        atol = 1e-6 * float(np.max(np.abs(e))) if leaf_scaled else 1e-7
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=atol, err_msg=jax.tree_util.keystr(path))


def test_kernels_build_here() -> None:
    assert kernels_available(), "the fused CPU kernels did not build; see the log"


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("path", ["update", "apply"])
def test_fused_equals_chain(case: str, path: str) -> None:
    name, kwargs = CASES[case]
    reference = _run(getattr(so, name)(**kwargs, fused=False), fused_apply=False)
    fused = _run(getattr(so, name)(**kwargs, fused=True), fused_apply=path == "apply")
    _assert_close(fused, reference, leaf_scaled=name == "lamb")


def test_fused_adamw_matches_optax() -> None:
    ours = _run(so.adamw(1e-2, weight_decay=0.05, fused=True), fused_apply=True)
    with jax.numpy_dtype_promotion("standard"):
        theirs = _run(optax.adamw(1e-2, weight_decay=0.05), fused_apply=False)
    np.testing.assert_allclose(ours[0]["embed"], theirs[0]["embed"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[1][0].nu["kernel"], theirs[1][0].nu["kernel"], rtol=1e-5)


def test_state_is_the_chains_state() -> None:
    """Same tree, shapes and dtypes as the chain: checkpoints and ZeRO layouts see no change."""
    params = _tree(0)
    for name in ("adam", "adamw", "lamb"):
        fused = getattr(so, name)(1e-3, fused=True).init(params)
        chain = getattr(so, name)(1e-3, fused=False).init(params)
        assert jax.tree.structure(fused) == jax.tree.structure(chain)
        assert [(x.shape, x.dtype) for x in jax.tree.leaves(fused)] == [
            (x.shape, x.dtype) for x in jax.tree.leaves(chain)
        ]


def test_apply_is_in_place_when_donated() -> None:
    """One custom call, no copies: parameters and moments are updated in their own buffers."""
    tx = so.adamw(1e-3, fused=True)
    params = _tree(0)
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: apply_gradients(tx, g, s, p), donate_argnums=(0, 1))
    hlo = step.lower(params, state, _tree(1)).compile().as_text()
    assert hlo.count("custom-call(") == 1
    assert " copy(" not in hlo


def test_chain_path_when_auto_on_several_devices() -> None:
    """fused=None leaves sharded and multi-device runs on the chain (XLA) path."""
    assert jax.device_count() > 1
    tx = so.adamw(1e-3)
    params = _tree(0)
    hlo = (
        jax.jit(lambda p, s, g: apply_gradients(tx, g, s, p))
        .lower(params, tx.init(params), _tree(1))
        .as_text()
    )
    assert "scirs2_adam_step" not in hlo


def test_auto_uses_kernel_on_one_cpu_device() -> None:
    code = (
        "import jax, scirs2_optim_jax as so\n"
        "from scirs2_optim_jax.engine import apply_gradients\n"
        "p = {'w': jax.numpy.ones((4, 3))}\n"
        "tx = so.adamw(1e-3)\n"
        "f = jax.jit(lambda p, s, g: apply_gradients(tx, g, s, p))\n"
        "print('scirs2_adam_step' in f.lower(p, tx.init(p), p).as_text(), jax.device_count())\n"
    )
    assert run_on_one_device(code) == ["True", "1"]


def test_fallback_for_bf16_and_errors_when_required() -> None:
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _tree(0))
    grads = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _tree(1, 0.1))
    auto, chain = so.adamw(1e-3), so.adamw(1e-3, fused=False)
    got = apply_gradients(auto, grads, auto.init(params), params)
    want = apply_gradients(chain, grads, chain.init(params), params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    required = so.adamw(1e-3, fused=True)
    with pytest.raises(ValueError, match=r"adamw: fused=True needs float32"):
        apply_gradients(required, grads, required.init(params), params)


def test_bad_fused_arguments() -> None:
    with pytest.raises(TypeError, match=r"adamw: fused must be True, False or None, got 'yes'"):
        so.adamw(1e-3, fused="yes")
    with pytest.raises(ValueError, match=r"adam: fused=True does not support nesterov=True"):
        so.adam(1e-3, nesterov=True, fused=True)
    with pytest.raises(ValueError, match=r"lamb: fused=True does not support axis_name"):
        so.lamb(1e-3, axis_name="data", fused=True)
    assert one_pass_step(so.adamw(1e-3, nesterov=True)) is None


def test_mismatched_grads_name_the_path() -> None:
    tx = so.adamw(1e-3, fused=True)
    params = _tree(0)
    grads = dict(_tree(1), embed=jnp.zeros((300, 255)))
    with pytest.raises(ValueError, match=r"embed"):
        apply_gradients(tx, grads, tx.init(params), params)


def test_works_inside_shard_map_and_equals_one_device() -> None:
    """Data parallel with the kernel per device equals the single-device fused step."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    tx = so.adamw(1e-2, weight_decay=0.05, fused=True)
    params = _tree(0)
    state = tx.init(params)
    batches = jnp.stack([jnp.full((4,), float(i)) for i in range(8)])

    def grads_of(p: dict, batch: jax.Array) -> dict:
        return jax.tree.map(lambda x: x * jnp.mean(batch) * 0.01, p)

    def dp_step(p: dict, s: tuple, batch: jax.Array) -> tuple:
        g = jax.lax.pmean(grads_of(p, batch[0]), "data")
        return apply_gradients(tx, g, s, p)

    spec = jax.sharding.PartitionSpec
    sharded = jax.jit(
        jax.shard_map(
            dp_step, mesh=mesh, in_specs=(spec(), spec(), spec("data")), out_specs=(spec(), spec())
        )
    )
    single = jax.jit(lambda p, s: apply_gradients(tx, grads_of(p, batches), s, p))
    p1, s1 = params, state
    p8, s8 = params, state
    placed = jax.device_put(batches, jax.sharding.NamedSharding(mesh, spec("data")))
    for _ in range(5):
        p1, s1 = single(p1, s1)
        p8, s8 = sharded(p8, s8, placed)
    _assert_close((p8, s8), (p1, s1), leaf_scaled=False)


def test_inject_hyperparams_and_multisteps_keep_working() -> None:
    params = _tree(0)
    grads = _tree(1, 0.1)
    injected = optax.inject_hyperparams(so.adamw)(learning_rate=1e-2, fused=True)
    reference = optax.inject_hyperparams(so.adamw)(learning_rate=1e-2, fused=False)
    got, _ = apply_gradients(injected, grads, injected.init(params), params)
    want, _ = apply_gradients(reference, grads, reference.init(params), params)
    _assert_close(got, want, leaf_scaled=False)
    multi = optax.MultiSteps(so.adamw(1e-2, fused=True), every_k_schedule=2)
    state = multi.init(params)
    with jax.numpy_dtype_promotion("standard"):
        for _ in range(2):
            updates, state = jax.jit(multi.update)(grads, state, params)
            params = optax.apply_updates(params, updates)
    assert float(jnp.max(jnp.abs(params["embed"] - _tree(0)["embed"]))) > 0


def test_disabled_kernels_fall_back_or_fail_clearly() -> None:
    code = (
        "import jax, scirs2_optim_jax as so\n"
        "from scirs2_optim_jax.engine import apply_gradients\n"
        "p = {'w': jax.numpy.ones(3)}\n"
        "tx = so.adamw(0.1)\n"
        "print([round(x, 4) for x in apply_gradients(tx, p, tx.init(p), p)[0]['w'].tolist()])\n"
        "tx = so.adamw(0.1, fused=True)\n"
        "try:\n"
        "    apply_gradients(tx, p, tx.init(p), p)\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["SCIRS2_OPTIM_DISABLE_KERNELS"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    lines = out.stdout.splitlines()
    assert lines[0] == str([0.9] * 3)
    assert "adamw: fused=True but the CPU kernels are not available" in lines[1]


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_clipped_chain_folds_the_factor_and_equals_optax_chain(name: str) -> None:
    """chain(clip_by_global_norm, fused) applies in one pass and equals the optax.chain."""
    kwargs = {"learning_rate": SCHEDULE, "weight_decay": 0.01}
    ours = so.chain(so.clip_by_global_norm(1.0), getattr(so, name)(**kwargs, fused=True))
    assert one_pass_step(ours) is not None
    reference = optax.chain(so.clip_by_global_norm(1.0), getattr(so, name)(**kwargs, fused=False))
    got = _run(ours, fused_apply=True)
    want = _run(reference, fused_apply=False)
    _assert_close(got, want, leaf_scaled=name == "lamb")
    # Through the protocol the chain is optax.chain's, with the fused transform's update.
    _assert_close(_run(ours, fused_apply=False), want, leaf_scaled=name == "lamb")


def test_chain_without_a_fused_step_is_optax_chain() -> None:
    tx = so.chain(so.clip_by_global_norm(1.0), so.sgd(0.1))
    assert one_pass_step(tx) is None
    clipped_then_fused = so.chain(optax.scale(0.5), so.adamw(1e-3, fused=True))
    assert one_pass_step(clipped_then_fused) is None  # optax.scale is no clip


@pytest.mark.parametrize("grad_dtype", [jnp.float32, jnp.bfloat16])
def test_master_weights_use_the_fused_step_and_equal_the_chain(grad_dtype: object) -> None:
    """bf16 parameters, fp32 master: the kernel updates the master (in one pass with fp32
    gradients, through the protocol with bf16 ones, which must be cast first); same numbers
    as the chain either way."""
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _tree(0))

    def run(fused: bool) -> tuple:
        tx = so.with_master_weights(so.adamw(1e-2, weight_decay=0.05, fused=fused))
        step = jax.jit(lambda p, s, g: apply_gradients(tx, g, s, p))
        p, s = params, tx.init(params)
        for i in range(20):
            grads = jax.tree.map(lambda x: x.astype(grad_dtype), _tree(100 + i, 0.1))
            p, s = step(p, s, grads)
        hlo = step.lower(p, s, grads).as_text()
        return p, s, "scirs2_adam_step" in hlo

    fused_p, fused_s, used = run(True)
    chain_p, chain_s, unused = run(False)
    assert used and not unused
    _assert_close(fused_s, chain_s, leaf_scaled=False)
    # One pass: the kernel writes the bf16 parameters itself, rounded as XLA rounds them.
    for p, m in zip(jax.tree.leaves(fused_p), jax.tree.leaves(fused_s.master), strict=True):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(m.astype(jnp.bfloat16)))
    # The bf16 parameters are the rounded masters: equal within one bf16 step of the masters'
    # own (1e-7) differences.
    for a, b in zip(jax.tree.leaves(fused_p), jax.tree.leaves(chain_p), strict=True):
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2**-7, atol=1e-7
        )


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_grouped_layout_is_deprecated_and_gives_the_tree_state(name: str) -> None:
    """No user-chosen layout is slower than the default: "grouped" warns and is the tree."""
    kwargs = {"learning_rate": SCHEDULE, "weight_decay": 0.05, "mask": decay_mask}
    with pytest.warns(DeprecationWarning, match=rf"{name}: state_layout='grouped' is deprecated"):
        grouped = getattr(so, name)(**kwargs, fused=True, state_layout="grouped")
    got = _run(grouped, fused_apply=True)
    assert isinstance(got[1][0], so.transforms.ScaleByAdamState)
    want = _run(getattr(so, name)(**kwargs, fused=True), fused_apply=True)
    _assert_close(got, want, leaf_scaled=False)
    with pytest.raises(ValueError, match=r"adamw: state_layout must be 'tree' or 'grouped'"):
        so.adamw(1e-3, state_layout="flat")


def test_master_weights_one_pass_with_float32_leaves_in_the_tree() -> None:
    """A bf16 model that keeps some leaves in float32 (norm scales, biases) still takes the
    one-pass step: the float32 leaves become the master itself, the bf16 ones its rounding."""
    params = {
        k: x.astype(jnp.float32 if k in ("scale", "bias") else jnp.bfloat16)
        for k, x in _tree(0).items()
    }

    def run(fused: bool) -> tuple:
        tx = so.with_master_weights(so.adamw(1e-2, weight_decay=0.05, fused=fused))
        step = jax.jit(lambda p, s, g: apply_gradients(tx, g, s, p), donate_argnums=(0, 1))
        p, s = jax.tree.map(jnp.copy, params), tx.init(params)
        for i in range(10):
            grads = jax.tree.map(lambda x, q: x.astype(q.dtype), _tree(100 + i, 0.1), params)
            p, s = step(p, s, grads)
        return p, s, "master = true" in step.lower(p, s, grads).as_text()

    fused_p, fused_s, one_pass = run(True)
    chain_p, chain_s, _ = run(False)
    assert one_pass
    _assert_close(fused_s, chain_s, leaf_scaled=False)
    for key, p in fused_p.items():
        master = fused_s.master[key]
        assert p.dtype == params[key].dtype
        np.testing.assert_array_equal(np.asarray(p), np.asarray(master.astype(p.dtype)))
        np.testing.assert_allclose(
            np.asarray(p, np.float32), np.asarray(chain_p[key], np.float32), rtol=2**-7, atol=1e-7
        )


def test_master_mode_rounds_like_xla() -> None:
    """The bf16 parameters the kernel writes are XLA's float32 -> bfloat16 conversion of the
    new master: ties to even, overflow to infinity, NaN kept, subnormals kept."""
    one = 1.0
    specials = [one + 2**-8, one + 3 * 2**-8, -(one + 2**-8), 3.4028235e38, -3.39e38]
    specials += [np.inf, -np.inf, np.nan, 1e-40, -1e-45, 0.0, -0.0]
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [np.array(specials, np.float32), rng.standard_normal(5000).astype(np.float32) * 1e3]
    )
    master = jnp.asarray(values)
    zeros = jnp.zeros_like(master)
    hyper = hyper_vector(0.0, 0.9, 0.999, 1e-8, 0.0, 0.0, 1.0, 1.0)  # lr 0: master unchanged

    @jax.jit
    def run(master: jax.Array, low: jax.Array) -> tuple:
        outs, _, _, new_low = fused_step(
            "adam",
            hyper,
            [master],
            [zeros.astype(jnp.bfloat16)],
            [zeros],
            [zeros],
            apply=True,
            decay=[False],
            low_params=[low],
        )
        return outs[0], new_low[0]

    new_master, low = run(master, jnp.zeros(values.shape, jnp.bfloat16))
    # XLA:CPU flushes subnormals to zero and -0 + 0 is +0, so the master is compared where
    # it is normal; the rounding is compared against the master the kernel wrote.
    normal = np.isinf(values) | (np.abs(values) >= np.finfo(np.float32).tiny)
    np.testing.assert_array_equal(np.asarray(new_master)[normal], values[normal])
    want = np.asarray(new_master.astype(jnp.bfloat16))
    got = np.asarray(low)
    nan = np.isnan(values)
    assert np.isnan(got[nan].astype(np.float32)).all()
    np.testing.assert_array_equal(got[~nan].view(np.uint16), want[~nan].view(np.uint16))
    assert got[0] == 1.0 and got[1] == 1 + 2**-6 and got[3] == np.inf  # ties to even; overflow

    def call(kind: str, low_params: list) -> None:
        fused_step(
            kind,
            hyper,
            [master],
            [zeros],
            [zeros],
            [zeros],
            apply=True,
            decay=[False],
            low_params=low_params,
        )

    with pytest.raises(ValueError, match=r"low_params has 2 leaves, params 1"):
        call("adam", [low, low])
    with pytest.raises(ValueError, match=r"low_params\[0\] must be bfloat16 or float32 of shape"):
        call("adam", [jnp.zeros(3, jnp.bfloat16)])
    with pytest.raises(ValueError, match=r"low_params needs kind='adam' and apply=True"):
        call("lamb", [low])
