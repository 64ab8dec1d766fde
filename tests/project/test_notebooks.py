"""The notebooks in notebooks/ run top to bottom in a fresh kernel, and are committed clean.

Each notebook is executed with nbclient in its own kernel: this environment's interpreter,
started from a kernelspec written into a temporary directory (so no kernelspec needs to be
installed), with the working directory and TMPDIR in pytest's tmp_path, so nothing is written
into the repository. The kernel's environment has no XLA_FLAGS: the sharded notebook must
set up its own 8 devices, as it does for a user. Dtype promotion is JAX's default, as for a
user (the quickstart calls optax, which is not clean under strict promotion). The notebooks
check their own results with asserts; an exception in any cell fails the test.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = (
    "01_quickstart.ipynb",
    "02_flax_nnx_training.ipynb",
    "03_sharded_zero.ipynb",
    "04_checkpointing.ipynb",
)
# Notebooks whose point includes a plot: each must display at least one PNG.
PLOTTING = {"01_quickstart.ipynb", "02_flax_nnx_training.ipynb", "03_sharded_zero.ipynb"}
KERNEL_NAME = "scirs2-optim-test"
CELL_TIMEOUT_S = 300
_PROBE = "import sys; print('kernel-executable:', sys.executable)"


def _kernel_manager(spec_root: Path) -> AsyncKernelManager:
    """A manager for a kernel running this interpreter, from a spec in ``spec_root``."""
    spec_dir = spec_root / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "scirs2-optim-jax tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(spec_root)])
    return AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


def _kernel_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(
        TMPDIR=str(tmp),
        JAX_PLATFORMS="cpu",
        MPLBACKEND="Agg",
    )
    return env


def _files_under(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*") if ".ipynb_checkpoints" not in p.parts}


def test_the_four_notebooks_are_there() -> None:
    found = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
    assert found == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, f"{name} has no code cells"
    for index, cell in enumerate(code):
        assert cell.outputs == [], f"{name}: code cell {index} has outputs"
        assert cell.execution_count is None, f"{name}: code cell {index} has an execution count"
        assert "execution" not in cell.metadata, f"{name}: code cell {index} has timing metadata"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_without_errors(name: str, tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_PROBE))
    work = tmp_path / "work"
    work.mkdir()
    before = _files_under(NOTEBOOK_DIR)

    client = NotebookClient(
        nb,
        km=_kernel_manager(tmp_path / "kernels"),
        timeout=CELL_TIMEOUT_S,
        allow_errors=False,
        resources={"metadata": {"path": str(work)}},
    )
    # Raises CellExecutionError on any error. cleanup_kc: nbclient shuts down a kernel (and
    # closes its sockets) only when it created the manager itself, unless asked to.
    client.execute(env=_kernel_env(tmp_path), cleanup_kc=True)
    # Sockets left open would surface as unraisable warnings in whichever test runs next.
    gc.collect()

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    probe = "".join(out.get("text", "") for out in nb.cells[-1].outputs)
    assert probe.strip() == f"kernel-executable: {sys.executable}"
    if name in PLOTTING:
        assert any("image/png" in out.get("data", {}) for out in outputs), f"{name}: no plot"
    assert _files_under(NOTEBOOK_DIR) == before, "executing the notebook wrote into the repo"
