#!/usr/bin/env bash
# The accelerator path, proven in one run: tests and benchmarks on JAX's default device.
#
#   bash benchmarks/accelerator_check.sh [OUTPUT_DIR] [--budget SECONDS] [--mode cpu|accelerator]
#
# On a machine with an accelerator and the accelerator build of JAX installed (jax with its
# CUDA plugin, flax, optax, orbax-checkpoint; no package index needed), it installs this
# package without dependencies unless the interpreter already has it from this checkout, then
# runs the parity, fallback, ZeRO (one device), offload and checkpoint tests on the
# accelerator (a checkpoint written on the CPU backend restored there), `scirs2-optim bench`
# configs a-i and `scirs2-optim bench --offload` at 1B and 4B parameters, within 8 minutes.
# Without an accelerator the same sections run on the CPU, at small sizes, skipping with a
# message what needs an accelerator. See benchmarks/accelerator_check.py.
#
# Output: OUTPUT_DIR, else $OUT, else a new temporary directory: accelerator_check.json
# (each section pass/fail/skip, times, figures, the JAX version and devices),
# accelerator_check.log, bench.json, offload.json. Exit 1 if any check failed.
#
# The interpreter: $PYTHON, else this checkout's .venv/bin/python, else python3.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out_dir=""
if [[ $# -gt 0 && $1 != --* ]]; then
    out_dir=$1
    shift
fi
out_dir=${out_dir:-${OUT:-}}
if [[ -z $out_dir ]]; then
    out_dir=$(mktemp -d "${TMPDIR:-/tmp}/accelerator_check.XXXXXX")
fi

python=${PYTHON:-}
if [[ -z $python ]]; then
    if [[ -x $repo/.venv/bin/python ]]; then
        python=$repo/.venv/bin/python
    else
        python=$(command -v python3 || command -v python)
    fi
fi

cd "$repo"
exec "$python" "$repo/benchmarks/accelerator_check.py" --out "$out_dir" "$@"
