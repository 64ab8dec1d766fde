"""make_data_parallel_step takes the engine's one-pass step where it applies (one CPU
device), at every ZeRO stage, with the same results as the chain."""

from __future__ import annotations

from helpers import run_on_one_device

CODE = """
import jax, jax.numpy as jnp, numpy as np
import scirs2_optim_jax as so
from scirs2_optim_jax import parallel

def loss_fn(params, batch):
    h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] - batch["y"]) ** 2)

rng = np.random.default_rng(0)
params = {"w1": jnp.asarray(rng.standard_normal((7, 13)), jnp.float32),
          "b1": jnp.zeros(13), "w2": jnp.asarray(rng.standard_normal((13, 3)), jnp.float32)}
batch = {"x": jnp.asarray(rng.standard_normal((16, 7)), jnp.float32),
         "y": jnp.asarray(rng.standard_normal((16, 3)), jnp.float32)}
mesh = parallel.make_data_mesh(1)
out = []
for stage in (0, 1, 2):
    results = []
    for fused in (None, False):
        # ZeRO needs the clip's norm summed over the data axis; plain data parallelism
        # clips whole leaves.
        clip = so.clip_by_global_norm(1.0, axis_name="data" if stage else None)
        tx = so.chain(clip, so.adamw(1e-2, weight_decay=0.1, fused=fused))
        step = parallel.make_data_parallel_step(loss_fn, tx, mesh, zero_stage=stage)
        p, s = step.init(params)
        b = step.shard_batch(batch)
        with jax.set_mesh(mesh):
            hlo = step._step.lower(p, s, b).as_text()
        for _ in range(10):
            p, s, _m = step(p, s, b)
        results.append((p, "scirs2_adam_step" in hlo))
    (got, kernel), (want, chain_kernel) = results
    close = all(np.allclose(a, b, rtol=1e-6, atol=1e-6 * float(np.max(np.abs(b))))
                for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    out.append(f"{stage}:{kernel}:{chain_kernel}:{close}")
print(" ".join(out))
"""


def test_one_pass_step_at_every_stage_on_one_device() -> None:
    assert run_on_one_device(CODE) == [
        "0:True:False:True",
        "1:True:False:True",
        "2:True:False:True",
    ]
