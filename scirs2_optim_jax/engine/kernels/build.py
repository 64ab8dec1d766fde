"""Builds and registers the fused CPU kernels (``cpu_kernels.cc``) on first use.

The kernels are plain C++ against XLA's FFI headers, which ship inside jaxlib, so nothing
is compiled at install time: the first process that needs them compiles the source with the
machine's C++ compiler (``$CXX``, else ``c++``) into a per-user cache, keyed by the source,
the jaxlib version, the compiler and the CPU, and registers the handlers with ``jax.ffi``.
Later processes load the cached library. Where no compiler is found, the build fails or
``SCIRS2_OPTIM_DISABLE_KERNELS=1`` is set, :func:`load_kernels` returns None and the
optimizers keep their XLA path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jax
import jaxlib

__all__ = [
    "ENV_CACHE_DIR",
    "ENV_DISABLE",
    "KernelLibrary",
    "kernel_cache_dir",
    "kernels_available",
    "load_kernels",
]

log = logging.getLogger(__name__)

ENV_DISABLE = "SCIRS2_OPTIM_DISABLE_KERNELS"
ENV_CACHE_DIR = "SCIRS2_OPTIM_KERNEL_CACHE"
SOURCE = Path(__file__).with_name("cpu_kernels.cc")
# -fno-math-errno lets the compiler vectorise sqrt (and, like XLA:CPU, it contracts a * b + c
# into fused multiply-adds); -fopenmp-simd honours the kernels' `omp simd` reductions (no
# OpenMP runtime); -march=native is safe because the cache key includes the CPU's
# feature flags.
FLAGS = (
    "-O3",
    "-march=native",
    "-fno-math-errno",
    "-fopenmp-simd",
    "-std=c++17",
    "-shared",
    "-fPIC",
)
TARGETS = {
    "scirs2_adam_step": "Scirs2AdamStep",
    "scirs2_lamb_step": "Scirs2LambStep",
    "scirs2_sum_squares": "Scirs2SumSquares",
}


@dataclass(frozen=True)
class KernelLibrary:
    """A loaded kernel library: where it lives and the FFI targets it registered."""

    path: Path
    targets: tuple[str, ...]


def kernel_cache_dir() -> Path:
    """Where built kernels are kept: ``$SCIRS2_OPTIM_KERNEL_CACHE``, else the user cache.

    Example:
        >>> kernel_cache_dir().name
        'kernels'
    """
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "scirs2_optim_jax" / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++"))


def _library_path(compiler: str) -> Path:
    version = subprocess.run(  # noqa: S603  fixed arguments, compiler found on PATH
        [compiler, "--version"], capture_output=True, text=True, check=False
    ).stdout
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), jaxlib.__version__, version, " ".join(FLAGS)):
        key.update(part if isinstance(part, bytes) else part.encode())
    key.update((_cpu_flags() + platform.machine()).encode())
    return kernel_cache_dir() / key.hexdigest()[:24] / "libscirs2_optim_kernels.so"


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Compile to a private name, then rename: processes building at once (pytest workers,
    # several ranks on one host) never load a half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
        if done.returncode != 0:
            raise RuntimeError(
                f"compiling {SOURCE.name} failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@functools.cache
def load_kernels() -> KernelLibrary | None:
    """Builds (once per machine) and registers the CPU kernels; None where they cannot be.

    The reason a build was skipped or failed is logged once as a warning; the optimizers
    then use their XLA path.

    Returns:
        The :class:`KernelLibrary`, or None.

    Example:
        >>> library = load_kernels()
        >>> library is None or "scirs2_adam_step" in library.targets
        True
    """
    if os.environ.get(ENV_DISABLE, "").strip() not in ("", "0"):
        log.info("fused CPU kernels disabled by $%s", ENV_DISABLE)
        return None
    compiler = _compiler()
    if compiler is None:
        log.warning("no C++ compiler found (set $CXX): fused CPU kernels are off")
        return None
    try:
        path = _library_path(compiler)
        if not path.exists():
            # Said once, loudly: the first one-pass step waits for the compiler (about 10 s).
            log.warning(
                "building the one-pass CPU kernels into %s (once per machine; "
                "`scirs2-optim kernels build` does it ahead of time)",
                path.parent,
            )
            _build(compiler, path)
        library = ctypes.cdll.LoadLibrary(str(path))
        for name, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(
                name, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu"
            )
    except (OSError, RuntimeError, AttributeError) as error:
        log.warning("fused CPU kernels are off: %s", error)
        return None
    return KernelLibrary(path, tuple(TARGETS))


def kernels_available() -> bool:
    """Whether the fused CPU kernels are built and registered (builds them if needed).

    Example:
        >>> isinstance(kernels_available(), bool)
        True
    """
    return load_kernels() is not None
