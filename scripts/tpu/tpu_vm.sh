#!/usr/bin/env bash
# Cloud TPU VM lifecycle for editseq: create (directly or as a queued resource, one or several
# slices), install the checkout on every worker, launch training on all hosts, tail logs, stop, delete.
# On TPU VMs jax.distributed.initialize() finds its peers by itself, so every worker runs the same
# command. Run with --help for the flags; --dry-run prints each command instead of running it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=scripts/tpu/common.sh
source "$here/common.sh"

usage() {
  cat <<USAGE
usage: $(basename "$0") COMMAND --name NAME --zone ZONE [flags] [-- CONFIG_OVERRIDES...]

commands:
  create    create the TPU VM (--type required); with --queued or --num-slices > 1 as a queued
            resource, waiting until it is ACTIVE
  install   copy this checkout (tracked + untracked files) to every worker and install it there
  train     start training in the background on every worker of every slice (--config, --workdir)
  logs      follow the training log of one worker (--worker, default 0; --slice, default 0)
  stop      send SIGTERM to training on every worker (the trainer checkpoints on SIGTERM)
  status    describe the TPU VM (or the queued resource)
  delete    delete the TPU VM (or the queued resource and its nodes)

flags:
  --name NAME         TPU VM / queued-resource name (default: \$TPU_NAME)
  --zone ZONE         zone, e.g. us-central2-b (default: \$TPU_ZONE)
  --project PROJECT   Google Cloud project (default: gcloud's configured project)
  --type TYPE         accelerator type: v4-8, v4-32, v5litepod-8, v5p-8, v6e-8, ...
  --runtime VERSION   TPU software version (default by generation: v4 tpu-ubuntu2204-base,
                      v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
  --spot              use Spot capacity (preemptible; the trainer checkpoints on SIGTERM)
  --queued            create through the queued-resources API (needed for --num-slices > 1)
  --num-slices N      multislice: N slices named NAME-0..NAME-(N-1); set config.mesh.dcn_data=N
  --config FILE       training config, e.g. configs/tinycodelm_150m.py (train)
  --workdir DIR       training workdir; must be shared by all hosts, i.e. gs://BUCKET/PATH (train)
  --remote-dir DIR    checkout location on the workers, relative to \$HOME (default: editseq)
  --worker N|all      worker(s) for logs (default: 0)
  --slice N           slice for logs (default: 0)
  --dry-run           print every command instead of running it
  -h, --help          this help

Arguments after -- go to editseq.train, e.g. -- --config.train.steps=1000.
USAGE
}

command=${1:-}
if [[ -z $command || $command == -h || $command == --help ]]; then
  usage
  exit 0
fi
shift
case $command in
  create|install|train|logs|stop|status|delete) ;;
  *) die "unknown command '$command' (see --help)" ;;
esac

name=${TPU_NAME:-} zone=${TPU_ZONE:-} project="" tpu_type="" runtime="" spot=0 queued=0
num_slices=1 config="" workdir="" remote_dir=editseq worker=0 slice=0
overrides=()
while (($#)); do
  case $1 in
    --name) name=${2:?--name needs a value}; shift 2 ;;
    --zone) zone=${2:?--zone needs a value}; shift 2 ;;
    --project) project=${2:?--project needs a value}; shift 2 ;;
    --type) tpu_type=${2:?--type needs a value}; shift 2 ;;
    --runtime) runtime=${2:?--runtime needs a value}; shift 2 ;;
    --spot) spot=1; shift ;;
    --queued) queued=1; shift ;;
    --num-slices) num_slices=${2:?--num-slices needs a value}; shift 2 ;;
    --config) config=${2:?--config needs a value}; shift 2 ;;
    --workdir) workdir=${2:?--workdir needs a value}; shift 2 ;;
    --remote-dir) remote_dir=${2:?--remote-dir needs a value}; shift 2 ;;
    --worker) worker=${2:?--worker needs a value}; shift 2 ;;
    --slice) slice=${2:?--slice needs a value}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; overrides=("$@"); break ;;
    *) die "unknown flag '$1' (see --help)" ;;
  esac
done

[[ -n $name ]] || die "--name is required (or set TPU_NAME)"
[[ -n $zone ]] || die "--zone is required (or set TPU_ZONE)"
[[ $num_slices =~ ^[1-9][0-9]*$ ]] || die "--num-slices must be a positive integer, got '$num_slices'"
if ! [[ $slice =~ ^[0-9]+$ ]] || ((slice >= num_slices)); then
  die "--slice must be in [0, $num_slices)"
fi
[[ $worker == all || $worker =~ ^[0-9]+$ ]] || die "--worker must be a number or 'all'"
((num_slices == 1)) || queued=1

scope=(--zone="$zone")
[[ -z $project ]] || scope+=(--project="$project")

# TPU VM node names: one per slice.
nodes=()
if ((num_slices == 1)); then
  nodes=("$name")
else
  for ((i = 0; i < num_slices; i++)); do nodes+=("$name-$i"); done
fi

default_runtime() {
  case $1 in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "unknown --type '$1': expected v4-N, v5litepod-N, v5p-N or v6e-N" ;;
  esac
}

# Runs a shell command on the given worker(s) of one node.
node_ssh() {
  local node=$1 workers=$2 remote_cmd=$3
  run gcloud compute tpus tpu-vm ssh "$node" "${scope[@]}" --worker="$workers" --command="$remote_cmd"
}

wait_until_active() {
  local describe=(gcloud compute tpus queued-resources describe "$name" "${scope[@]}"
                  --format='value(state.state)')
  if ((DRY_RUN)); then
    print_cmd "${describe[@]}"
    return
  fi
  local state
  while true; do
    state=$("${describe[@]}")
    log "queued resource $name: $state"
    case $state in
      ACTIVE) return ;;
      FAILED|SUSPENDED) die "queued resource $name is $state" ;;
    esac
    sleep 30
  done
}

cmd_create() {
  [[ -n $tpu_type ]] || die "create needs --type (e.g. v4-8)"
  [[ -n $runtime ]] || runtime=$(default_runtime "$tpu_type")
  local capacity=()
  ((spot)) && capacity=(--spot)
  if ((queued)); then
    local placement=(--node-id="$name")
    ((num_slices == 1)) || placement=(--node-count="$num_slices" --node-prefix="$name")
    run gcloud compute tpus queued-resources create "$name" "${scope[@]}" \
      --accelerator-type="$tpu_type" --runtime-version="$runtime" "${placement[@]}" "${capacity[@]}"
    wait_until_active
  else
    run gcloud compute tpus tpu-vm create "$name" "${scope[@]}" \
      --accelerator-type="$tpu_type" --version="$runtime" "${capacity[@]}"
  fi
}

cmd_install() {
  local tarball="${TMPDIR:-/tmp}/editseq-$name.tar.gz" node
  pack_checkout "$repo" "$tarball"
  for node in "${nodes[@]}"; do
    run gcloud compute tpus tpu-vm scp "$tarball" "$node:editseq.tar.gz" "${scope[@]}" --worker=all
    node_ssh "$node" all "mkdir -p $remote_dir && tar -xzf editseq.tar.gz -C $remote_dir && \
bash $remote_dir/scripts/tpu/install_host.sh --accel tpu --dir $remote_dir"
  done
}

cmd_train() {
  [[ -n $config ]] || die "train needs --config (e.g. configs/tinycodelm_150m.py)"
  [[ -n $workdir ]] || die "train needs --workdir (gs://BUCKET/PATH, shared by all hosts)"
  if [[ $workdir != gs://* ]] && [[ $tpu_type != *-8 || $num_slices -gt 1 ]]; then
    log "warning: --workdir '$workdir' is not on GCS; multi-host checkpoints need a shared path"
  fi
  local node launch
  launch="cd $remote_dir && if [ -f train.pid ] && kill -0 \"\$(cat train.pid)\" 2>/dev/null; then \
echo 'training already running' >&2; exit 1; fi; \
nohup .venv/bin/python -m editseq.train --config=$(quote_arg "$config") \
--workdir=$(quote_arg "$workdir")$(join_quoted "${overrides[@]}") > train.log 2>&1 < /dev/null & \
echo \$! > train.pid"
  for node in "${nodes[@]}"; do
    node_ssh "$node" all "$launch"
  done
}

cmd_logs() {
  node_ssh "${nodes[$slice]}" "$worker" "tail -n 200 -F $remote_dir/train.log"
}

cmd_stop() {
  local node
  for node in "${nodes[@]}"; do
    node_ssh "$node" all "cd $remote_dir && if [ -f train.pid ]; then \
kill -TERM \"\$(cat train.pid)\" 2>/dev/null || true; rm -f train.pid; fi"
  done
}

cmd_status() {
  if ((queued)); then
    run gcloud compute tpus queued-resources describe "$name" "${scope[@]}"
  else
    run gcloud compute tpus tpu-vm describe "$name" "${scope[@]}"
  fi
}

cmd_delete() {
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "$name" "${scope[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${scope[@]}" --quiet
  fi
}

"cmd_$command"
