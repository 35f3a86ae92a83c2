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

# shellcheck source=launch/_install_and_train.sh
source "$(dirname "${BASH_SOURCE[0]}")/_install_and_train.sh"
install_and_train "${CUDA:-cuda12}" cuda GPU "$@"
