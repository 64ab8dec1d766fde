"""JAX's persistent compilation cache: compile a step once, reuse it in later processes."""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["DEFAULT_CACHE_DIR", "enable_compilation_cache"]

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "scirs2-optim" / "jax-compilation-cache"
ENV_VAR = "SCIRS2_OPTIM_COMPILATION_CACHE"


def enable_compilation_cache(
    directory: str | os.PathLike[str] | None = None, min_compile_seconds: float = 0.2
) -> Path | None:
    """Turns on JAX's persistent compilation cache and returns its directory.

    The directory is, in order: ``directory``, the environment variable
    ``SCIRS2_OPTIM_COMPILATION_CACHE``, or ``~/.cache/scirs2-optim/jax-compilation-cache``.
    Setting the variable to ``off`` (or ``0``, ``false``, ``none``) disables the cache and
    returns None. Executables that took less than ``min_compile_seconds`` to compile are not
    stored (they are cheaper to rebuild than to read).

    Example:
        >>> enable_compilation_cache("off") is None  # e.g. SCIRS2_OPTIM_COMPILATION_CACHE=off
        True
    """
    if min_compile_seconds < 0:
        raise ValueError(
            f"enable_compilation_cache: min_compile_seconds must be >= 0, got {min_compile_seconds}"
        )
    setting = os.environ.get(ENV_VAR, "") if directory is None else os.fspath(directory)
    if setting.strip().lower() in ("off", "0", "false", "none"):
        return None
    path = Path(setting).expanduser() if setting else DEFAULT_CACHE_DIR
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
