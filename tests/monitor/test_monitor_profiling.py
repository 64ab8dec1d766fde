"""Profiling: a jax.profiler trace holding exactly the chosen steps, and device memory
statistics where the backend reports them (the CPU backend does not; fake devices stand in
for one that does)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import pytest

from scirs2_optim_jax.monitor import (
    ResourceSampler,
    device_memory_stats,
    profile_steps,
)


def _traced_step_numbers(trace_dir: str, name: str) -> list[int]:
    [trace] = Path(trace_dir).glob("*.trace.json.gz")
    with gzip.open(trace) as f:
        events = json.load(f)["traceEvents"]
    return sorted(int(e["args"]["step_num"]) for e in events if e.get("name") == name)


def test_trace_covers_exactly_the_chosen_steps(tmp_path: Path) -> None:
    step = jax.jit(lambda x: jnp.tanh(x @ x.T) @ x)
    x = jnp.ones((16, 16))
    with profile_steps(tmp_path, num_steps=3, skip=2, name="train") as profiler:
        traced = []
        for i in range(10, 18):
            with profiler.step(i) as active:
                x = jax.block_until_ready(step(x))
            traced.append(active)
    assert traced == [False, False, True, True, True, False, False, False]
    assert profiler.traced_steps == [12, 13, 14] and profiler.done
    assert profiler.trace_dir is not None
    assert Path(profiler.trace_dir).parent == tmp_path / "plugins" / "profile"
    [xplane] = Path(profiler.trace_dir).glob("*.xplane.pb")
    assert xplane.stat().st_size > 0
    assert _traced_step_numbers(profiler.trace_dir, "train") == [12, 13, 14]


def test_leaving_the_block_early_stops_the_trace(tmp_path: Path) -> None:
    with profile_steps(tmp_path, num_steps=5, skip=0) as profiler:
        for _ in range(2):
            with profiler.step():
                jax.block_until_ready(jnp.ones(3) * 2)
    assert profiler.traced_steps == [0, 1] and not profiler.done
    assert profiler.trace_dir is not None
    # The profiler is free again: a second trace can start.
    with profile_steps(tmp_path / "again", num_steps=1, skip=0) as again, again.step():
        pass
    assert again.done


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_steps": 0}, ValueError, "num_steps must be an integer >= 1, got 0"),
        ({"num_steps": 2, "skip": -1}, ValueError, "skip must be an integer >= 0, got -1"),
        ({"num_steps": 2.0}, TypeError, "num_steps must be an integer, got 2.0"),
    ],
)
def test_profile_steps_rejects_bad_arguments(
    tmp_path: Path, kwargs: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=f"profile_steps: {match}"):
        profile_steps(tmp_path, **kwargs)


class _FakeDevice:
    def __init__(self, stats: dict[str, int] | None) -> None:
        self._stats = stats

    def memory_stats(self) -> dict[str, Any] | None:
        return self._stats


def test_device_memory_stats_sum_the_devices_that_report_them() -> None:
    devices = [
        _FakeDevice({"bytes_in_use": 30, "peak_bytes_in_use": 50, "bytes_limit": 100}),
        _FakeDevice(None),
        _FakeDevice({"bytes_in_use": 10, "bytes_limit": 100}),
    ]
    assert device_memory_stats(devices) == {
        "bytes_in_use": 40,
        "peak_bytes_in_use": 60,
        "bytes_limit": 200,
        "devices": 2,
    }
    assert device_memory_stats([_FakeDevice(None)]) is None
    snapshot = ResourceSampler(devices).sample()
    assert (snapshot.device_bytes_in_use, snapshot.device_bytes_limit) == (40, 200)
    assert snapshot.memory_utilization >= 0.2


def test_device_memory_stats_on_this_backend() -> None:
    stats = device_memory_stats()
    reported = [d for d in jax.local_devices() if d.memory_stats()]
    if not reported:  # the CPU backend reports nothing
        assert stats is None
    else:
        assert stats is not None and stats["devices"] == len(reported)
        assert stats["bytes_in_use"] == sum(d.memory_stats()["bytes_in_use"] for d in reported)
