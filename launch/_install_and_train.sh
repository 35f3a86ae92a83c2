# Shared by gpu.sh and tpu_vm.sh (sourced, not run): checks CONFIG WORKDIR, installs the pinned
# requirements and the accelerator build of JAX, then runs the search.
#
#   install_and_train JAX_EXTRA PLATFORM NAME "$@"
# JAX_EXTRA: the pip extra of jax (tpu, cuda12, ...); PLATFORM: the default JAX_PLATFORMS; NAME:
# the accelerator's name for messages. The caller defines usage().

install_and_train() {
  local extra=$1 platform=$2 name=$3
  shift 3
  if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
    usage 0
  fi
  [[ $# -ge 2 && -n "$1" && -n "$2" && "$1" != -* ]] || usage
  local config=$1 workdir=$2
  shift 2

  local repo
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  # The accelerator build must match the CPU jax pinned in requirements.txt.
  local jax_version
  jax_version=$(sed -n 's/^jax==\([0-9][0-9.]*\).*/\1/p' "$repo/requirements.txt")
  [[ -n "$jax_version" ]] || { echo "error: no jax==VERSION pin in $repo/requirements.txt" >&2; exit 1; }

  local python=${PYTHON:-python3}
  if [[ -n "${VENV:-}" ]]; then
    [[ -x "$VENV/bin/python" ]] || "$python" -m venv "$VENV"
    python=$VENV/bin/python
  fi

  if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
    "$python" -m pip install -q -r "$repo/requirements.txt"
    "$python" -m pip install -q "jax[$extra]==$jax_version"
  fi

  # A missing $name is an error instead of a silent CPU run.
  export JAX_PLATFORMS=${JAX_PLATFORMS:-$platform}
  # The package is run from the checkout (not pip-installed), from the caller's directory.
  export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
  exec "$python" -m ma2ml_jax.train --config="$config" --workdir="$workdir" "$@"
}
