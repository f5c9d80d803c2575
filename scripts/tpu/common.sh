# Shell helpers shared by scripts/tpu/tpu_vm.sh and scripts/gpu/gpu_launch.sh (sourced, not run).
# Every remote or cloud action goes through `run`, so `--dry-run` prints exactly what would run.
# shellcheck shell=bash

DRY_RUN=0

die() {
  echo "error: $*" >&2
  exit 2
}

log() {
  echo "[$(basename "$0")] $*" >&2
}

# Prints one argument so that a shell reads it back unchanged (bare when safe, else single-quoted).
quote_arg() {
  local arg=$1
  if [[ $arg =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$arg"
  else
    printf "'%s'" "${arg//\'/\'\\\'\'}"
  fi
}

# Prints a command line, quoted so that it can be pasted into a shell.
print_cmd() {
  local first=1 arg
  for arg in "$@"; do
    if ((first)); then first=0; else printf ' '; fi
    quote_arg "$arg"
  done
  printf '\n'
}

# Runs a command, or only prints it under --dry-run.
run() {
  if ((DRY_RUN)); then
    print_cmd "$@"
  else
    "$@"
  fi
}

# Writes a gzipped tarball of the checkout (tracked and untracked-but-not-ignored files, so that
# uncommitted work travels too; .venv, data and checkpoints stay behind) to $2.
pack_checkout() {
  local repo=$1 out=$2
  if ((DRY_RUN)); then
    echo "git -C $(quote_arg "$repo") ls-files -z --cached --others --exclude-standard" \
      "| tar -czf $(quote_arg "$out") -C $(quote_arg "$repo") --null --ignore-failed-read -T -"
    return
  fi
  git -C "$repo" ls-files -z --cached --others --exclude-standard \
    | tar -czf "$out" -C "$repo" --null --ignore-failed-read -T -
}

# Joins training overrides into one string for a remote command line.
join_quoted() {
  local out="" arg
  for arg in "$@"; do
    out+=" $(quote_arg "$arg")"
  done
  printf '%s' "$out"
}
