"""Accelerator memory settings: applied before the backend starts, refused after, reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from scirs2_optim_jax.config import (
    AcceleratorConfig,
    BackendAlreadyInitializedError,
    RunConfig,
    apply_memory_settings,
    backend_initialized,
    load_config,
    memory_settings_report,
)

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: the backend must not have started yet.
FRESH_PROCESS = """
import json, os
from scirs2_optim_jax.config import (
    AcceleratorConfig, BackendAlreadyInitializedError, apply_memory_settings,
    backend_initialized, load_config, memory_settings_report,
)
out = {"before": backend_initialized()}
config = load_config(environ=os.environ)  # settings come from SCIRS2_OPTIM_ACCELERATOR__*
out["applied"] = apply_memory_settings(config)
out["report_before"] = memory_settings_report().to_dict()
import jax
jax.devices()
out["after"] = backend_initialized()
out["report_after"] = memory_settings_report().to_dict()
apply_memory_settings(config)  # the same settings again: fine
try:
    apply_memory_settings(AcceleratorConfig(allocator="bfc"))
    out["conflict"] = None
except BackendAlreadyInitializedError as err:
    out["conflict"] = str(err)
print(json.dumps(out))
"""


def test_settings_are_applied_before_the_backend_starts_in_a_fresh_process() -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("XLA_PYTHON_CLIENT", "XLA_CLIENT"))
    }
    env.update(
        {
            "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": str(ROOT),
            "SCIRS2_OPTIM_ACCELERATOR__PREALLOCATE": "false",
            "SCIRS2_OPTIM_ACCELERATOR__MEMORY_FRACTION": "0.5",
            "SCIRS2_OPTIM_ACCELERATOR__ALLOCATOR": "platform",
        }
    )
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["before"] is False and out["after"] is True
    assert out["applied"] == {
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5",
        "XLA_PYTHON_CLIENT_ALLOCATOR": "platform",
    }
    before = out["report_before"]
    assert (before["preallocate"], before["memory_fraction"], before["allocator"]) == (
        False,
        0.5,
        "platform",
    )
    assert before["backend_initialized"] is False and before["platform"] is None
    after = out["report_after"]
    assert after["backend_initialized"] is True and after["platform"] == "cpu"
    assert after["variables"] == out["applied"]
    assert "already initialised" in out["conflict"] and "allocator" in out["conflict"]


def test_changing_settings_after_the_backend_started_is_a_clear_error() -> None:
    jax.devices()
    assert backend_initialized()
    env: dict[str, str] = {}
    with pytest.raises(BackendAlreadyInitializedError) as info:
        apply_memory_settings(AcceleratorConfig(preallocate=False, memory_fraction=0.3), env)
    message = str(info.value)
    assert "already initialised" in message
    assert "preallocate: the backend has the JAX default, the config asks for False" in message
    assert "memory_fraction" in message
    assert env == {}  # nothing written
    # Settings equal to what the backend started with are accepted.
    same = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "XLA_PYTHON_CLIENT_MEM_FRACTION": ".3"}
    applied = apply_memory_settings(AcceleratorConfig(preallocate=False, memory_fraction=0.3), same)
    assert applied["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    # Unset settings never conflict; preallocation on is JAX's default.
    apply_memory_settings(RunConfig(), {})
    apply_memory_settings(AcceleratorConfig(preallocate=True, allocator="default"), {})


def test_fraction_goes_to_the_variable_already_in_use() -> None:
    env = {"XLA_CLIENT_MEM_FRACTION": "0.9"}
    report = memory_settings_report(env)
    assert report.memory_fraction == 0.9
    config = AcceleratorConfig(memory_fraction=0.9)
    assert "XLA_CLIENT_MEM_FRACTION" in apply_memory_settings(config, env)


def test_report_describes_the_settings() -> None:
    report = memory_settings_report({"XLA_PYTHON_CLIENT_ALLOCATOR": "cuda_async"})
    text = report.describe()
    assert "allocator cuda_async" in text and "preallocate JAX default" in text
    assert "backend: initialised (cpu)" in text


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"accelerator\.memory_fraction must be a number in"):
        load_config(environ={"SCIRS2_OPTIM_ACCELERATOR__MEMORY_FRACTION": "1.5"})
    with pytest.raises(ValueError, match=r"accelerator\.allocator must be one of 'default'"):
        AcceleratorConfig(allocator="tcmalloc")
