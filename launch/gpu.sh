#!/usr/bin/env bash
# Runs (or resumes) a search on one NVIDIA GPU machine: installs the pinned requirements and the
# CUDA build of JAX (README.md, "Installing for GPU or TPU"), then `python -m ma2ml_jax.train`.
# JAX sees every GPU of the machine; evaluate.strategy decides how an iteration's pipelines use them.
#
#   launch/gpu.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
#   launch/gpu.sh configs/cifar10.py runs/c10 --config.data.data_dir=$HOME/tensorflow_datasets
#
# CONFIG and WORKDIR are as for `python -m ma2ml_jax.train --config=CONFIG --workdir=WORKDIR`
# (relative paths are relative to the current directory); further arguments go to it unchanged.
# Rerunning with the same WORKDIR resumes the search.
#
# Environment:
#   PYTHON          interpreter to install into and run with (default: python3, or VENV's)
#   VENV            if set, a virtual environment there (created if missing) is used instead
#   CUDA            the jax extra for the machine's CUDA major version (default: cuda12)
#   SKIP_INSTALL=1  do not run pip (the environment is already set up)
#   JAX_PLATFORMS   default "cuda": a missing GPU is an error instead of a silent CPU run
set -euo pipefail

usage() {  # usage [EXIT_CODE]: 0 (asked for help) prints to stdout, else to stderr
  local code=${1:-2}
  [[ $code == 0 ]] || exec >&2
  cat <<EOF
usage: $(basename "$0") CONFIG WORKDIR [--config.KEY=VALUE ...]

Runs python -m ma2ml_jax.train --config=CONFIG --workdir=WORKDIR [...] on this GPU machine, after
installing requirements.txt and jax[\$CUDA] (default cuda12; SKIP_INSTALL=1: no install).
  CONFIG   an experiment config, e.g. configs/cifar10.py or configs/cifar10.py:local
  WORKDIR  the search's directory (trial log, checkpoints); an existing one is resumed
EOF
  exit "$code"
}

if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  usage 0
fi

[[ $# -ge 2 && -n "$1" && -n "$2" && "$1" != -* ]] || usage
config=$1
workdir=$2
shift 2

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The CUDA build must match the CPU jax pinned in requirements.txt.
jax_version=$(sed -n 's/^jax==\([0-9][0-9.]*\).*/\1/p' "$repo/requirements.txt")
[[ -n "$jax_version" ]] || { echo "error: no jax==VERSION pin in $repo/requirements.txt" >&2; exit 1; }

python=${PYTHON:-python3}
if [[ -n "${VENV:-}" ]]; then
  [[ -x "$VENV/bin/python" ]] || "$python" -m venv "$VENV"
  python=$VENV/bin/python
fi

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  "$python" -m pip install -q -r "$repo/requirements.txt"
  "$python" -m pip install -q "jax[${CUDA:-cuda12}]==$jax_version"
fi

export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
# The package is run from the checkout (not pip-installed), from the caller's directory.
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
exec "$python" -m ma2ml_jax.train --config="$config" --workdir="$workdir" "$@"
