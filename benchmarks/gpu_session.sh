#!/usr/bin/env bash
# Every SD 1.5 step benchmark of one GPU session, in one go, in priority order; JSON + markdown under $OUT.
#
#   bash benchmarks/gpu_session.sh           # on an H100/H200 (about 9 minutes); needs the wheels in .whl/
#   bash benchmarks/gpu_session.sh --smoke   # the same stages on CPU with the tiny config: checks the script
#
# Stages (benchmarks/sd_step.py runs; each cut by `timeout` at its limit or at what is left of BUDGET_S):
#   eager        kto_full, kto_lora_disabled, kto_lora_copy, dpo, official_like at batch 8, 16, 32 (before)
#   profile_b8   kto_full, kto_lora_disabled, kto_lora_copy at batch 8, eager, torch.profiler summary
#   regional_b8  kto_full, kto_lora_disabled, kto_lora_copy, dpo, official_like at batch 8, model.compile=regional
#                (after; compile time to the first step, from an empty inductor cache)
#   lora_b4_gc   LoRA (both references) and the baseline at batch 4, gradient checkpointing, eager and regional
#   regional_cl  kto_full, official_like at batch 8, regional + channels_last, if time is left
# Environment: OUT (default ./gpu_session_out), PYTHON (default python3), BUDGET_S (default 560 s, the
# whole script; a command on the lent machine may run 600 s).
set -u
cd "$(dirname "$0")/.."
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
OUT=${OUT:-$PWD/gpu_session_out}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-560}
START=$(date +%s)
mkdir -p "$OUT"
LOG="$OUT/log.txt"

# diffusers is not installed on the lent GPU machine: unpack the pure-Python wheels carried in .whl/
# (diffusers 0.42.1, importlib_metadata, zipp, lazy_importer; `pip download --no-deps -d .whl ...`).
SITE=${KTO_SITE:-/tmp/kto_lab_site}
if ! $PY -c "import diffusers" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "diffusers is missing and .whl/ has no wheels" | tee -a "$LOG"; exit 1; }
  $PY -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
$PY -c "import torch, diffusers, transformers, peft, accelerate as a; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'| diffusers', diffusers.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| accelerate', a.__version__)" \
  | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/env.txt" 2>/dev/null
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -Iseconds)" >> "$OUT/env.txt"

if [ $SMOKE = 1 ]; then
  COMMON=(--config tiny --device cpu --threads 1 --steps 1 --warmup 0 --compile-backend aot_eager)
  BATCHES=2; B8=2; B4=2
else
  COMMON=(--config sd15 --device cuda --steps 3 --warmup 1)
  BATCHES=8,16,32; B8=8; B4=4
fi
ALL=kto_full,kto_lora_disabled,kto_lora_copy,dpo,official_like
LORA=kto_lora_disabled,kto_lora_copy

stage() {  # stage NAME LIMIT_S SD_STEP_ARGS...
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - ($(date +%s) - START)))
  ((left < limit)) && limit=$left
  if ((limit < 30)); then
    echo "[gpu_session] skip $name: the budget is spent" | tee -a "$LOG"
    return
  fi
  echo "[gpu_session] $name: limit ${limit}s: sd_step.py $*" | tee -a "$LOG"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" $PY benchmarks/sd_step.py "${COMMON[@]}" "$@" --out "$OUT/$name.json" \
    > "$OUT/$name.md" 2> "$OUT/$name.err"
  local rc=$?
  echo "[gpu_session] $name: exit $rc after $(($(date +%s) - t0))s$( ((rc == 124)) && echo ' (timed out: the JSON has the rows done)')" | tee -a "$LOG"
}

stage eager 220 --configs $ALL --batch-size $BATCHES
stage profile_b8 60 --configs kto_full,$LORA --batch-size $B8 --steps 2 --profile "$OUT/profile_b8.profile.json"
stage regional_b8 170 --configs $ALL --batch-size $B8 --compile regional
stage lora_b4_gc 90 --configs $LORA,official_like --batch-size $B4 --grad-checkpointing --compile none,regional
stage regional_cl 90 --configs kto_full,official_like --batch-size $B8 --compile regional --channels-last

echo "[gpu_session] done in $(($(date +%s) - START))s; tables:" | tee -a "$LOG"
for f in "$OUT"/*.md; do echo "## $(basename "$f" .md)"; cat "$f"; done
