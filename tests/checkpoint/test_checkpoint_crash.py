"""Crash safety and preemption (SIGKILL at any moment, SIGTERM), with real processes.

``checkpoint_workers/train_worker.py`` trains a small MLP for ``STEPS`` steps, saving every
``SAVE_EVERY`` (asynchronously, keeping the last 3) and resuming from the newest good
checkpoint when it starts. These tests kill it with SIGKILL at random moments, including in
the middle of saves, and stop it with SIGTERM, then check that every resume loads a complete
checkpoint and that the final parameters are bit-identical to one uninterrupted run.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scirs2_optim_jax.checkpoint import CheckpointManager

WORKER = Path(__file__).parent / "checkpoint_workers" / "train_worker.py"
REPO = Path(__file__).resolve().parents[2]
STEPS, SAVE_EVERY = 60, 3
TRIALS = 10
EVENT_TIMEOUT = 60.0


class Worker:
    """One worker process and the JSON events it prints, read by a background thread."""

    def __init__(self, directory: Path, *args: str) -> None:
        env = dict(os.environ)
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
        env["JAX_PLATFORMS"] = "cpu"
        # Workers share compiled steps through JAX's persistent cache: a restart then skips
        # compilation, which keeps each trial short (the executables are the same ones).
        env["JAX_COMPILATION_CACHE_DIR"] = str(directory.parent.parent / "jax-cache")
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
        self.stderr = directory.parent / f"{directory.name}-{time.monotonic_ns()}.stderr"
        command = [sys.executable, str(WORKER), str(directory), "--steps", str(STEPS)]
        command += ["--save-every", str(SAVE_EVERY), *args]
        with open(self.stderr, "wb") as err:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True
            )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                self.events.put(json.loads(line))
        self.process.stdout.close()
        self.events.put(None)

    def next(self, *names: str) -> dict[str, Any] | None:
        """The next event named one of ``names`` (None once the process has ended)."""
        while True:
            try:
                event = self.events.get(timeout=EVENT_TIMEOUT)
            except queue.Empty:
                self.process.kill()
                pytest.fail(
                    f"worker silent for {EVENT_TIMEOUT}s: {self.stderr.read_text()[-2000:]}"
                )
            if event is None:
                return None
            self.seen.append(event)
            if event["event"] in names:
                return event

    def finish(self) -> int:
        while self.next() is not None:
            pass
        return self.process.wait(timeout=EVENT_TIMEOUT)


def _run_to_end(directory: Path, *args: str) -> Worker:
    worker = Worker(directory, *args)
    code = worker.finish()
    assert code == 0, worker.stderr.read_text()[-3000:]
    return worker


class Reference:
    """One uninterrupted run, started at once in the background and awaited when needed."""

    def __init__(self, directory: Path) -> None:
        # How often it saves changes no arithmetic (the last --save-every wins); --trace
        # reports the params after every step.
        self.worker = Worker(directory, "--trace", "--save-every", str(STEPS // 2))
        self._shas: dict[int, str] | None = None

    def shas(self) -> dict[int, str]:
        """The sha256 of the parameters after every step (0: the initial parameters)."""
        if self._shas is None:
            assert self.worker.finish() == 0, self.worker.stderr.read_text()[-3000:]
            seen = self.worker.seen
            shas = {e["step"]: e["sha"] for e in seen if e["event"] == "step"}
            resumed = next(e for e in seen if e["event"] == "resumed")
            done = next(e for e in seen if e["event"] == "done")
            assert resumed["step"] == 0 and sorted(shas) == list(range(1, STEPS + 1))
            assert done["sha"] == shas[STEPS]
            shas[0] = resumed["sha"]
            self._shas = shas
        return self._shas


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:
    run = Reference(tmp_path_factory.mktemp("reference") / "ckpt")
    yield run
    if run.worker.process.poll() is None:
        run.worker.process.kill()
        run.worker.finish()


def _committed(directory: Path) -> list[Any]:
    if not directory.exists():
        return []
    with CheckpointManager(directory, read_only=True) as mgr:
        return mgr.info()


def _unfinished_saves(directory: Path) -> list[str]:
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name)


def test_sigkill_at_random_moments_never_loads_a_partial_checkpoint(
    tmp_path: Path, reference: Reference
) -> None:
    directory = tmp_path / "ckpt"
    rng = random.Random(20240605)
    modes = (["during-startup", "random", "mid-save", "mid-save"] * TRIALS)[:TRIALS]
    rng.shuffle(modes)
    killed = mid_save = 0
    log: list[tuple] = []
    resumes: list[dict[str, Any]] = []
    for mode in modes:
        newest = max((info.step for info in _committed(directory)), default=0)
        worker = Worker(directory)
        resumed = worker.next("resumed")
        assert resumed is not None, worker.stderr.read_text()[-3000:]
        assert resumed["step"] == newest, (resumed, newest, log)
        resumes.append(resumed)

        if mode == "random":
            worker.next("ready")
            time.sleep(rng.uniform(0.0, 0.4))
        elif mode == "mid-save":
            worker.next("ready")
            for _ in range(rng.randint(1, 4)):
                worker.next("saving")
            time.sleep(rng.uniform(0.0, 0.02))
        if worker.process.poll() is not None:
            pytest.fail(f"the worker ended before it was killed: {worker.stderr.read_text()}")
        worker.process.send_signal(signal.SIGKILL)
        assert worker.finish() == -signal.SIGKILL
        killed += 1
        partial = _unfinished_saves(directory)
        mid_save += bool(partial)
        infos = _committed(directory)
        # A kill never leaves a committed step that fails verification.
        assert all(info.ok for info in infos), [info.error for info in infos if not info.ok]
        saved = [e["step"] for e in worker.seen if e["event"] == "saved"]
        log.append((mode, resumed["step"], saved[-1:] or None, partial, [i.step for i in infos]))

    assert killed == TRIALS >= 10
    assert mid_save >= 1, log  # some kills landed while a save was being written
    final = _run_to_end(directory)
    resumed = next(e for e in final.seen if e["event"] == "resumed")
    done = next(e for e in final.seen if e["event"] == "done")
    assert resumed["step"] > 0
    shas = reference.shas()
    for event in [*resumes, resumed]:
        # Each resume loaded the newest committed checkpoint complete: its parameters are the
        # ones the uninterrupted run had after that very step.
        assert event["sha"] == shas[event["step"]], (event, log)
    assert done["sha"] == shas[STEPS], log  # bit-identical to the uninterrupted run
    print(f"\n{killed} SIGKILLs, {mid_save} mid-save; trials: {log}")


def test_sigterm_saves_once_more_exits_cleanly_and_resumes_exactly(
    tmp_path: Path, reference: Reference
) -> None:
    directory = tmp_path / "ckpt"
    worker = Worker(directory, "--step-sleep", "0.01")
    while (event := worker.next("saved")) is not None and event["step"] < 4 * SAVE_EVERY:
        pass
    assert event is not None, worker.stderr.read_text()[-3000:]
    worker.process.send_signal(signal.SIGTERM)
    assert worker.finish() == 0, worker.stderr.read_text()[-3000:]
    preempted = next(e for e in worker.seen if e["event"] == "preempted")
    stop = preempted["step"]
    assert 4 * SAVE_EVERY <= stop < STEPS
    infos = _committed(directory)
    assert infos[-1].step == stop and all(info.ok for info in infos)

    final = _run_to_end(directory)
    resumed = next(e for e in final.seen if e["event"] == "resumed")
    done = next(e for e in final.seen if e["event"] == "done")
    shas = reference.shas()
    assert preempted["sha"] == shas[stop]
    assert resumed["step"] == stop and resumed["sha"] == shas[stop]
    assert done["sha"] == shas[STEPS]
