"""``scirs2-optim train`` options: schedule, devices, ZeRO, config, checkpoints, metrics.

Multi-device runs happen in this process, which already has 8 fake CPU devices (conftest);
the one test that needs a fresh JAX (``--devices`` setting ``XLA_FLAGS`` itself), SIGTERM
and the metrics endpoint share one subprocess to keep the file fast.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
import pytest
from rich.console import Console

from scirs2_optim_jax import cli, training
from scirs2_optim_jax.checkpoint import CheckpointManager
from scirs2_optim_jax.config import make_schedule
from scirs2_optim_jax.training import TrainLog, train_digits
from scirs2_optim_jax.training.report import ProgressReporter

SMALL = ["--batch-size", "32", "--log-every", "0"]
HASH = re.compile(r"params_sha256: ([0-9a-f]{64})")
ROOT = Path(__file__).resolve().parents[2]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def sha(out: str) -> str:
    match = HASH.search(out.splitlines()[-1])
    assert match, out
    return match.group(1)


def row(out: str, label: str) -> str:
    """The value of a row of the summary table."""
    for line in out.splitlines():
        if line.strip().startswith(label + " "):
            return line.strip()[len(label) :].strip()
    raise AssertionError(f"no row {label!r} in:\n{out}")


def assert_usage_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("scirs2-optim train: error:") and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


# -- schedules -----------------------------------------------------------------------------


def test_schedules_have_their_shapes() -> None:
    assert cli.TRAIN_SCHEDULES == training.SCHEDULES
    peak, steps = 1.0, 100
    values = {
        name: [float(make_schedule(name, peak, steps, min_lr_ratio=0.1)(t)) for t in (0, 50, 100)]
        for name in training.SCHEDULES
    }
    # 6 warmup steps (6% of 100), then cosine from 1.0 down to 0.1 over the other 94.
    middle = 0.1 + 0.9 * (1 + np.cos(np.pi * 44 / 94)) / 2
    np.testing.assert_allclose(values["warmup-cosine"], [0.0, middle, 0.1], rtol=1e-5)
    np.testing.assert_allclose(values["warmup-constant"], [0.0, 1.0, 1.0])
    np.testing.assert_allclose(values["constant"], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(values["cosine"], [1.0, 0.55, 0.1], atol=1e-6)
    np.testing.assert_allclose(values["linear"], [1.0, 0.55, 0.1], atol=1e-6)
    one_cycle = values["one-cycle"]
    assert one_cycle[0] == pytest.approx(0.04) and one_cycle[2] < 1e-4
    assert float(make_schedule("one-cycle", peak, steps)(30)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"schedule must be one of .*got 'step'"):
        make_schedule("step", peak, steps)


def test_cli_schedule_option_sets_the_learning_rate(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        [
            "train",
            "--steps",
            "20",
            "--batch-size",
            "32",
            "--log-every",
            "5",
            "--schedule",
            "constant",
            "--learning-rate",
            "0.002",
        ],
        capsys,
    )
    assert code == 0, err
    lrs = re.findall(r"lr (\S+)", "\n".join(line for line in out.splitlines() if "step" in line))
    assert lrs[:4] == ["2.0e-03"] * 4, out
    assert "constant" in row(out, "optimizer")


# -- devices and ZeRO ----------------------------------------------------------------------


def test_devices_and_zero_match_one_device() -> None:
    kwargs = {"steps": 30, "batch_size": 32, "log_every": 0}
    one = train_digits(**kwargs)
    for devices, zero_stage in ((4, 0), (4, 1), (8, 2)):
        many = train_digits(**kwargs, devices=devices, zero_stage=zero_stage)
        assert (many.devices, many.zero_stage) == (devices, zero_stage)
        for a, b in zip(jax.tree.leaves(many.params), jax.tree.leaves(one.params), strict=True):
            # Measured: at most 2.1e-6 apart (Adam turns reduction-order noise in tiny
            # gradients into noise of a fraction of one step's size, lr = 3e-3).
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        assert many.final_loss == pytest.approx(one.final_loss, rel=1e-5)
        assert many.test_accuracy == one.test_accuracy
        # Same math, other reduction order: equal to rtol 1e-5, not bit for bit.
        assert many.params_sha256 != one.params_sha256


def test_more_devices_than_the_started_backend_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_cli(["train", "--steps", "5", "--devices", "16"], capsys)
    assert_usage_error(code, err, "16", "already initialised with 8")


def test_batch_must_split_over_the_devices(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        ["train", "--steps", "5", "--batch-size", "30", "--devices", "4"], capsys
    )
    assert_usage_error(code, err, "batch_size (30)", "devices (4)")


def test_request_cpu_devices_edits_xla_flags_before_the_backend_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from scirs2_optim_jax.training import devices

    monkeypatch.setattr(devices, "_backend_started", lambda: False)
    env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    assert devices.request_cpu_devices(4, env) == 4
    assert env["XLA_FLAGS"].split() == [
        "--xla_cpu_enable_fast_math=false",
        "--xla_force_host_platform_device_count=4",
    ]
    assert devices.request_cpu_devices(2, env) == 4  # enough already: left alone
    assert env["XLA_FLAGS"].endswith("count=4")
    assert devices.request_cpu_devices(6, env) == 6  # a smaller count is replaced
    assert env["XLA_FLAGS"].count("device_count") == 1 and env["XLA_FLAGS"].endswith("=6")
    empty: dict[str, str] = {}
    assert devices.request_cpu_devices(1, empty) == 1 and empty == {}
    with pytest.raises(ValueError, match="count must be an integer >= 1, got 0"):
        devices.request_cpu_devices(0, env)


# -- config file ---------------------------------------------------------------------------


def test_config_file_sets_the_run_and_options_override_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "run.toml"
    config.write_text(
        'seed = 3\nbatch_size = 32\n[optimizer]\nname = "sgd"\nmomentum = 0.9\n'
        '[schedule]\nname = "constant"\ntotal_steps = 15\n'
    )
    code, out, err = run_cli(["train", "--config", str(config), "--log-every", "0"], capsys)
    assert code == 0, err
    # No learning rate in the file: sgd's own default (0.3), not adamw's.
    assert out.splitlines()[0].startswith(
        "train: sgd, peak lr 3.0e-01 (constant), 15 steps of 32, seed 3"
    ), out
    expected = train_digits(
        "sgd",
        steps=15,
        batch_size=32,
        seed=3,
        log_every=0,
        schedule="constant",
        hyperparameters={"momentum": 0.9},
    )
    assert sha(out) == expected.params_sha256

    code, out, err = run_cli(
        [
            "train",
            "--config",
            str(config),
            "--log-every",
            "0",
            "--steps",
            "5",
            "--seed",
            "1",
            "--optimizer",
            "adam",
            "--learning-rate",
            "0.01",
        ],
        capsys,
    )
    # momentum = 0.9 applies to sgd, not to the adam chosen on the command line.
    assert_usage_error(code, err, "optimizer.momentum", "'adam'")
    config.write_text("seed = 3\nbatch_size = 32\n[schedule]\ntotal_steps = 15\n")
    code, out, err = run_cli(
        [
            "train",
            "--config",
            str(config),
            "--log-every",
            "0",
            "--steps",
            "5",
            "--seed",
            "1",
            "--learning-rate",
            "0.01",
        ],
        capsys,
    )
    assert code == 0, err
    assert out.splitlines()[0].startswith("train: adamw, peak lr 1.0e-02 (warmup-cosine), 5 steps")
    assert "seed 1" in out.splitlines()[0]


def test_config_and_option_name_any_registry_schedule_in_either_spelling(tmp_path: Path) -> None:
    from scirs2_optim_jax.cli.train_settings import train_settings

    config = tmp_path / "run.toml"
    config.write_text('[schedule]\nname = "one_cycle"\n')
    args = cli.build_parser().parse_args(["train", "--config", str(config)])
    assert train_settings(args, {})["train"]["schedule"] == "one-cycle"
    args = cli.build_parser().parse_args(
        ["train", "--config", str(config), "--schedule", "warmup-constant"]
    )
    settings = train_settings(args, {})
    assert settings["train"]["schedule"] == "warmup-constant"
    assert settings["config"].schedule.name == "warmup_constant"


@pytest.mark.parametrize(
    ("name", "text", "needles"),
    [
        ("bad.toml", "[optimizer]\nlearning_rate = -1\n", ("optimizer.learning_rate", "-1")),
        ("bad.yaml", "optimizer:\n  lr: 0.1\n", ("optimizer.lr",)),
        ("bad.json", '{"parallel": {"zero_stage": 3}}', ("parallel.zero_stage", "3")),
        ("bad.toml", '[precision]\nmode = "bf16"\n', ("precision.mode", "bf16")),
        ("bad.toml", "batch_size = 5000\n", ("batch_size", "5000")),
        ("bad.toml", "[optimizer\n", ("cannot parse",)),
        ("bad.ini", "", ("must end in",)),
    ],
)
def test_invalid_config_exits_2_naming_the_field(
    name: str,
    text: str,
    needles: tuple[str, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / name
    path.write_text(text)
    code, out, err = run_cli(["train", "--config", str(path)], capsys)
    assert out == ""
    assert_usage_error(code, err, *needles)


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["train", "--config", str(tmp_path / "none.toml")], capsys)
    assert_usage_error(code, err, "none.toml")


# -- checkpoints and resume ----------------------------------------------------------------


@pytest.mark.parametrize("layout", [[], ["--devices", "4", "--zero-stage", "2"]])
def test_stop_and_resume_is_bit_identical(
    layout: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = ["train", "--steps", "40", *SMALL, "--save-every", "10", *layout]
    code, out, err = run_cli(run, capsys)
    assert code == 0, err
    uninterrupted = sha(out)
    devices, zero_stage = (layout[1], layout[3]) if layout else ("1", "0")
    assert f"devices {devices}, ZeRO stage {zero_stage}" in out.splitlines()[0]
    assert row(out, "devices") == devices and row(out, "zero stage") == zero_stage

    directory = str(tmp_path / "ckpt")
    code, out, err = run_cli([*run, "--checkpoint-dir", directory, "--stop-at", "20"], capsys)
    assert code == 0, err
    assert row(out, "stopped") == "stopped at step 20" and row(out, "checkpoint") == "step 20"
    with CheckpointManager(directory, read_only=True) as manager:
        assert manager.all_steps() == [10, 20]
        assert manager.restore().config["spec"]["steps"] == 40

    code, out, err = run_cli([*run, "--checkpoint-dir", directory, "--resume"], capsys)
    assert code == 0, err
    assert f"resumed from checkpoint step 20 in {directory}" in out
    assert row(out, "steps") == "20 (steps 21-40 of 40)"
    assert sha(out) == uninterrupted
    with CheckpointManager(directory, read_only=True) as manager:
        assert manager.all_steps() == [20, 30, 40]  # keeps 3, the final step included


def test_resume_checks_the_run_and_the_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = str(tmp_path / "ckpt")
    base = ["train", "--steps", "10", *SMALL, "--checkpoint-dir", directory]
    code, _, err = run_cli(base, capsys)
    assert code == 0, err
    # A finished run resumed again: nothing left to train, the same parameters.
    code, out, err = run_cli([*base, "--resume"], capsys)
    assert code == 0, err
    assert row(out, "steps").startswith("0")

    code, _, err = run_cli(base, capsys)
    assert_usage_error(code, err, "already holds checkpoints", "step 10", "--resume")
    code, _, err = run_cli([*base, "--resume", "--learning-rate", "0.01"], capsys)
    assert_usage_error(code, err, "another run", "learning_rate: 0.003 in the checkpoint, 0.01")
    # A longer --steps: say that the length is part of the run, and how to finish or extend.
    longer = ["train", "--steps", "20", *SMALL, "--checkpoint-dir", directory, "--resume"]
    code, _, err = run_cli(longer, capsys)
    assert_usage_error(
        code, err, "steps: 10 in the checkpoint, 20 now", "resume with --steps 10", "another"
    )
    code, _, err = run_cli(["train", "--steps", "10", "--resume"], capsys)
    assert_usage_error(code, err, "--resume needs --checkpoint-dir")
    code, _, err = run_cli([*base, "--resume", "--stop-at", "5"], capsys)
    assert_usage_error(code, err, "stop_at (5)", "resumes from (10)")


# -- progress bar --------------------------------------------------------------------------


def test_progress_bar_on_a_terminal_shows_loss_lr_and_throughput() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=150)
    with ProgressReporter(console, steps=20, log_every=100) as report:
        assert report.interactive and report.refresh_every == 10
        report(TrainLog(10, 20, 0.61234, 2.5e-3, 0.5, 12345.0))
        report(TrainLog(20, 20, 0.41234, 1.0e-4, 1.0, 23456.0))
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "20/20" in text and "loss 0.4123" in text and "lr 1.0e-04" in text
    assert "23,456 samples/s" in text
    assert "step 10/20" not in text  # no plain lines on a terminal


# -- a fresh process: --devices sets XLA_FLAGS, /metrics is served, SIGTERM saves ----------


@contextlib.contextmanager
def lines_of(
    proc: subprocess.Popen[str],
) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    """Collects the process's stdout lines in a queue; kills the process on the way out."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        thread.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def wait_for_line(lines: queue.Queue[str], pattern: str, timeout: float, seen: list[str]) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no line matching {pattern!r} within {timeout} s; got {seen}")


def get(url: str, token: str | None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_fresh_process_devices_metrics_endpoint_and_sigterm(tmp_path: Path) -> None:
    token = "test-token-1234"  # a test fixture, not a credential
    env = {**os.environ, "XLA_FLAGS": "", "SCIRS2_METRICS_TOKEN": token}
    directory = tmp_path / "ckpt"
    argv = [
        sys.executable,
        "-m",
        "scirs2_optim_jax",
        "train",
        "--steps",
        "100000",
        "--batch-size",
        "32",
        "--devices",
        "2",
        "--zero-stage",
        "1",
        "--log-every",
        "100",
        "--metrics-port",
        "0",
        "--checkpoint-dir",
        str(directory),
        "--save-every",
        "100000",
    ]
    stderr_file = tmp_path / "stderr.txt"
    seen: list[str] = []
    with (
        stderr_file.open("w") as stderr,
        lines_of(
            subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        ) as (proc, lines),
    ):
        url = wait_for_line(lines, r"^metrics: http://127\.0\.0\.1:\d+", 90, seen).split()[1]
        assert url.endswith("/metrics")
        steps = 0.0
        deadline = time.monotonic() + 60
        while steps < 5 and time.monotonic() < deadline:
            status, body = get(url, token)
            assert status == 200, body
            match = re.search(r"^scirs2_steps_total (\S+)$", body, re.MULTILINE)
            steps = float(match.group(1)) if match else 0.0
            time.sleep(0.2)
        assert steps >= 5, body
        assert "scirs2_loss " in body and "scirs2_learning_rate " in body
        assert get(url, None)[0] == 401  # the token from the environment is required
        assert get(url, "wrong")[0] == 401
        status, health = get(url.replace("/metrics", "/health"), token)
        assert status == 200 and json.loads(health)["status"] in ("healthy", "warning")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        wait_for_line(lines, r"^params_sha256: ", 30, seen)
    out = "\n".join(seen)
    err = stderr_file.read_text()
    assert "Traceback" not in err, err
    assert "devices 2, ZeRO stage 1" in out
    stopped = re.search(
        r"preempted \(signal 15\) after step (\d+); saved checkpoint step (\d+)", out
    )
    assert stopped and stopped.group(1) == stopped.group(2), out
    assert row(out, "devices") == "2" and HASH.fullmatch(seen[-1])
    with CheckpointManager(directory, read_only=True) as manager:
        assert manager.all_steps() == [int(stopped.group(1))]
        manager.verify(int(stopped.group(1)))
