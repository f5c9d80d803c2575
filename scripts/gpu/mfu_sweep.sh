#!/usr/bin/env bash
# Sweeps editseq.perf.bench_train over batch sizes and rematerialisation policies on an accelerator:
# one line per setting (tokens/s, MFU; a setting that fails, e.g. out of memory, says so), then the
# best. Every run's JSON record is appended to --out.
set -euo pipefail

usage() {
  cat <<USAGE
usage: $(basename "$0") [--config FILE] [--seq-len T] [--batches "B1 B2 ..."] [--remats "R1 R2 ..."]
                    [--steps N] [--out FILE] [--dry-run] [-- EXTRA_BENCH_FLAGS...]

  --config    training config (default: configs/tinycodelm_150m.py)
  --seq-len   sequence length (default: 1024)
  --batches   global batch sizes to try (default: "16 32 64")
  --remats    config.train.remat values to try: none, dots, dots_no_batch, full (default: "none full")
  --steps     train steps per timed round (default: 10; 3 rounds)
  --out       JSON lines file for the records (default: mfu_sweep.jsonl)
              (after --, --profile_dir=DIR also traces each setting and adds its busy share)
  --dry-run   print the benchmark commands instead of running them
Environment: PYTHON (default: .venv/bin/python if present, else python3).
USAGE
}

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=scripts/tpu/common.sh
source "$here/../tpu/common.sh"

config=configs/tinycodelm_150m.py seq_len=1024 batches="16 32 64" remats="none full" steps=10
out=mfu_sweep.jsonl
extra=()
while (($#)); do
  case $1 in
    --config) config=${2:?--config needs a value}; shift 2 ;;
    --seq-len) seq_len=${2:?--seq-len needs a value}; shift 2 ;;
    --batches) batches=${2:?--batches needs a value}; shift 2 ;;
    --remats) remats=${2:?--remats needs a value}; shift 2 ;;
    --steps) steps=${2:?--steps needs a value}; shift 2 ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown flag '$1' (see --help)" ;;
  esac
done

cd "$repo"
python=${PYTHON:-}
if [[ -z $python ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi

read -r -a batch_list <<<"$batches"
read -r -a remat_list <<<"$remats"
for remat in "${remat_list[@]}"; do
  for batch in "${batch_list[@]}"; do
    cmd=("$python" -m editseq.perf.bench_train --config="$config" --notorch --rounds=3 --steps="$steps"
         --config.data.seq_len="$seq_len" --config.data.global_batch_size="$batch"
         --config.train.remat="$remat" "${extra[@]}")
    if ((DRY_RUN)); then
      print_cmd "${cmd[@]}"
      continue
    fi
    log "remat=$remat batch=$batch"
    if record=$("${cmd[@]}" | tail -n 1) && [[ $record == "{"* ]]; then
      echo "$record" >>"$out"
    else
      echo "{\"remat\": \"$remat\", \"batch_size\": $batch, \"failed\": true}" >>"$out"
    fi
  done
done
((DRY_RUN)) && exit 0

"$python" - "$out" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"{'remat':<14}{'batch':>6}{'tokens/s':>12}{'s/step':>9}{'MFU':>8}{'busy':>7}")
for r in rows:
  if r.get("failed"):
    print(f"{r['remat']:<14}{r['batch_size']:>6}{'failed':>12}")
  else:
    # With -- --profile_dir=DIR: the device's busy share of the traced steps.
    busy = (f"{100 * r['profile_busy_s_per_step'] / r['profile_span_s_per_step']:>6.1f}%"
            if r.get("profile_span_s_per_step") else "")
    print(f"{r['remat']:<14}{r['batch_size']:>6}{r['jax_tokens_per_s']:>12,.0f}"
          f"{r['jax_step_s']:>9.3f}{100 * (r['jax_mfu'] or float('nan')):>7.1f}%{busy}")
ok = [r for r in rows if not r.get("failed")]
if ok:
  best = max(ok, key=lambda r: r["jax_tokens_per_s"])
  print(f"best: remat={best['remat']} batch={best['batch_size']}: "
        f"{best['jax_tokens_per_s']:,.0f} tokens/s, MFU {100 * (best['jax_mfu'] or float('nan')):.1f}% "
        f"on {best['num_devices']} x {best['device_kind']}")
PY
