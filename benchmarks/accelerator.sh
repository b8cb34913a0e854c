#!/usr/bin/env bash
# jaxdeq at accelerator sizes on whatever device JAX sees (benchmarks/accelerator.py):
# DEQ, neural ODE, training step and PINN, bfloat16 and float32, one table each, in
# benchmarks/results/accelerator-<device>.{md,json}.
#
#   bash benchmarks/accelerator.sh                 # full sizes (batch 1024, hidden 1024)
#   bash benchmarks/accelerator.sh --quick         # tiny sizes, any machine (smoke test)
#   JAXDEQ_ACCELERATOR_QUICK=1 bash benchmarks/accelerator.sh   # the same
#   bash benchmarks/accelerator.sh --help          # every option
#
# Python: $PYTHON if set, else the repository's .venv, else python3 on the PATH.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x "$root/.venv/bin/python" ]]; then
    py="$root/.venv/bin/python"
else
    py="$(command -v python3 || command -v python)"
fi

# Compile times are part of what is measured: keep JAX's persistent compilation
# cache out of them.
unset JAX_COMPILATION_CACHE_DIR
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"

exec "$py" "$here/accelerator.py" "$@"
