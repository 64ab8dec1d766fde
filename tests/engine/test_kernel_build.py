"""The first build of the kernels announces itself once, and can be done ahead of time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FIRST_STEP = """
import jax, jax.numpy as jnp, scirs2_optim_jax as so
tx = so.adamw(1e-3)
p = {"w": jnp.ones(4)}
step = jax.jit(lambda p, s, g: so.apply_gradients(tx, g, s, p))
for _ in range(3):
    p, s = step(p, tx.init(p), p)
print("hlo-has-kernel", "scirs2_adam_step" in step.lower(p, tx.init(p), p).as_text())
"""


def _run(args: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["SCIRS2_OPTIM_KERNEL_CACHE"] = str(cache)
    return subprocess.run(args, capture_output=True, text=True, env=env, check=False, timeout=600)


def test_first_build_is_announced_once_then_silent(tmp_path: Path) -> None:
    first = _run([sys.executable, "-c", FIRST_STEP], tmp_path)
    assert first.returncode == 0, first.stderr
    assert "hlo-has-kernel True" in first.stdout
    assert first.stderr.count("building the one-pass CPU kernels") == 1
    assert "scirs2-optim kernels build" in first.stderr
    again = _run([sys.executable, "-c", FIRST_STEP], tmp_path)
    assert again.returncode == 0 and "building" not in again.stderr


def test_kernels_build_command_builds_ahead_of_time(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "scirs2_optim_jax", "kernels", "build"]
    built = _run(command, tmp_path)
    assert built.returncode == 0, built.stderr
    assert "kernels ready" in built.stdout and str(tmp_path / "kernels") in built.stdout
    assert "scirs2_adam_step" in built.stdout
    assert list((tmp_path / "kernels").glob("*/libscirs2_optim_kernels.so"))
    step = _run([sys.executable, "-c", FIRST_STEP], tmp_path)
    assert "building" not in step.stderr and "hlo-has-kernel True" in step.stdout


def test_kernels_build_fails_clearly_without_a_compiler(tmp_path: Path) -> None:
    env_command = [sys.executable, "-m", "scirs2_optim_jax", "kernels", "build"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(SCIRS2_OPTIM_KERNEL_CACHE=str(tmp_path), CXX="no-such-compiler")
    done = subprocess.run(env_command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 1
    assert "no C++ compiler found" in done.stderr and "could not be built" in done.stderr
