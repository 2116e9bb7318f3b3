#!/usr/bin/env bash
# Reproduces the embedded-default report (docs/embedded_report.md): trains hard, soft, fuzzy and Gumbel-softmax
# tokens with the default budget and seed and the three continuous-token experiment presets, evaluates the base
# model and each run's best policy on the embedded test split under every inference setting of
# conf/evaluate.yaml (the paper's six and the related methods), and merges them into the train x inference tables.
#   bash scripts/embedded_report.sh   # 2-core CPU; with torch_threads=1, two at a time: ~6-7 min per default run, 14-17 min per preset
# Extra arguments go to every train.py call (e.g. trainer.max_steps=50 for a quick look).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/embedded_report}
EVAL_ARGS=${EVAL_ARGS:-"num_samples=8 batch_size=256"}  # all 500 test problems, pass@1 and pass@8 of the sampled settings
mkdir -p "$OUT"
# Hard tokens with the defaults; soft and fuzzy at lr 3e-5 with answers sampled at 1.0 (at the default
# lr 1e-4 they collapse within 40 steps: see README "Results"); Gumbel-softmax with the hard run's defaults;
# then the continuous-token study's shipped settings (docs/continuous_rl_study.md, "Shipped settings").
declare -A TRAIN=([hard]="representer=hard" [soft]="representer=soft module.optim.lr=3e-5 sampling_temperature=1.0" \
  [fuzzy]="representer=fuzzy module.optim.lr=3e-5 sampling_temperature=1.0" [gumbel]="representer=gumbel" \
  [embedded_soft]="experiment=embedded_soft" [embedded_fuzzy]="experiment=embedded_fuzzy" \
  [embedded_gumbel]="experiment=embedded_gumbel")
RUNS="hard soft fuzzy gumbel embedded_soft embedded_fuzzy embedded_gumbel"
for run in $RUNS; do
  # shellcheck disable=SC2086
  [ -f "$OUT/train_$run/summary.json" ] || $PY train.py ${TRAIN[$run]} \
    callbacks.rich_progress_bar=null hydra.run.dir="$OUT/train_$run" "$@"
done
$PY scripts/summarize_runs.py $(for run in $RUNS; do echo "$OUT/train_$run"; done) --out "$OUT/training_table.md"
$PY evaluate.py name=base progress=false $EVAL_ARGS hydra.run.dir="$OUT/eval_base"
for run in $RUNS; do
  $PY evaluate.py name=$run checkpoint="$OUT/train_$run/policy_best" progress=false $EVAL_ARGS \
    hydra.run.dir="$OUT/eval_$run"
done
# shellcheck disable=SC2046
$PY scripts/report.py --run "$OUT/eval_base" $(for run in $RUNS; do echo --run "$OUT/eval_$run"; done) --out docs \
  --append docs/embedded_report_runs.md --name embedded_report --title "Embedded default: train x inference"
