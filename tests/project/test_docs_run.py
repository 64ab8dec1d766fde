"""Every Python block in README.md and docs/ runs, as written, in the order of its page.

A page's ```python blocks run one after the other in one namespace (later blocks use what
earlier ones defined), in a fresh temporary directory, with JAX's default dtype promotion
(the suite's default is strict; readers get JAX's default) and the suite's 8 CPU devices.
Two HTML comments, which the rendered documentation does not show, mark what is not
plain reading order:

- ``<!-- docs-test: skip REASON -->`` on the line before a block: the block does not run
  (it needs several hosts, a signal, ...). A reason is required.
- ``<!-- docs-test: hidden`` ... ``-->``: Python code, run at that point of the page, that
  the reader does not see: the names a fragment assumes (``params``, ``loss_fn``,
  ``batches``...) or a check of what the block before it computed.

The count of blocks run and skipped, with the reasons, is in ``docs_blocks_summary()``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[2]
# README.md and every page of the documentation (docs/_griffe holds no pages).
PAGES = [
    ROOT / "README.md",
    *sorted(p for p in (ROOT / "docs").rglob("*.md") if p.relative_to(ROOT).parts[1][0] != "_"),
]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^`\n]*)$")
_SKIP = re.compile(r"^\s*<!--\s*docs-test:\s*skip\b\s*(?P<reason>.*?)\s*-->\s*$")
_HIDDEN = re.compile(r"^\s*<!--\s*docs-test:\s*hidden\s*$")
_MARKER = re.compile(r"<!--\s*docs-test:")


@dataclass(frozen=True)
class Block:
    """A piece of Python code of a page: a visible block, or hidden code."""

    line: int  # 1-based line of the opening fence (or comment)
    code: str
    hidden: bool = False
    skip_reason: str | None = None


def _is_python(info: str) -> bool:
    words = info.strip().split()
    return bool(words) and words[0] in ("python", "py")


def page_blocks(path: Path) -> list[Block]:
    """The Python blocks and hidden code of a Markdown page, in order."""
    lines = path.read_text().split("\n")
    blocks: list[Block] = []
    pending_skip: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        skip = _SKIP.match(line)
        if skip:
            if not skip.group("reason"):
                raise ValueError(f"{path.name}:{i + 1}: docs-test: skip needs a reason")
            pending_skip = skip.group("reason")
            i += 1
            continue
        if _HIDDEN.match(line):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "-->")
            blocks.append(Block(i + 1, "\n".join(lines[i + 1 : end]), hidden=True))
            i = end + 1
            continue
        if _MARKER.search(line):
            raise ValueError(f"{path.name}:{i + 1}: unknown docs-test marker: {line.strip()}")
        fence = _FENCE.match(line)
        if fence:
            indent = fence.group("indent")
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            if _is_python(fence.group("info")):
                body = [
                    text[len(indent) :] if text.startswith(indent) else text
                    for text in lines[i + 1 : end]
                ]
                blocks.append(Block(i + 1, "\n".join(body), skip_reason=pending_skip))
            elif pending_skip is not None:
                raise ValueError(f"{path.name}:{i + 1}: docs-test: skip before a non-Python block")
            pending_skip = None
            i = end + 1
            continue
        if pending_skip is not None and line.strip():
            raise ValueError(f"{path.name}:{i + 1}: docs-test: skip must precede a block")
        i += 1
    return blocks


def docs_blocks_summary() -> dict[str, object]:
    """How many visible Python blocks run and how many are skipped, with their reasons."""
    run, skipped = 0, []
    for page in PAGES:
        for block in page_blocks(page):
            if block.hidden:
                continue
            if block.skip_reason is None:
                run += 1
            else:
                skipped.append(f"{page.relative_to(ROOT)}:{block.line}: {block.skip_reason}")
    return {"run": run, "skipped": skipped}


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", [p for p in PAGES if page_blocks(p)], ids=_page_id)
def test_page_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__main__"}
    with jax.numpy_dtype_promotion("standard"):
        for block in page_blocks(page):
            if block.skip_reason is not None:
                continue
            kind = "hidden code" if block.hidden else "block"
            where = f"{page.relative_to(ROOT)}:{block.line}"
            code = compile(block.code, f"<{where}>", "exec")
            try:
                exec(code, namespace)  # noqa: S102  (our own documentation)
            except Exception as err:
                raise AssertionError(f"the {kind} at {where} fails: {err!r}") from err


def test_markers_are_well_formed_and_counted() -> None:
    summary = docs_blocks_summary()
    assert summary["run"] > 0
    for entry in summary["skipped"]:
        assert entry.split(": ", 1)[1], entry


def test_every_python_fence_is_collected() -> None:
    fences = 0
    for page in PAGES:
        fences += len(re.findall(r"^\s*```(?:python|py)\b", page.read_text(), re.MULTILINE))
    blocks = docs_blocks_summary()
    assert fences == blocks["run"] + len(blocks["skipped"])


if __name__ == "__main__":  # python tests/project/test_docs_run.py: the counts
    summary = docs_blocks_summary()
    print(f"{summary['run']} blocks run, {len(summary['skipped'])} skipped:")
    for entry in summary["skipped"]:
        print(f"  {entry}")
