"""benchmarks/accelerator_check.py: how it reads pytest's output, scores the sections, picks
the tests, and fails loudly; a whole run is ``bash benchmarks/accelerator_check.sh``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import accelerator_check as check

REPO = Path(__file__).resolve().parents[2]

PLAIN = """\
tests/core/test_parity.py::test_matches_optax_constant_learning_rate[adam] PASSED [  1%]
tests/bench/test_accelerator_check.py::test_zero_on_one_device_equals_the_plain_step[0] FAILED [ 2%]
tests/bench/test_accelerator_check.py::test_parity_x[lamb] SKIPPED (no reason) [  3%]
"""
XDIST = """\
[gw0] [ 10%] PASSED tests/core/test_parity.py::test_matches_optax_with_schedule[sgd]
[gw1] [ 20%] ERROR tests/bench/test_accelerator_check.py::test_checkpoint_written[None]
ERROR tests/flax/test_offload_flax.py - ModuleNotFoundError: No module named 'flax'
FAILED tests/bench/test_accelerator_check.py::test_zero_on_one_device_equals_the_plain_step[0]
0.52s call     tests/core/test_parity.py::test_matches_optax_with_schedule[sgd]
0.25s setup    tests/core/test_parity.py::test_matches_optax_with_schedule[sgd]
"""


def test_outcomes_read_plain_and_xdist_lines() -> None:
    assert check._outcomes(PLAIN) == {
        "tests/core/test_parity.py::test_matches_optax_constant_learning_rate[adam]": "PASSED",
        "tests/bench/test_accelerator_check.py::test_zero_on_one_device_equals_the_plain_step[0]": (
            "FAILED"
        ),
        "tests/bench/test_accelerator_check.py::test_parity_x[lamb]": "SKIPPED",
    }
    outcomes = check._outcomes(PLAIN + XDIST)
    assert outcomes["tests/core/test_parity.py::test_matches_optax_with_schedule[sgd]"] == "PASSED"
    assert outcomes["tests/bench/test_accelerator_check.py::test_checkpoint_written[None]"] == (
        "ERROR"
    )
    assert not any(nodeid.startswith("tests/flax") for nodeid in outcomes)


def test_tests_belong_to_their_section_by_file_prefix_and_name() -> None:
    whole = {"files": ["tests/core/test_parity.py"]}
    prefix = {"files": [check.ACCELERATOR_TESTS], "prefix": "test_zero_"}
    names = {"files": ["tests/engine/test_fused.py"], "names": ["test_bad_fused_arguments"]}
    assert check._belongs("tests/core/test_parity.py::test_a[x-y]", whole)
    assert not check._belongs("tests/core/test_other.py::test_a", whole)
    assert check._belongs(f"{check.ACCELERATOR_TESTS}::test_zero_on[1-host]", prefix)
    assert not check._belongs(f"{check.ACCELERATOR_TESTS}::test_offload_x[device]", prefix)
    assert check._belongs("tests/engine/test_fused.py::test_bad_fused_arguments", names)
    assert not check._belongs("tests/engine/test_fused.py::test_kernels_build_here", names)


@pytest.fixture
def checker(tmp_path: Path) -> Iterator[check.Check]:
    checker = check.Check(tmp_path, 480.0, sys.executable, "cpu")
    yield checker
    checker.log.close()


def _score(checker: check.Check, entries: list, output: str, returncode: int = 1, **kw) -> dict:
    section = check.Section("zero")
    result = check.Command(returncode, output, 12.0, kw.get("timed_out", False))
    broken = {"tests/flax/test_offload_flax.py"}
    checker.score(section, entries, check._outcomes(output), result, broken, {})
    return {"status": section.status, "detail": section.detail, **section.data}


def test_a_section_fails_on_a_failed_missing_uncollected_or_unrun_test(
    checker: check.Check,
) -> None:
    zero = [{"files": [check.ACCELERATOR_TESTS], "prefix": "test_zero_", "missing": []}]
    failed = _score(checker, zero, PLAIN)
    assert failed["status"] == "fail" and failed["counts"] == {"FAILED": 1}
    assert failed["failed"] == [
        "tests/bench/test_accelerator_check.py::test_zero_on_one_device_equals_the_plain_step[0]"
    ]
    parity = [{"files": ["tests/core/test_parity.py"], "missing": []}]
    assert _score(checker, parity, PLAIN)["status"] == "pass"
    assert _score(checker, parity, "", returncode=5)["detail"] == "no test ran (pytest exit 5)"
    timed_out = _score(checker, parity, PLAIN, timed_out=True)
    assert timed_out["status"] == "fail" and "ran out of time" in timed_out["detail"]
    missing = [{**parity[0], "missing": ["tests/core/test_parity.py::test_gone"]}]
    assert (
        "missing: tests/core/test_parity.py::test_gone" in _score(checker, missing, PLAIN)["detail"]
    )
    flax = [*parity, {"files": ["tests/flax/test_offload_flax.py"], "missing": []}]
    uncollected = _score(checker, flax, PLAIN)
    assert uncollected["status"] == "fail"
    assert uncollected["failed"] == ["tests/flax/test_offload_flax.py (not collected)"]


def test_selection_names_real_tests_and_leaves_8_device_files_to_the_cpu(
    checker: check.Check,
) -> None:
    for mode in ("cpu", "accelerator"):
        checker.mode = mode
        arguments, resolved, notes = checker.test_selection()
        assert all(not entry["missing"] for entries in resolved.values() for entry in entries)
        assert check.ACCELERATOR_TESTS in arguments
        assert "tests/engine/test_fused.py::test_bad_fused_arguments" in arguments
        assert "tests/engine/test_fused.py" not in arguments
        parallel = "tests/parallel/test_offload_parallel.py"
        assert (parallel in arguments) == (mode == "cpu")
        assert any("8 CPU devices" in note for note in notes) == (mode == "accelerator")
        two_devices = "tests/checkpoint/test_offload_checkpoint.py::test_target_memory_kind_is_kept"
        assert (two_devices in arguments) == (mode == "accelerator")
        if mode == "accelerator":
            assert arguments[arguments.index(two_devices) - 1] == "--deselect"
    # Every prefix of the accelerator tests picks some test of that file.
    text = (REPO / check.ACCELERATOR_TESTS).read_text()
    for entries in check.TEST_SECTIONS.values():
        for entry in entries:
            if "prefix" in entry:
                assert f"def {entry['prefix']}" in text


def test_a_machine_without_jax_fails_loudly_and_still_writes_the_json(tmp_path: Path) -> None:
    """The environment section fails (an interpreter that cannot import jax: no site
    packages), the run exits 1 at once, and the JSON and the log say why."""
    isolated = tmp_path / "python"
    isolated.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    isolated.chmod(0o755)
    out = tmp_path / "out"
    script = REPO / "benchmarks" / "accelerator_check.py"
    argv = [sys.executable, str(script), "--out", str(out), "--python", str(isolated)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    document = json.loads((out / "accelerator_check.json").read_text())
    assert document["ok"] is False and document["failed"] == ["environment"]
    environment = document["sections"]["environment"]
    assert environment["status"] == "fail"
    assert "JAX does not start here" in environment["detail"]
    assert "No module named 'jax'" in environment["detail"]
    log = (out / "accelerator_check.log").read_text()
    assert log.startswith("accelerator check of") and "FAILED: environment" in log


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()
    except OSError:
        return False


def test_a_command_over_its_limit_is_killed_with_its_children(checker: check.Check) -> None:
    code = (
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    start = time.monotonic()
    result = checker.run([sys.executable, "-c", code], timeout=2)
    assert result.timed_out and result.returncode is not None
    assert time.monotonic() - start < 30
    words = result.output.split()
    assert words[0] == "child"
    deadline = time.monotonic() + 10
    while _alive(int(words[1])) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(int(words[1]))
    assert "over its 2 s limit" in (checker.out / "accelerator_check.log").read_text()


def test_sections_past_the_budget_fail_as_not_started(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = REPO / "benchmarks" / "accelerator_check.py"
    argv = [sys.executable, str(script), "--out", str(out), "--budget", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    document = json.loads((out / "accelerator_check.json").read_text())
    sections = document["sections"]
    assert sections["environment"]["status"] == "pass"
    assert sections["accelerator_only"]["status"] == "skip"  # this machine has none
    for name in ("kernels", "parity", "checkpoint", "bench", "offload_bench"):
        assert sections[name]["status"] == "fail", name
        assert sections[name]["detail"].startswith("not started"), name
    assert document["jax"] and document["devices"]


@pytest.mark.parametrize("argv", [["--budget", "x"], ["--mode", "tpu"], []])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        check.main(argv)
    assert exit_info.value.code == 2
