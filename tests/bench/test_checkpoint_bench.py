"""``scirs2-optim bench --checkpoint`` measures both sides on a tiny state (no timing asserted)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from scirs2_optim_jax.bench import checkpoint
from scirs2_optim_jax.bench import commands as bench_commands

FIGURES = ["blocking_s", "committed_s", "extra_memory_x", "restore_s"]


def test_run_checkpoint_bench_reports_both_sides(tmp_path: Path) -> None:
    rounds_seen: list[tuple[int, str]] = []
    rows = checkpoint.run_checkpoint_bench(
        [1_200_000],
        rounds=2,
        directory=tmp_path,
        on_round=lambda size, side, figures: rounds_seen.append((size, side)),
    )
    (row,) = rows
    assert row.state_bytes >= 1_200_000 and len(row.rounds) == 2
    for side in (row.ours, row.orbax):
        assert sorted(side) == FIGURES
        assert 0 <= side["blocking_s"] <= side["committed_s"] and side["restore_s"] > 0
        assert side["extra_memory_x"] >= 0
    assert sorted(rounds_seen) == [(1_200_000, "orbax")] * 2 + [(1_200_000, "ours")] * 2
    assert [p.name for p in tmp_path.iterdir()] == []  # every checkpoint was deleted
    table = checkpoint.format_table(rows).splitlines()
    assert len(table) == 2 + 4 and all(line.count("|") == 7 for line in table)
    assert set(row.as_dict()["pass"]) == set(FIGURES)


def test_parse_size_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="expected a size like 300MB"):
        checkpoint.parse_size("lots")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_commands.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


def test_bench_checkpoint_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    args = _parse(["--checkpoint", "--sizes", "1MB", "--rounds", "1", "--json", str(out)])
    assert bench_commands.run(args) == 0
    printed = capsys.readouterr().out
    assert "orbax-checkpoint" in printed and " MB | save() blocks the loop | " in printed
    document = json.loads(out.read_text())
    assert document["checkpoint"][0]["state_bytes"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--checkpoint", "--sizes", "big"], "--sizes: parse_size: expected a size"),
        (["--checkpoint", "--rounds", "0"], "--rounds must be >= 1"),
        (["--checkpoint", "a"], "--checkpoint takes no configs"),
    ],
)
def test_bench_checkpoint_rejects_bad_options(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench_commands.run(_parse(argv)) == 2
    assert message in capsys.readouterr().err
