"""One process of the 2-process x 2-CPU-device ZeRO-2 run of ``test_parallel_multihost``.

Run as a script: ``python zero2_worker.py OUT_DIR STEPS [die]``. The coordinator address,
process count and id come from ``SCIRS2_*`` environment variables (the path documented for
users). Each process pins its own device count to 2 before importing JAX, joins the run
over gloo, trains the shared problem with ZeRO-2 on the 4-device global mesh and writes the
final parameters and the canonical optimizer state to ``OUT_DIR/process<i>.npz``.
With ``die``, process 1 exits right after joining, and process 0 must then fail in
bounded time rather than wait forever in a collective.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

STEP_DEADLINE_S = 60.0
DIED_EXIT_CODE = 17


def main(out_dir: str, steps: int, die: bool) -> None:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

    import jax

    jax.config.update("jax_numpy_dtype_promotion", "strict")

    from scirs2_optim_jax import parallel

    # A dying peer is noticed within the heartbeat timeout; keep it short for that run.
    config = parallel.init_distributed(
        initialization_timeout_s=60, heartbeat_timeout_s=5 if die else 10, shutdown_timeout_s=20
    )
    if die and config.process_id == 1:
        os._exit(DIED_EXIT_CODE)
    assert jax.device_count() == 4 and jax.local_device_count() == 2, jax.devices()

    import numpy as np
    from parallel_workers import problem

    graphdef, params = problem.make_model()
    step = parallel.make_data_parallel_step(
        problem.make_loss_fn(graphdef),
        problem.make_tx("clip_adamw", "data", steps),
        parallel.make_data_mesh(),
        zero_stage=2,
    )
    params, state = step.init(params)
    for i, batch in enumerate(problem.make_batches(steps)):
        with parallel.step_deadline(STEP_DEADLINE_S, f"training step {i}"):
            params, state, _ = step(params, state, batch)
            jax.block_until_ready(params)
    canonical = parallel.zero_state_to_canonical(state, params)
    arrays = {
        f"{kind}{jax.tree_util.keystr(path)}": parallel.to_host(leaf)
        for kind, tree in (("params", params), ("state", canonical))
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }
    np.savez(Path(out_dir) / f"process{config.process_id}.npz", **arrays)
    print(f"process {config.process_id}: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), len(sys.argv) > 3 and sys.argv[3] == "die")
