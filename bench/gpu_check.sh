#!/usr/bin/env bash
# One prepared GPU check: the rollout and training-step benchmarks at realistic shapes on CUDA in bfloat16.
#
#   bash bench/gpu_check.sh OUT_DIR            # at most about 8 minutes (each step has its own timeout)
#   QUICK=1 bash bench/gpu_check.sh OUT_DIR    # shorter CoTs and fewer repetitions
#   EXTRA=1 bash bench/gpu_check.sh OUT_DIR    # also the teacher-forced pass benchmark
#
# Shapes: the embedded model and Qwen2.5-0.5B at full depth (24 layers, vocab 151,936, random weights),
# batch 64 (the paper's B x G = 2 x 32), CoT L = 128 and 4L = 512; then two RL steps of the Llama-3.2-3B
# preset's shape (random weights, B 2 x G 32, CoT 128) per representer. This version has not run on a GPU
# yet (docs/benchmarks.md). Results (JSON and markdown) go to OUT_DIR and are printed. Each step is
# bounded by `timeout`, and a failing step does not stop the others.
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

# 1. Decode tokens/s, hard/soft/fuzzy against plain generate, both models.
step rollout "${ROLLOUT_TIMEOUT:-240}" "$PY" bench/rollout.py "${COMMON[@]}" --models small,qwen --layers 24 \
  --batch 64 --cot-len "$L" --qwen-cot-len "$L" --reps "$REPS" --small-reps "$REPS" --no-static-anchor \
  --no-micro --out "$OUT/eager"
# 2. The same at the Qwen shape against generate with a static cache and a compiled forward (compiles first).
step rollout_static "${STATIC_TIMEOUT:-150}" "$PY" bench/rollout.py "${COMMON[@]}" --models qwen --layers 24 \
  --batch 64 --qwen-cot-len "$L" --long-factor 1 --reps 2 --no-micro --out "$OUT/static"
# 3. Share of the memory-bandwidth bound (weights + KV cache read per decode step).
step bandwidth 30 "$PY" bench/bandwidth_bound.py "$OUT/eager/rollout.json"
# 4. Full RL steps of the paper's Llama-3.2-3B GSM8K shape (random weights): time and peak memory.
step rl_step "${RL_TIMEOUT:-150}" "$PY" bench/gpu_train_step.py --model llama3_2_3b --steps 2 --G 32 --B 2 \
  --max-cot 128 --out "$OUT/rl_step.json"

if [ "${EXTRA:-0}" = 1 ]; then
  # The teacher-forced pass alone, against a naive full-logits version.
  step train_step 240 "$PY" bench/train_step.py "${COMMON[@]}" --layers 24 --batch 16 --group 8 \
    --cot-len "$TL" --chunk-size 1024 --reps "$REPS" --out "$OUT/eager"
fi
echo
echo "gpu_check done ($(date +%T)); results in $OUT"
