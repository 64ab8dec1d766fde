"""bench --offload: the five rows at a tiny size report consistent figures (no timing
asserted), and the command's options."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest

from scirs2_optim_jax.bench import commands, offload

COUNT = 8192


@pytest.fixture(scope="module")
def rows() -> dict[str, offload.OffloadResult]:
    return {r.variant: r for r in offload.run_offload_rows(COUNT, repeats=2)}


def test_every_row_is_measured_in_order(rows: dict[str, offload.OffloadResult]) -> None:
    assert list(rows) == list(offload.VARIANTS)
    for row in rows.values():
        assert row.num_params == COUNT
        assert row.ms > 0 and row.first_s > 0
        assert row.baseline_ms == rows[row.baseline].ms
        assert row.ratio == pytest.approx(row.ms / row.baseline_ms)
    assert rows["none"].ratio == rows["master"].ratio == 1.0
    assert [rows[v].baseline for v in offload.VARIANTS] == [
        "none",
        "none",
        "none",
        "master",
        "master",
    ]


def test_dtypes_and_where_the_state_lives(rows: dict[str, offload.OffloadResult]) -> None:
    platform = jax.devices()[0].platform
    host = jax.local_devices(backend="cpu")[0].platform
    assert {v: rows[v].param_dtype for v in rows} == {
        "none": "float32",
        "device": "float32",
        "host": "float32",
        "master": "bfloat16",
        "host_master": "bfloat16",
    }
    assert rows["none"].state_on == rows["master"].state_on == f"{platform}:device"
    assert rows["device"].state_on == f"{platform}:pinned_host"
    assert rows["host"].state_on == rows["host_master"].state_on == f"{host}:device"


def test_state_and_link_bytes(rows: dict[str, offload.OffloadResult]) -> None:
    """AdamW holds two float32 moments (plus a count); master weights add a float32 copy.
    Per step: compute='device' moves the state in and out; compute='host' moves float32
    gradients and parameters down and parameters up, and with master weights only the bf16
    gradients down and the bf16 parameters up."""
    moments = 2 * 4 * COUNT
    assert moments <= rows["none"].state_bytes <= moments + 64
    assert rows["device"].state_bytes == rows["host"].state_bytes == rows["none"].state_bytes
    assert moments + 4 * COUNT <= rows["master"].state_bytes <= moments + 4 * COUNT + 64
    assert rows["host_master"].state_bytes == rows["master"].state_bytes
    assert rows["none"].link_bytes == rows["master"].link_bytes == 0
    assert rows["device"].link_bytes == 2 * rows["device"].state_bytes
    assert rows["host"].link_bytes == 3 * 4 * COUNT
    assert rows["host_master"].link_bytes == 2 * 2 * COUNT
    assert rows["none"].link_gbps is None
    for name in ("device", "host", "host_master"):
        row = rows[name]
        assert row.link_gbps == pytest.approx(row.link_bytes / (row.ms * 1e-3) / 1e9)


def test_rows_format_and_serialise(rows: dict[str, offload.OffloadResult]) -> None:
    assert offload.header().split()[:2] == ["params", "row"]
    for name, row in rows.items():
        words = offload.format_row(row).split()
        assert words[:3] == ["8192", name, row.param_dtype]
        document = json.loads(json.dumps(row.as_dict()))
        assert document["ratio"] == pytest.approx(row.ratio)
        assert document["variant"] == name
        assert set(document) >= {"ms", "baseline_ms", "link_bytes", "link_gbps", "state_on"}


def test_a_row_without_its_baseline_has_no_ratio() -> None:
    (row,) = offload.run_offload_rows(1000, repeats=1, variants=["host_master"])
    assert row.baseline == "master" and row.baseline_ms is None and row.ratio is None
    assert offload.format_row(row).split()[5] == "-"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"variants": ["gpu"]}, "unknown variant 'gpu'"),
        ({"repeats": 0}, "repeats must be an integer >= 1, got 0"),
        ({"num_params": 999}, "num_params must be an integer >= 1000, got 999"),
    ],
)
def test_run_offload_rows_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        offload.run_offload_rows(**{"num_params": 1024, **kwargs})


def test_parse_and_format_counts() -> None:
    assert offload.parse_count("4B") == 4_000_000_000
    assert offload.parse_count(" 100m ") == 100_000_000
    assert offload.parse_count("2.5k") == 2500
    for bad in ("", "1x", "-5M", "999", "M"):
        with pytest.raises(ValueError, match="parse_count"):
            offload.parse_count(bad)
    assert offload.format_count(4_000_000_000) == "4B"
    assert offload.format_count(123_456_789) == "123M"
    assert offload.format_count(81_920) == "81.9k"


def test_bench_offload_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "offload.json"
    argv = ["--offload", "--params", "1k", "--repeats", "1", "--json", str(out)]
    assert commands.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "offload rows at 1000 params, median of 1 steps" in lines[0]
    assert [line.split()[1] for line in lines[2:7]] == list(offload.VARIANTS)
    document = json.loads(out.read_text())
    assert [r["variant"] for r in document["offload"]] == list(offload.VARIANTS)
    assert document["machine"]["backend"] == jax.default_backend()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--offload", "a"], "--offload takes no configs"),
        (["--offload", "--params", "1x"], "--params: parse_count: expected a count"),
        (["--offload", "--repeats", "0"], "--repeats must be >= 1, got 0"),
        (["--params", "1M"], "--params goes with --offload"),
        (["--offload", "--checkpoint"], "--checkpoint and --offload are separate benchmarks"),
    ],
)
def test_bench_offload_rejects_bad_options(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert commands.main(argv) == 2
    assert message in capsys.readouterr().err
