#!/usr/bin/env bash
# Idempotent setup for a fresh machine: venv in .venv, pinned packages, and bubblewrap for the
# eval sandbox. Re-running is cheap: pip only runs when requirements*.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.editseq-requirements.sha256
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing pinned requirements (a few minutes on first use)"
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
  echo "$want" > "$stamp"
fi

# Compilers for `editseq.aot` (GPU/TPU targets without the hardware), in their own folder: on
# the venv's import path JAX would try to start a CUDA and a TPU backend on every run.
aot_stamp=.venv/aot/.editseq-requirements.sha256
aot_want=$(sha256sum requirements-aot.txt | cut -d' ' -f1)
if [ ! -f "$aot_stamp" ] || [ "$(cat "$aot_stamp")" != "$aot_want" ]; then
  echo "[setup] installing the ahead-of-time compilers (requirements-aot.txt) into .venv/aot"
  rm -rf .venv/aot
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps --target .venv/aot \
    -r requirements-aot.txt
  echo "$aot_want" > "$aot_stamp"
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
