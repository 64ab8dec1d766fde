"""The benchmark harness measures what it says, on a tiny config (no timing asserted)."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

import jax
import optax
import pytest

import scirs2_optim_jax as so
from scirs2_optim_jax.bench import commands as bench_commands
from scirs2_optim_jax.bench import configs, harness, report


def _tiny(master_weights: bool = False) -> configs.BenchConfig:
    shapes = configs.leaf_shapes(4096, 6)
    return configs.BenchConfig(
        name="tiny",
        description="adamw, 4096 params",
        make_params=lambda dtype, seed: {
            f"leaf_{i}": leaf for i, leaf in enumerate(configs._materialise(shapes, dtype, seed))
        },
        ours=lambda: so.with_master_weights(so.adamw(1e-3)) if master_weights else so.adamw(1e-3),
        reference=lambda: optax.adamw(1e-3),
        bytes_per_param=28,
        param_dtype=jax.numpy.bfloat16 if master_weights else jax.numpy.float32,
        master_weights=master_weights,
    )


@pytest.mark.parametrize("master_weights", [False, True])
def test_run_config_reports_consistent_figures(master_weights: bool) -> None:
    result = harness.run_config(_tiny(master_weights), repeats=3, torch=False)
    assert result.num_params == 4096 and result.num_leaves == 6
    assert result.ours_ms > 0 and result.optax_ms > 0 and result.bandwidth_gbps > 0
    assert result.speedup == pytest.approx(result.optax_ms / result.ours_ms)
    expected_bound = 28 * 4096 / (result.bandwidth_gbps * 1e9) * 1e3
    assert result.bound_ms == pytest.approx(expected_bound)
    assert result.efficiency == pytest.approx(result.bound_ms / result.ours_ms)
    row = report.format_row(result)
    assert row.split()[0] == "tiny"
    document = json.loads(report.to_json([result], {"note": 1}))
    assert document["results"][0]["speedup"] == pytest.approx(result.speedup)
    assert document["machine"]["backend"] == "cpu" and document["note"] == 1


def test_leaf_shapes_sum_and_count() -> None:
    for total, count in [(10_000_000, 20), (10_000_000, 2000), (1001, 7)]:
        shapes = configs.leaf_shapes(total, count)
        assert len(shapes) == count
        assert sum(math.prod(s) for s in shapes) == total


def test_transformer_shapes_match_the_architecture() -> None:
    tree = configs.transformer_shapes()
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
    width, vocab, layers = 512, 32_000, 12
    per_layer = 4 * (width * width + width) + 2 * 2 * width  # attention q,k,v,o + 2 norms
    per_layer += width * 4 * width + 4 * width + 4 * width * width + width  # the MLP
    assert count == layers * per_layer + 2 * vocab * width + 2 * width


def test_every_config_builds_both_optimizers() -> None:
    for config in configs.CONFIGS.values():
        assert isinstance(config.ours(), optax.GradientTransformation)
        assert isinstance(config.reference(), optax.GradientTransformation)
        assert config.bytes_per_param >= 28


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_commands.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


def test_bench_command_rejects_unknown_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_commands.run(_parse(["zz"])) == 2
    assert "unknown config 'zz'" in capsys.readouterr().err
    assert bench_commands.run(_parse(["a", "--repeats", "0"])) == 2


def test_compilation_cache_is_written_and_reused(tmp_path) -> None:
    """A second process finds the first one's executable in the persistent cache."""
    code = (
        "import jax, jax.numpy as jnp\n"
        "from scirs2_optim_jax.compile_cache import enable_compilation_cache\n"
        "enable_compilation_cache(min_compile_seconds=0)\n"
        "hits = []\n"
        "jax.monitoring.register_event_listener("
        "lambda e, **k: hits.append(e) if e == '/jax/compilation_cache/cache_hits' else None)\n"
        "jax.jit(lambda x: jnp.sin(x) * 2 + 1)(jnp.ones(17)).block_until_ready()\n"
        "print(len(hits))\n"
    )
    env = {**os.environ, "SCIRS2_OPTIM_COMPILATION_CACHE": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.split()[-1]
        for _ in range(2)
    ]
    assert any(tmp_path.iterdir())
    assert runs[0] == "0" and int(runs[1]) >= 1


def test_compilation_cache_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from scirs2_optim_jax.compile_cache import enable_compilation_cache

    monkeypatch.setenv("SCIRS2_OPTIM_COMPILATION_CACHE", "off")
    assert enable_compilation_cache() is None
    with pytest.raises(ValueError, match="min_compile_seconds"):
        enable_compilation_cache("/tmp/x", min_compile_seconds=-1)


def test_compile_twice_refuses_an_unknown_config_before_starting_a_process() -> None:
    # The name is written into the child's code, so only known names are accepted.
    from scirs2_optim_jax.bench.cache_check import compile_twice

    with pytest.raises(ValueError, match=r"config must be one of .*got \"b'\); import os"):
        compile_twice("b'); import os; ('")
