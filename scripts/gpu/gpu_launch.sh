#!/usr/bin/env bash
# editseq on GPU machines: one process per host driving all of that host's GPUs. With one host
# ("localhost" = this checkout, no ssh) training starts directly; with several, host 0 is the
# jax.distributed coordinator and every host gets --coordinator_address, --num_processes and
# --process_id. Run with --help for the flags; --dry-run prints each command instead of running it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=scripts/tpu/common.sh
source "$here/../tpu/common.sh"

usage() {
  cat <<USAGE
usage: $(basename "$0") COMMAND [--hosts H1,H2,...] [flags] [-- CONFIG_OVERRIDES...]

commands:
  install   copy this checkout to every host (ssh/scp) and install it with the CUDA build of jax;
            with --hosts localhost, install into this checkout
  train     start training in the background on every host (--config, --workdir)
  logs      follow the training log of one host (--host-index, default 0)
  stop      send SIGTERM to training on every host (the trainer checkpoints on SIGTERM)

flags:
  --hosts LIST        comma-separated ssh host names, host 0 first (default: localhost)
  --ssh-user USER     user for ssh/scp (default: ssh's own default)
  --cuda VARIANT      jax CUDA build: cuda12 or cuda13 (default: cuda12)
  --port PORT         jax.distributed coordinator port on host 0 (default: 8476)
  --config FILE       training config, e.g. configs/tinycodelm_150m.py (train)
  --workdir DIR       training workdir; with several hosts it must be shared (NFS, gs://) (train)
  --remote-dir DIR    checkout location on remote hosts, relative to \$HOME (default: editseq)
  --host-index N      host for logs (default: 0)
  --dry-run           print every command instead of running it
  -h, --help          this help

Arguments after -- go to editseq.train, e.g. -- --config.data.global_batch_size=256.
USAGE
}

command=${1:-}
if [[ -z $command || $command == -h || $command == --help ]]; then
  usage
  exit 0
fi
shift
case $command in
  install|train|logs|stop) ;;
  *) die "unknown command '$command' (see --help)" ;;
esac

hosts_csv=localhost ssh_user="" cuda=cuda12 port=8476 config="" workdir="" remote_dir=editseq
host_index=0
overrides=()
while (($#)); do
  case $1 in
    --hosts) hosts_csv=${2:?--hosts needs a value}; shift 2 ;;
    --ssh-user) ssh_user=${2:?--ssh-user needs a value}; shift 2 ;;
    --cuda) cuda=${2:?--cuda needs a value}; shift 2 ;;
    --port) port=${2:?--port needs a value}; shift 2 ;;
    --config) config=${2:?--config needs a value}; shift 2 ;;
    --workdir) workdir=${2:?--workdir needs a value}; shift 2 ;;
    --remote-dir) remote_dir=${2:?--remote-dir needs a value}; shift 2 ;;
    --host-index) host_index=${2:?--host-index needs a value}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; overrides=("$@"); break ;;
    *) die "unknown flag '$1' (see --help)" ;;
  esac
done

IFS=, read -r -a hosts <<<"$hosts_csv"
((${#hosts[@]} > 0)) || die "--hosts is empty"
num_hosts=${#hosts[@]}
if ((num_hosts > 1)); then
  for host in "${hosts[@]}"; do
    [[ $host != localhost ]] || die "'localhost' only works alone; name every host of a multi-host run"
  done
fi
[[ $cuda == cuda12 || $cuda == cuda13 ]] || die "--cuda must be cuda12 or cuda13, got '$cuda'"
[[ $port =~ ^[0-9]+$ ]] || die "--port must be a number, got '$port'"
if ! [[ $host_index =~ ^[0-9]+$ ]] || ((host_index >= num_hosts)); then
  die "--host-index must be in [0, $num_hosts)"
fi

target() {
  if [[ -n $ssh_user ]]; then echo "$ssh_user@$1"; else echo "$1"; fi
}

# Runs a shell command inside the checkout on one host: this one for localhost, else over ssh.
host_exec() {
  local host=$1 remote_cmd=$2
  if [[ $host == localhost ]]; then
    run bash -c "cd $(quote_arg "$repo") && $remote_cmd"
  else
    run ssh "$(target "$host")" "cd $remote_dir && $remote_cmd"
  fi
}

cmd_install() {
  local host
  if [[ ${hosts[0]} == localhost ]]; then
    host_exec localhost "bash scripts/tpu/install_host.sh --accel $cuda"
    return
  fi
  local tarball="${TMPDIR:-/tmp}/editseq-gpu.tar.gz"
  pack_checkout "$repo" "$tarball"
  for host in "${hosts[@]}"; do
    run scp "$tarball" "$(target "$host"):editseq.tar.gz"
    run ssh "$(target "$host")" "mkdir -p $remote_dir && tar -xzf editseq.tar.gz -C $remote_dir && \
bash $remote_dir/scripts/tpu/install_host.sh --accel $cuda --dir $remote_dir"
  done
}

cmd_train() {
  [[ -n $config ]] || die "train needs --config (e.g. configs/tinycodelm_150m.py)"
  [[ -n $workdir ]] || die "train needs --workdir"
  local i args
  for ((i = 0; i < num_hosts; i++)); do
    args="--config=$(quote_arg "$config") --workdir=$(quote_arg "$workdir")"
    if ((num_hosts > 1)); then
      args+=" --coordinator_address=${hosts[0]}:$port --num_processes=$num_hosts --process_id=$i"
    fi
    args+=$(join_quoted "${overrides[@]}")
    host_exec "${hosts[$i]}" "if [ -f train.pid ] && kill -0 \"\$(cat train.pid)\" 2>/dev/null; then \
echo 'training already running' >&2; exit 1; fi; \
nohup .venv/bin/python -m editseq.train $args > train.log 2>&1 < /dev/null & echo \$! > train.pid"
  done
}

cmd_logs() {
  host_exec "${hosts[$host_index]}" "tail -n 200 -F train.log"
}

cmd_stop() {
  local host
  for host in "${hosts[@]}"; do
    host_exec "$host" "if [ -f train.pid ]; then kill -TERM \"\$(cat train.pid)\" 2>/dev/null || true; \
rm -f train.pid; fi"
  done
}

"cmd_$command"
