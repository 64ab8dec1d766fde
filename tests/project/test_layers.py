"""The layering users meet: a light core, the rest loaded on first use, old names kept."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

import scirs2_optim_jax as so

HEAVY = ("flax", "orbax", "prometheus_client", "sklearn", "yaml", "rich", "psutil", "torch")


def _fresh(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    return out.stdout.split()


def test_core_import_loads_no_application_dependency() -> None:
    code = (
        "import sys\n"
        "import scirs2_optim_jax as so\n"
        "so.adamw(1e-3)\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)) or 'none')\n"
        "layers = ('checkpoint', 'monitor', 'config', 'training', 'cli', 'bench', 'engine')\n"
        "print(sorted(l for l in layers if 'scirs2_optim_jax.' + l in sys.modules) or 'none')\n"
    )
    assert _fresh(code) == ["none", "none"]


def test_other_layers_load_on_first_use() -> None:
    code = (
        "import sys\n"
        "import scirs2_optim_jax as so\n"
        "so.apply_gradients, so.make_data_parallel_step\n"
        "print('scirs2_optim_jax.engine' in sys.modules)\n"
        "print('scirs2_optim_jax.parallel' in sys.modules)\n"
        "print('orbax' in {m.split('.')[0] for m in sys.modules})\n"
        "so.CheckpointManager\n"
        "print('orbax' in {m.split('.')[0] for m in sys.modules})\n"
    )
    assert _fresh(code) == ["True", "True", "False", "True"]


def test_cli_help_imports_no_jax() -> None:
    code = (
        "import contextlib, io, sys\n"
        "from scirs2_optim_jax.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "mods = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted({'jax', 'flax', 'orbax'} & mods) or 'none')\n"
    )
    assert _fresh(code) == ["none"]


def test_lazy_names_and_unknown_names() -> None:
    assert so.engine.one_pass_step is so.engine.onepass.one_pass_step
    assert "CheckpointManager" in dir(so)
    with pytest.raises(AttributeError, match="no attribute 'adamww'"):
        so.adamww  # noqa: B018


@pytest.mark.parametrize("name", ["FusedUpdate", "FactorUpdate", "fused_adam_family"])
def test_moved_engine_internals_warn(name: str) -> None:
    with pytest.warns(DeprecationWarning):
        assert getattr(so, name) is not None


def test_old_module_paths_warn_and_work() -> None:
    for parent, child in ((so.transforms, "fused"), (so, "kernels")):
        sys.modules.pop(f"{parent.__name__}.{child}", None)
        if child in vars(parent):
            delattr(parent, child)
    with pytest.warns(DeprecationWarning, match="transforms.fused is deprecated"):
        fused = importlib.import_module("scirs2_optim_jax.transforms.fused")
    with pytest.warns(DeprecationWarning, match="kernels is deprecated"):
        kernels = importlib.import_module("scirs2_optim_jax.kernels")
    assert fused.apply_gradients is so.apply_gradients
    assert kernels.sum_of_squares is so.engine.kernels.sum_of_squares
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tx = fused.fused_adam_family("adamw", so.adamw(1e-3).description.parts, fused=None)
    assert so.engine.one_pass_step(tx).name == "adamw"
