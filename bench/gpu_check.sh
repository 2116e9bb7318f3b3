#!/usr/bin/env bash
# One prepared GPU check: the rollout and training-step benchmarks at realistic shapes on CUDA in bfloat16.
#
#   bash bench/gpu_check.sh OUT_DIR            # about 8 minutes on one H100
#   QUICK=1 bash bench/gpu_check.sh OUT_DIR    # shorter CoTs and fewer repetitions (about 3 minutes)
#   EXTRA=1 bash bench/gpu_check.sh OUT_DIR    # also: generate with a static KV cache, and torch.compile
#
# Shapes: Qwen2.5-0.5B at full depth (24 layers, vocab 151,936, random weights), batch 64 (the paper's
# B x G = 2 x 32), CoT L = 128 and 4L = 512 (the paper's evaluation length); training step N = 16 rows,
# L = 256. On an H100 the L = 128 half of the rollout part took about 2 minutes and the training step
# about 1 minute. Results (JSON and markdown) go to OUT_DIR and are printed. Each step is bounded by
# `timeout` (ROLLOUT_TIMEOUT, TRAIN_TIMEOUT), and a failing step does not stop the others.
# The rollout engine needs a transformers whose model forward takes `cache=` (5.24 does); put one first
# on PYTHONPATH if the machine's is older (the script checks and says so).
set -u
OUT=${1:?usage: bench/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"

# The first Python that has CUDA (the project's venv may hold a CPU-only torch).
PY=""
for cand in ${PYTHON:-} .venv/bin/python python3 python; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    PY=$cand
    break
  fi
done
if [ -z "$PY" ]; then
  echo "gpu_check: no Python with CUDA-enabled torch found" | tee "$OUT/error.txt"
  exit 2
fi
{
  echo "python: $PY"
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__); print(torch.cuda.get_device_name(0))"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
} | tee "$OUT/env.txt"
# The rollout engine passes the KV cache as `cache=` (transformers >= 5.2x); an older transformers would take
# it for an unknown keyword and decode without a cache. Put a newer one first on PYTHONPATH if needed.
if ! "$PY" -c "import inspect, sys; from transformers.models.qwen2.modeling_qwen2 import Qwen2Model; sys.exit('cache' not in inspect.signature(Qwen2Model.forward).parameters)"; then
  echo "gpu_check: this transformers has no cache= argument in the model forward; put transformers>=5.24 on PYTHONPATH" | tee "$OUT/error.txt"
  exit 3
fi

if [ "${QUICK:-0}" = 1 ]; then
  L=64; REPS=2; TL=128
else
  L=128; REPS=3; TL=256
fi
COMMON=(--device cuda --dtype bfloat16 --threads 0 --clock wall)

step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 limit=$2
  shift 2
  echo
  echo "=== $name ($(date +%T)) ==="
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "=== $name failed or timed out (exit $rc) ===" | tee -a "$OUT/$name.log"
}

step rollout "${ROLLOUT_TIMEOUT:-420}" "$PY" bench/rollout.py "${COMMON[@]}" --models small,qwen --layers 24 \
  --batch 64 --cot-len "$L" --qwen-cot-len "$L" --reps "$REPS" --small-reps "$REPS" --out "$OUT/eager"
step train_step "${TRAIN_TIMEOUT:-240}" "$PY" bench/train_step.py "${COMMON[@]}" --layers 24 --batch 16 --group 8 \
  --cot-len "$TL" --chunk-size 1024 --reps "$REPS" --out "$OUT/eager"

if [ "${EXTRA:-0}" = 1 ]; then
  # generate with a static KV cache (transformers may compile its decode step itself).
  step rollout_static 300 "$PY" bench/rollout.py "${COMMON[@]}" --models qwen --layers 24 --batch 64 \
    --qwen-cot-len "$L" --reps 2 --no-micro --static-cache --out "$OUT/static_cache"
  # torch.compile of the decoder forward (dynamic shapes), for generate and the rollouts alike.
  step rollout_compile 300 "$PY" bench/rollout.py "${COMMON[@]}" --models qwen --layers 24 --batch 64 \
    --qwen-cot-len "$L" --reps 2 --no-micro --compile --out "$OUT/compile"
fi
echo
echo "gpu_check done ($(date +%T)); results in $OUT"
