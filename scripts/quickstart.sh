#!/usr/bin/env bash
# The main job end to end on the embedded default data (no downloads), on a fresh machine:
#   standard-library instruction pairs -> LintSeq -> TFRecords -> tokenizer + seqio -> train a tiny
#   model -> checkpoint -> sample HumanEval -> sandboxed execution -> pass@k + coverage plot.
# Outputs land in artifacts/ (override with ARTIFACTS=DIR). STEPS and PROBLEMS shorten or lengthen
# it; MAX_PROGRAMS=N generates data from a deterministic sample of N programs instead of all 3,138.
# A rerun reuses each stage whose inputs have not changed (and says so); STEPS=more resumes training.
# EDITSEQ_PYTHON=/path/to/python runs it with an interpreter that has the packages already
# (scripts/setup.sh: no venv, no pip).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
PY="${EDITSEQ_PYTHON:-.venv/bin/python}"
OUT="${ARTIFACTS:-artifacts}"
STEPS="${STEPS:-300}"
PROBLEMS="${PROBLEMS:-0:20}"
sample=()
if [ -n "${MAX_PROGRAMS:-}" ]; then sample=(--max_programs "$MAX_PROGRAMS"); fi

echo "== 1/3 data_gen: LintSeq over the standard library's documented functions -> $OUT/data"
"$PY" -m data_gen.pipeline --output_dir "$OUT/data" "${sample[@]}" \
  --direct_num_workers=2 --direct_running_mode=multi_processing

echo "== 2/3 train: configs/test_tiny.py for $STEPS steps on the LintSeq variant -> $OUT/run_tiny"
"$PY" -m editseq.train --config=configs/test_tiny.py --workdir="$OUT/run_tiny" \
  --config.data.data_dir="$OUT/data" --config.train.steps="$STEPS" \
  --config.train.eval_every=100 --config.train.checkpoint_every=100

echo "== 3/3 eval: sample HumanEval problems $PROBLEMS, execute in the sandbox, pass@k -> $OUT/eval_tiny"
"$PY" -m eval.run --checkpoint "$OUT/run_tiny" --benchmark humaneval --task_range "$PROBLEMS" \
  --num_samples 4 --temperature 1.0 --top_p 0.95 --max_new_tokens 128 --output_dir "$OUT/eval_tiny"

echo "Done in $((SECONDS - start)) s. Data stats: $OUT/data/lintseq/stats.txt; metrics:" \
     "$OUT/run_tiny/metrics.jsonl (tensorboard --logdir $OUT/run_tiny/tensorboard); eval:" \
     "$OUT/eval_tiny/summary.json and coverage.png."
