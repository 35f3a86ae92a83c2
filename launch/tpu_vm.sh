#!/usr/bin/env bash
# Runs (or resumes) a search on one Cloud TPU VM: installs the pinned requirements and the TPU
# build of JAX (README.md, "Installing for GPU or TPU"), then `python -m ma2ml_jax.train`.
#
#   launch/tpu_vm.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
#   launch/tpu_vm.sh configs/imagenet200.py runs/in200 --config.data.data_dir=$HOME/tensorflow_datasets
#
# CONFIG and WORKDIR are as for `python -m ma2ml_jax.train --config=CONFIG --workdir=WORKDIR`
# (relative paths are relative to the current directory); further arguments go to it unchanged.
# Rerunning with the same WORKDIR resumes the search. launch/tpu_pod.sh runs this script on every
# worker of a pod slice.
#
# Environment:
#   PYTHON          interpreter to install into and run with (default: python3, or VENV's)
#   VENV            if set, a virtual environment there (created if missing) is used instead
#   SKIP_INSTALL=1  do not run pip (the environment is already set up)
#   JAX_PLATFORMS   default "tpu": a missing TPU is an error instead of a silent CPU run
set -euo pipefail

usage() {  # usage [EXIT_CODE]: 0 (asked for help) prints to stdout, else to stderr
  local code=${1:-2}
  [[ $code == 0 ]] || exec >&2
  cat <<EOF
usage: $(basename "$0") CONFIG WORKDIR [--config.KEY=VALUE ...]

Runs python -m ma2ml_jax.train --config=CONFIG --workdir=WORKDIR [...] on this TPU VM, after
installing requirements.txt and jax[tpu] (SKIP_INSTALL=1: no install).
  CONFIG   an experiment config, e.g. configs/cifar10.py or configs/cifar10.py:local
  WORKDIR  the search's directory (trial log, checkpoints); an existing one is resumed
EOF
  exit "$code"
}

# shellcheck source=launch/_install_and_train.sh
source "$(dirname "${BASH_SOURCE[0]}")/_install_and_train.sh"
install_and_train tpu tpu TPU "$@"
