#!/usr/bin/env bash
# The main job end to end on the embedded default data, on a fresh machine: the paper's
# comparison, LintSeq vs baseline finetuning (python -m editseq.experiment):
#   standard-library instruction pairs -> LintSeq and baseline TFRecords -> (import a pretrained
#   model) -> finetune both with the same recipe and steps -> sample HumanEval+ and MBPP+ ->
#   sandboxed execution -> pass@k, validity, diversity -> report.md with its figures.
# EXPERIMENT names the config (configs/experiments/<name>.py): `smoke` (default, minutes, a tiny
# model from scratch) or `cpu` (SmolLM2-135M-Instruct, 2.3 hours on 2 cores). Outputs land in
# artifacts/<name> (ARTIFACTS=DIR moves them); other arguments go to editseq.experiment, e.g.
# --config.eval.num_samples=10. A rerun reuses every finished stage (and says so) and resumes an
# interrupted one. The evalplus benchmark files are downloaded once into the cache (pinned
# SHA-256; EDITSEQ_EVALPLUS_URL=URL fetches them from a mirror).
# EDITSEQ_PYTHON=/path/to/python runs it with an interpreter that has the packages already
# (scripts/setup.sh: no venv, no pip).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
PY="${EDITSEQ_PYTHON:-.venv/bin/python}"
NAME="${EXPERIMENT:-smoke}"
OUT="${ARTIFACTS:-artifacts}/$NAME"

"$PY" -m editseq.experiment --config="configs/experiments/$NAME.py" --workdir="$OUT" "$@"

echo "Done in $((SECONDS - start)) s. Report: $OUT/report/report.md; training metrics:" \
     "$OUT/runs/*/metrics.jsonl (tensorboard --logdir $OUT/runs); samples and verdicts:" \
     "$OUT/eval/<variant>/<benchmark>/."
