#!/usr/bin/env bash
# Installs editseq on one host (a TPU VM worker or a GPU machine) inside the checkout the launcher
# unpacked there: a Python 3.11 venv made with uv (TPU VM images ship Python 3.10), the pinned
# requirements, and the accelerator build of the pinned jax.
# Run by scripts/tpu/tpu_vm.sh and scripts/gpu/gpu_launch.sh on every host; safe to re-run.
set -euo pipefail

usage() {
  cat <<USAGE
usage: $(basename "$0") --accel {tpu,cuda12,cuda13} [--dir DIR] [--python VERSION]

  --accel    which jax build to install beside the CPU pins (jax[tpu], jax[cuda12], jax[cuda13])
  --dir      the unpacked checkout (default: the checkout holding this script)
  --python   Python version for the venv (default: 3.11)
USAGE
}

accel="" dir="$(cd "$(dirname "$0")/../.." && pwd)" python_version=3.11
while (($#)); do
  case $1 in
    --accel) accel=${2:?--accel needs a value}; shift 2 ;;
    --dir) dir=${2:?--dir needs a value}; shift 2 ;;
    --python) python_version=${2:?--python needs a value}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
case $accel in
  tpu|cuda12|cuda13) ;;
  *) echo "error: --accel must be tpu, cuda12 or cuda13 (got '${accel}')" >&2; exit 2 ;;
esac

cd "$dir"
jax_version=$(sed -n 's/^jax==\([0-9.]*\)$/\1/p' requirements.txt)
if [[ -z $jax_version ]]; then
  echo "error: no 'jax==' pin in $dir/requirements.txt" >&2
  exit 2
fi

export PATH="$HOME/.local/bin:$PATH"
if ! command -v uv >/dev/null 2>&1; then
  curl -LsSf https://astral.sh/uv/install.sh | sh
fi
if [[ ! -x .venv/bin/python ]]; then
  uv venv --quiet --python "$python_version" .venv
fi
uv pip install --quiet --python .venv/bin/python -r requirements.txt "jax[$accel]==$jax_version"
.venv/bin/python -c "import editseq, jax; print('editseq installed on', '$(hostname)', 'jax', jax.__version__)"
