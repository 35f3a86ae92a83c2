#!/usr/bin/env bash
# Runs (or resumes) a search on a Cloud TPU pod slice (several hosts): copies this checkout to
# every worker, then runs launch/tpu_vm.sh with the same arguments on all of them at once through
# `gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all`. Run it from your own machine (or
# Cloud Shell) with gcloud authenticated for the TPU's project.
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]
#   launch/tpu_pod.sh my-v4-32 us-central2-b configs/imagenet200.py runs/in200 \
#       --config.data.data_dir=/mnt/disks/data/tensorflow_datasets
#
# Every worker runs the same command, with --distributed=true: the workers join one JAX run
# (jax.distributed.initialize() finds them), each trains its share of every iteration's pipelines,
# and worker 0 (process 0) runs the searcher and alone writes WORKDIR (trial log, checkpoints,
# TensorBoard) and the output; a resume reads it there. CONFIG and data paths are read on every
# worker, relative to the copy of the repository there ($REMOTE_DIR): the data must be present on
# every worker.
#
# Environment:
#   PROJECT         gcloud project (default: gcloud's configured one)
#   REMOTE_DIR      the checkout's directory on the workers, relative to the home directory
#                   (default: ma2ml_jax)
#   SKIP_COPY=1     do not copy this checkout (it is already on every worker in REMOTE_DIR)
#   SKIP_INSTALL=1  do not run pip on the workers (their environments are already set up)
#   DETACH=1        start the search in the background on every worker (it survives a dropped
#                   ssh connection); its output goes to REMOTE_DIR/launch.log on each worker
set -euo pipefail

usage() {  # usage [EXIT_CODE]: 0 (asked for help) prints to stdout, else to stderr
  local code=${1:-2}
  [[ $code == 0 ]] || exec >&2
  cat <<EOF
usage: $(basename "$0") TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]

Copies this checkout to every worker of the TPU pod slice TPU_NAME in ZONE and runs
launch/tpu_vm.sh CONFIG WORKDIR [...] --distributed=true on all of them: one search over every
worker's chips (SKIP_COPY=1, SKIP_INSTALL=1, DETACH=1 and PROJECT, REMOTE_DIR: see the comments
at the top of this script).
  CONFIG   an experiment config, relative to the repository root, e.g. configs/imagenet200.py
  WORKDIR  the search's directory, written on worker 0; an existing one is resumed
EOF
  exit "$code"
}

if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  usage 0
fi

[[ $# -ge 4 ]] || usage
for arg in "$1" "$2" "$3" "$4"; do
  [[ -n "$arg" && "$arg" != -* ]] || usage
done
name=$1
zone=$2
shift 2  # "$@" is now CONFIG WORKDIR [overrides], passed on to tpu_vm.sh as they are

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
remote_dir=${REMOTE_DIR:-ma2ml_jax}
tpu=(compute tpus tpu-vm)
where=(--zone "$zone" --worker=all)
if [[ -n "${PROJECT:-}" ]]; then
  where+=(--project "$PROJECT")
fi

if [[ "${SKIP_COPY:-0}" != 1 ]]; then
  # The working tree as it is (tracked and untracked files, not what .gitignore excludes, such as
  # runs/ and virtual environments), so that every worker runs the same code as this checkout.
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  tarball=$tmp/checkout.tar.gz
  if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$repo" ls-files -z --cached --others --exclude-standard \
      | while IFS= read -r -d '' file; do  # leave out tracked files deleted from the tree
          if [[ -e "$repo/$file" ]]; then printf '%s\0' "$file"; fi
        done \
      | tar -C "$repo" --null -T - -czf "$tarball"
  else
    tar -C "$repo" --exclude=./runs --exclude='./.venv*' --exclude=./.git -czf "$tarball" .
  fi
  gcloud "${tpu[@]}" scp "$tarball" "$name:ma2ml_jax_checkout.tar.gz" "${where[@]}"
  gcloud "${tpu[@]}" ssh "$name" "${where[@]}" --command \
    "set -e; mkdir -p $(printf %q "$remote_dir"); tar -xzf ma2ml_jax_checkout.tar.gz -C $(printf %q "$remote_dir"); rm ma2ml_jax_checkout.tar.gz"
  rm -rf "$tmp"
  trap - EXIT
fi

# One shell command line for every worker, each argument quoted so that it arrives unchanged.
printf -v args ' %q' "$@" --distributed=true
run="SKIP_INSTALL=$(printf %q "${SKIP_INSTALL:-0}")"
if [[ "${DETACH:-0}" == 1 ]]; then
  run="$run nohup bash launch/tpu_vm.sh$args > launch.log 2>&1 < /dev/null &"
else
  run="$run bash launch/tpu_vm.sh$args"
fi
exec gcloud "${tpu[@]}" ssh "$name" "${where[@]}" --command "cd $(printf %q "$remote_dir") && $run"
