"""``scirs2-optim train`` as one run of two processes (2 x 2 fake CPU devices, gloo on loopback).

One module fixture runs the real command three times, one after the other (2 cores):

1. two processes, configured only through the ``SCIRS2_*`` variables as in
   ``deploy/k8s/train-job.yaml``: ZeRO-2 (state sharded across the processes), checkpoints,
   metrics on ``SCIRS2_METRICS_HOST=0.0.0.0``. Once both processes' ``/metrics`` report
   steps, process 1 alone gets SIGTERM; both must stop after the same step, save it and
   exit 0;
2. the reference: one process with 4 devices, stopped (``--stop-at``) at that step;
3. one process with one device resuming the two-process checkpoint.

Device count changes only the order of the cross-device sums, so the runs are compared
numerically (the parameter hashes of 1 x 4 and 2 x 2 devices differ in the last bits).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from scirs2_optim_jax import cli
from scirs2_optim_jax.checkpoint import CheckpointManager
from scirs2_optim_jax.cli.train import start_monitor
from scirs2_optim_jax.cli.train_settings import train_settings
from scirs2_optim_jax.parallel import distributed

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-multihost"  # a test fixture, not a credential
ALL_INTERFACES = "0.0.0.0"  # noqa: S104  what a pod needs; the test scrapes it on loopback
# Generous next to the ~20 s a two-process run takes on 2 shared cores; a hang must not last.
RUN_TIMEOUT_S = 150
# A constant learning rate, so that the few steps before the signal move the parameters.
COMMON = [
    "train",
    "--steps",
    "100000",
    "--schedule",
    "constant",
    "--batch-size",
    "32",
    "--zero-stage",
    "2",
    "--log-every",
    "1",
    "--save-every",
    "100000",
]
HASH = re.compile(r"^params_sha256: ([0-9a-f]{64})$")
PROGRESS = re.compile(r"^step\s+(\d+)/\d+\s+loss (\S+)")
PREEMPTED = re.compile(
    r"^preempted \(a stop signal to another process\) after step (\d+); "
    r"saved checkpoint step (\d+)"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _base_env() -> dict[str, str]:
    """This environment without the suite's 8 devices and without any run settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "XLA_FLAGS" and not k.startswith(("SCIRS2_", "JAX_COORDINATOR", "JAX_NUM"))
    }
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", SCIRS2_METRICS_TOKEN=TOKEN)
    return env


class Process:
    """A running ``scirs2-optim`` whose stdout lines are collected as they come."""

    def __init__(self, argv: list[str], env: dict[str, str], stderr: Path) -> None:
        self.stderr_path = stderr
        self._stderr = stderr.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scirs2_optim_jax", *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, deadline: float) -> str:
        while True:
            try:
                line = self._queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is not None:
                self.lines.append(line)
                if re.search(pattern, line):
                    return line
            if time.monotonic() > deadline or (line is None and self.proc.poll() is not None):
                raise AssertionError(
                    f"no line matching {pattern!r}; stdout so far: {self.lines}\n"
                    f"stderr: {self.stderr_path.read_text()}"
                )

    def finish(self, deadline: float) -> tuple[int, list[str], str]:
        """Waits for the exit (killing it at the deadline); returns (code, stdout, stderr)."""
        try:
            code = self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        self._thread.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        self._stderr.close()
        err = self.stderr_path.read_text()
        if code is None:
            pytest.fail(f"the process did not finish in time:\n{self.lines}\n{err}")
        return code, self.lines, err


def _get(url: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _steps_total(url: str) -> float:
    status, body = _get(url)
    assert status == 200, body
    match = re.search(r"^scirs2_steps_total (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _run_one(argv: list[str], stderr: Path) -> tuple[int, list[str], str]:
    process = Process(argv, _base_env(), stderr)
    return process.finish(time.monotonic() + RUN_TIMEOUT_S)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("multihost")
    two_dir, ref_dir, resume_dir = root / "two", root / "ref", root / "resume"
    port = _free_port()
    started = time.monotonic()
    deadline = started + RUN_TIMEOUT_S
    processes = []
    for process_id in range(2):
        env = _base_env()
        env.update(
            {
                distributed.ENV_COORDINATOR_ADDRESS: f"127.0.0.1:{port}",
                distributed.ENV_NUM_PROCESSES: "2",
                distributed.ENV_PROCESS_ID: str(process_id),
                cli.METRICS_HOST_VAR: ALL_INTERFACES,
                "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
            }
        )
        argv = [*COMMON, "--checkpoint-dir", str(two_dir), "--resume", "--metrics-port", "0"]
        processes.append(Process(argv, env, root / f"stderr{process_id}.txt"))
    try:
        metrics_lines = [p.wait_for(r"^metrics: ", deadline) for p in processes]
        urls = [line.split()[1] for line in metrics_lines]
        scraped = [0.0, 0.0]
        while min(scraped) < 3 and time.monotonic() < deadline:
            scraped = [_steps_total(url.replace(ALL_INTERFACES, "127.0.0.1")) for url in urls]
            time.sleep(0.2)
        processes[1].proc.send_signal(signal.SIGTERM)
        two = [p.finish(deadline) for p in processes]
    finally:
        for p in processes:
            if p.proc.poll() is None:
                p.proc.kill()
                p.finish(time.monotonic() + 30)
    two_seconds = time.monotonic() - started
    stopped = next((m for m in map(PREEMPTED.match, two[0][1]) if m), None)
    if stopped is None:
        pytest.fail(f"process 0 reported no preemption:\n{two}")
    step = int(stopped.group(1))

    ref_argv = [*COMMON, "--devices", "4", "--stop-at", str(step)]
    reference = _run_one([*ref_argv, "--checkpoint-dir", str(ref_dir)], root / "ref.txt")
    shutil.copytree(two_dir, resume_dir)
    resume_argv = [*COMMON, "--devices", "1", "--resume", "--stop-at", str(step + 2)]
    resumed = _run_one([*resume_argv, "--checkpoint-dir", str(resume_dir)], root / "res.txt")
    return {
        "two": two,
        "two_seconds": two_seconds,
        "metrics_lines": metrics_lines,
        "scraped": scraped,
        "step": step,
        "stopped": stopped,
        "two_dir": two_dir,
        "reference": reference,
        "ref_dir": ref_dir,
        "resumed": resumed,
    }


def _flat(directory: Path, step: int) -> dict[str, np.ndarray]:
    """The checkpoint's state as arrays named by their tree paths."""
    with CheckpointManager(directory, read_only=True) as manager:
        restored = manager.restore(step)
    leaves = jax.tree_util.tree_flatten_with_path(restored.state)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _losses(lines: list[str]) -> dict[int, float]:
    return {int(m.group(1)): float(m.group(2)) for m in map(PROGRESS.match, lines) if m}


def test_every_process_serves_its_own_metrics_on_the_host_from_the_environment(
    runs: dict[str, Any],
) -> None:
    urls = [line.split()[1] for line in runs["metrics_lines"]]
    assert all(url.startswith(f"http://{ALL_INTERFACES}:") for url in urls), urls
    assert len(set(urls)) == 2, "each process serves its own endpoint"
    assert min(runs["scraped"]) >= 3, runs["scraped"]


def test_a_signal_to_one_process_stops_every_process_at_the_same_step(
    runs: dict[str, Any],
) -> None:
    (code0, out0, err0), (code1, out1, err1) = runs["two"]
    assert code0 == 0, f"{out0}\n{err0}"
    assert code1 == 0, f"{out1}\n{err1}"
    assert "Traceback" not in err0 + err1
    step = runs["step"]
    assert int(runs["stopped"].group(2)) == step
    assert "distributed: process 0 of 2, 2 local of 4 devices" in out0
    assert "distributed: process 1 of 2, 2 local of 4 devices" in out1
    # Process 0 reports (progress, summary); process 1 prints its setup and the hash only.
    assert any(line.strip().startswith("devices ") and line.split()[-1] == "4" for line in out0)
    assert not any(PROGRESS.match(line) or "summary" in line for line in out1), out1
    hashes = [HASH.match(out[-1]) for out in (out0, out1)]
    assert all(hashes) and hashes[0].group(1) == hashes[1].group(1), (out0[-1], out1[-1])
    with CheckpointManager(runs["two_dir"], read_only=True) as manager:
        assert manager.all_steps() == [step]
        manager.verify(step)
    assert runs["two_seconds"] < RUN_TIMEOUT_S


def test_two_processes_equal_one_process_with_four_devices(runs: dict[str, Any]) -> None:
    code, out, err = runs["reference"]
    assert code == 0, f"{out}\n{err}"
    step = runs["step"]
    got, want = _flat(runs["two_dir"], step), _flat(runs["ref_dir"], step)
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        # Parameters are ~0.1; reduction order moves them by ~1e-6 over tens of Adam steps.
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=5e-6, err_msg=name)
    assert any("nu" in name and np.any(value > 0) for name, value in want.items())
    # The same loss curve, step by step (printed to 4 decimals), and the same last loss.
    curve, reference_curve = _losses(runs["two"][0][1]), _losses(out)
    assert sorted(curve) == list(range(1, step + 1)) == sorted(reference_curve)
    for s, loss in reference_curve.items():
        assert curve[s] == pytest.approx(loss, abs=1.5e-4), s


def test_the_two_process_checkpoint_resumes_in_one_process(runs: dict[str, Any]) -> None:
    code, out, err = runs["resumed"]
    assert code == 0, f"{out}\n{err}"
    step = runs["step"]
    assert f"resumed from checkpoint step {step} in" in "\n".join(out)
    assert "devices 1, ZeRO stage 2" in out[0]
    assert HASH.match(out[-1])


# -- in this process: what is decided before any process joins -----------------------------


def test_multiprocess_settings_errors_exit_2_before_joining(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "2")
    monkeypatch.delenv(distributed.ENV_COORDINATOR_ADDRESS, raising=False)
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    assert cli.main(["train", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "SCIRS2_COORDINATOR_ADDRESS" in err and "Traceback" not in err, err

    monkeypatch.setenv(distributed.ENV_COORDINATOR_ADDRESS, "127.0.0.1:1")
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "0")
    assert cli.main(["train", "--steps", "2", "--devices", "3"]) == 2
    err = capsys.readouterr().err
    assert "must be a multiple of the 2 processes" in err, err

    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "2")
    assert cli.main(["train", "--steps", "2"]) == 2
    assert "process_id must be in [0, 2)" in capsys.readouterr().err


def test_multiprocess_default_is_every_device() -> None:
    args = cli.build_parser().parse_args(["train"])
    assert train_settings(args, {}, processes=2)["train"]["devices"] is None
    assert train_settings(args, {}, processes=1)["train"]["devices"] == 1


def test_metrics_host_comes_from_the_environment() -> None:
    for environ, host in (
        ({}, "127.0.0.1"),
        ({cli.METRICS_HOST_VAR: ALL_INTERFACES}, ALL_INTERFACES),
    ):
        monitor = start_monitor(0, 32, environ)
        try:
            assert monitor.url.startswith(f"http://{host}:"), monitor.url
        finally:
            monitor.close()
