"""The documentation site builds with ``mkdocs build --strict`` and covers the package.

The build runs in a subprocess into pytest's tmp_path (strict: any warning, such as a broken
link, a page missing from the nav or a docstring the API reference cannot render, fails it).
The other checks read mkdocs.yml and docs/ directly, so a failure names the page.
"""

from __future__ import annotations

import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import yaml

import scirs2_optim_jax

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# Modules without an API page: the command line (documented by its --help and the guide
# pages), ``python -m`` support, internal argument checking, and deprecated shims of moved
# modules (``kernels``, now ``engine.kernels``).
NOT_IN_API_REFERENCE = {"cli", "__main__", "validation", "kernels"}
# Pages the docs must have, by topic, by file name.
REQUIRED_PAGES = {
    "guide.md",
    "zero.md",
    "multihost.md",
    "checkpointing.md",
    "monitoring.md",
    "configuration.md",
    "benchmarks.md",
    "runbook.md",
}


def _config() -> dict:
    # mkdocs.yml uses no custom YAML tags, so the safe loader reads it.
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def _nav_pages(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [page for item in node for page in _nav_pages(item)]
    if isinstance(node, dict):
        return [page for value in node.values() for page in _nav_pages(value)]
    raise TypeError(f"unexpected nav entry {node!r}")


def _doc_pages() -> set[str]:
    return {
        p.relative_to(DOCS).as_posix()
        for p in DOCS.rglob("*.md")
        if not p.relative_to(DOCS).parts[0].startswith("_")
    }


def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    nav = _nav_pages(_config()["nav"])
    assert len(nav) == len(set(nav)), "a page is listed twice in the nav"
    missing = [page for page in nav if not (DOCS / page).is_file()]
    assert not missing, f"nav pages that do not exist: {missing}"
    assert set(nav) == _doc_pages(), f"pages not in the nav: {_doc_pages() - set(nav)}"
    assert set(nav) >= REQUIRED_PAGES


def test_api_reference_covers_every_public_module() -> None:
    documented = set()
    for page in (DOCS / "api").glob("*.md"):
        documented |= set(re.findall(r"^::: (\S+)$", page.read_text(), re.MULTILINE))
    public = {
        f"scirs2_optim_jax.{info.name}"
        for info in pkgutil.iter_modules(scirs2_optim_jax.__path__)
        if info.name not in NOT_IN_API_REFERENCE
    }
    assert public <= documented, f"modules without an API page: {public - documented}"
    assert documented <= public, f"API pages for unknown modules: {documented - public}"


def test_runbook_covers_every_shipped_alert() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    runbook = (DOCS / "runbook.md").read_text()
    sections = set(re.findall(r"^### (\w+)$", runbook, re.MULTILINE))
    assert alerts <= sections, f"alerts without a runbook section: {alerts - sections}"
    for heading in ("Resuming after a crash", "Rolling back", "another device count"):
        assert re.search(rf"^## .*{heading}", runbook, re.MULTILINE), heading


def test_benchmarks_page_says_how_to_reproduce() -> None:
    page = (DOCS / "benchmarks.md").read_text()
    assert "scirs2-optim bench --json" in page
    # The results table lives between these markers (filled from recorded runs).
    assert page.index("<!-- RESULTS") < page.index("<!-- /RESULTS -->")


def test_mkdocstrings_reads_google_docstrings_without_network_plugins() -> None:
    config = _config()
    assert config["theme"]["name"] == "material" and config["theme"]["font"] is False
    plugins = {next(iter(p)) if isinstance(p, dict) else p: p for p in config["plugins"]}
    # These two fetch from the network at build time.
    assert not {"social", "privacy"} & set(plugins)
    python = plugins["mkdocstrings"]["mkdocstrings"]["handlers"]["python"]
    assert python["options"]["docstring_style"] == "google"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", site],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in _nav_pages(_config()["nav"]):
        built = site / Path(page).with_suffix("") / "index.html"
        if page == "index.md":
            built = site / "index.html"
        assert built.is_file(), f"{page} was not built"
    # The API reference renders docstrings: Args as parameter tables, examples as code.
    api = (site / "api" / "optimizers" / "index.html").read_text()
    assert 'id="scirs2_optim_jax.optimizers.adamw"' in api
    assert "weight_decay" in api and "&gt;&gt;&gt;" in api
    assert "<blockquote>" not in api, "a doctest was rendered as a Markdown quote"
    parallel = (site / "api" / "parallel" / "index.html").read_text()
    assert 'id="scirs2_optim_jax.parallel.make_data_parallel_step"' in parallel
    # Nothing in the site loads fonts from Google (the build must not need the network).
    assert not [p for p in site.rglob("*.html") if "fonts.googleapis.com" in p.read_text()]
