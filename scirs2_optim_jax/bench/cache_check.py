"""Shows the persistent compilation cache at work: the same step compiled in two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

__all__ = ["compile_seconds", "compile_twice"]


def compile_seconds(config: str) -> float:
    """Seconds to lower and compile our step for ``config`` in this process."""
    import jax

    from scirs2_optim_jax.bench.configs import CONFIGS
    from scirs2_optim_jax.bench.harness import _initial_carry, _train_step

    spec = CONFIGS[config]
    params = spec.make_params(spec.param_dtype, 0)
    grads = spec.make_params(spec.param_dtype, 1)
    tx = spec.ours()
    carry = _initial_carry(tx, params, False)
    step = _train_step(tx, False, standard_promotion=False)
    start = time.perf_counter()
    jax.jit(step, donate_argnums=(0,)).lower(carry, grads).compile()
    return time.perf_counter() - start


def compile_twice(config: str = "b", timeout: float = 600.0) -> tuple[float, float]:
    """Compile seconds of a first and a second fresh process sharing one empty cache dir."""
    from scirs2_optim_jax.bench.configs import CONFIGS

    # Checked before it is written into the child's code: only a known config name goes in.
    if not isinstance(config, str) or config not in CONFIGS:
        raise ValueError(
            f"compile_twice: config must be one of {', '.join(sorted(CONFIGS))}, got {config!r}"
        )
    with tempfile.TemporaryDirectory(prefix="scirs2-cache-") as cache:
        env = {**os.environ, "SCIRS2_OPTIM_COMPILATION_CACHE": cache}
        code = (
            "import json, sys; from scirs2_optim_jax.compile_cache import enable_compilation_cache;"
            " enable_compilation_cache();"
            " from scirs2_optim_jax.bench.cache_check import compile_seconds;"
            f" print(json.dumps(compile_seconds({config!r})))"
        )
        times = []
        for _ in range(2):
            out = subprocess.run(  # noqa: S603  our own interpreter, fixed code, no shell
                [sys.executable, "-c", code],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=True,
            )
            times.append(json.loads(out.stdout.strip().splitlines()[-1]))
        return times[0], times[1]
