"""bench --flax: both Flax paths, on a tiny config (no timing asserted)."""

from __future__ import annotations

import pytest
from test_bench import _tiny

from scirs2_optim_jax.bench import flax_paths


@pytest.mark.parametrize("path", flax_paths.PATHS)
def test_flax_path_reports_consistent_figures(path: str) -> None:
    result = flax_paths.run_flax_path(_tiny(), path, repeats=2, torch=False)
    assert (result.config, result.path, result.num_params, result.num_leaves) == (
        "tiny",
        path,
        4096,
        6,
    )
    assert result.ours_ms > 0 and result.optax_ms > 0 and result.bound_ms > 0
    assert result.dispatch_ms is not None and result.dispatch_ms > 0
    assert result.speedup == pytest.approx(result.optax_ms / result.ours_ms)
    assert result.torch_ms is None and result.vs_torch is None
    # Ours with state_layout="engine", timed in the same rounds.
    assert result.engine_ms is not None and result.engine_ms > 0
    assert result.engine_dispatch_ms is not None and result.engine_dispatch_ms > 0
    assert result.engine_compile_s is not None and result.engine_compile_s > 0
    assert result.engine_speedup == pytest.approx(result.optax_ms / result.engine_ms)
    assert result.engine_vs_torch is None
    row = flax_paths.format_row(result)
    assert row.split()[:2] == ["tiny", path]
    assert f"{result.engine_speedup:.2f}x" in row.split()
    assert set(result.as_dict()) >= {"speedup", "vs_torch", "dispatch_ms", "engine_speedup"}


def test_flax_bench_command_rejects_other_configs(capsys: pytest.CaptureFixture[str]) -> None:
    from scirs2_optim_jax.bench import commands

    assert commands.main(["--flax", "a"]) == 2
    assert "--flax runs configs b, c, d, e, not 'a'" in capsys.readouterr().err
