"""Acceptance point 6: multi-host on JAX's distributed runtime, 2 processes x 2 CPU devices.

Each worker (``parallel_workers/zero2_worker.py``) joins over gloo on 127.0.0.1, with the
coordinator, process count and id given through the ``SCIRS2_*`` environment variables,
and trains 20 ZeRO-2 steps on the 4-device global mesh. The result must equal a
single-process 4-device run. A second run, where process 1 dies after initialisation,
must end with a non-zero status and a clear message instead of hanging. Both runs start
together (the second mostly waits on the heartbeat timeout) to keep the wall time down.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from parallel_workers import problem, zero2_worker

from scirs2_optim_jax import parallel

STEPS = 20
WORKER = Path(__file__).parent / "parallel_workers" / "zero2_worker.py"
# Generous next to the ~25 s a run takes on 2 shared cores; a hang would take forever.
RUN_TIMEOUT_S = 150


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(out_dir: Path, die: bool) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for process_id in range(2):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env.update(
            SCIRS2_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            SCIRS2_NUM_PROCESSES="2",
            SCIRS2_PROCESS_ID=str(process_id),
            PYTHONUNBUFFERED="1",
        )
        args = [sys.executable, str(WORKER), str(out_dir), str(STEPS), *(["die"] if die else [])]
        procs.append(
            subprocess.Popen(
                args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    return procs


def _finish(procs: list[subprocess.Popen], deadline: float) -> list[tuple[int, str]]:
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"a worker did not finish within {RUN_TIMEOUT_S} s:\n{out}\n{err}")
        results.append((proc.returncode, out + err))
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    ok_dir, die_dir = tmp_path_factory.mktemp("ok"), tmp_path_factory.mktemp("die")
    start = time.monotonic()
    ok, die = _launch(ok_dir, die=False), _launch(die_dir, die=True)
    deadline = start + RUN_TIMEOUT_S
    return {
        "ok": _finish(ok, deadline),
        "ok_dir": ok_dir,
        "die": _finish(die, deadline),
        "die_seconds": time.monotonic() - start,
    }


def _single_process_reference() -> dict:
    graphdef, params = problem.make_model()
    step = parallel.make_data_parallel_step(
        problem.make_loss_fn(graphdef),
        problem.make_tx("clip_adamw", "data", STEPS),
        parallel.make_data_mesh(4),
        zero_stage=2,
    )
    params, state = step.init(params)
    for batch in problem.make_batches(STEPS):
        params, state, _ = step(params, state, batch)
    canonical = parallel.zero_state_to_canonical(state, params)
    return {
        f"{kind}{jax.tree_util.keystr(path)}": np.asarray(leaf)
        for kind, tree in (("params", params), ("state", canonical))
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def test_two_processes_equal_one_process_with_four_devices(runs: dict) -> None:
    for process_id, (code, log) in enumerate(runs["ok"]):
        assert code == 0, f"process {process_id} failed:\n{log}"
        assert f"process {process_id}: done" in log
    expected = _single_process_reference()
    for process_id in range(2):
        with np.load(runs["ok_dir"] / f"process{process_id}.npz") as got:
            assert sorted(got.files) == sorted(expected)
            for name, value in expected.items():
                np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    # The state held real moments (Adam's nu is positive somewhere), not zeros.
    assert any("nu" in name and np.any(value > 0) for name, value in expected.items())


def test_dead_peer_fails_fast_with_a_clear_message(runs: dict) -> None:
    (code0, log0), (code1, _) = runs["die"]
    assert code1 == zero2_worker.DIED_EXIT_CODE
    assert code0 != 0, log0
    assert "process 0: done" not in log0
    # Either JAX's coordination service (missing heartbeats) or our step deadline ended it.
    assert "another task died" in log0 or "did not finish within" in log0, log0
    assert runs["die_seconds"] < RUN_TIMEOUT_S
