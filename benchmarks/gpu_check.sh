#!/usr/bin/env bash
# One GPU session's checks and measurements, in one go (see docs/benchmarks.md, section "On a GPU").
# At most 8 files come back from a lent machine: this writes 8 (9 with BF16=1).
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh              # on a CUDA machine, from the repo root
#   OUT=/tmp/x DEVICE=cpu SMALL=1 bash benchmarks/gpu_check.sh # dry run of the same steps on a CPU
#
# Writes JSON files and the kernel profiles under $OUT and prints the tables. Each step has its own
# time limit, so one that fails or runs long does not cost the others. LOOPS=1 also times the
# released loops (minutes at N = 1e8); BF16=1 adds the bf16-mixed training step; LANES=1 adds the
# one-table accumulation profiles.
set -u
OUT=${OUT:?set OUT to a folder}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
PROFILES=$(mktemp -d)
if [ "${SMALL:-0}" = 1 ]; then
  LAUNCH_SIZES=100000x100; LOSS_SIZES=(--sizes small --repeats 1); SMALL_PROFILE=100000x100; BIG_PROFILE=200000x100
  LATE_PROFILE=200000x100
  STEP=(--image-size 128 --batch 2 --repeats 2 --warmup 1); GRAPH_SIZES=(--sizes 100000x100 --rounds 1)
else
  LAUNCH_SIZES=1000000x1000,10000000x4000,100000000x4000; LOSS_SIZES=(--sizes gpu); SMALL_PROFILE=1000000x1000
  BIG_PROFILE=100000000x4000; STEP=(); GRAPH_SIZES=(); LATE_PROFILE=10000000x4000,100000000x4000
fi
[ "${LOOPS:-0}" = 1 ] || LOSS_SIZES+=(--no-loop)
step() { echo; echo "=== $1 ($(date +%T))"; }
profile() {  # name, then kernel_profile's arguments
  local name=$1; shift
  timeout 120 $PY -m benchmarks.kernel_profile --device "$DEVICE" --out "$PROFILES/$name.txt" "$@" 2>&1 \
    | grep -E '^\||lanes$|edges$' | grep -v -- '---'
}

step environment
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>/dev/null
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"

step "CUDA tests"
[ "$DEVICE" = cuda ] && timeout 150 $PY -m pytest -q -p no:cacheprovider -o addopts= tests/losses/test_dtypes_devices.py \
  tests/losses/test_autocast.py tests/losses/test_ranking_engine.py tests/losses/test_static_shapes.py \
  tests/losses/test_deterministic_algorithms.py tests/losses/test_float32_edges.py 2>&1 | tail -8

step "CUDA graphs: eager vs graphs, a different number of positives every call"
timeout 150 $PY -m benchmarks.cuda_graphs --device "$DEVICE" "${GRAPH_SIZES[@]}" --json "$OUT/cuda_graphs.json"

step "kernel profiles: every loss; late training without and with spread edges; spread edges early"
profile early --sizes "$SMALL_PROFILE,$BIG_PROFILE"
# late training (the negatives below every window), without and with the opt-in spread edges, and
# the spread edges early in training at 1e8 (they must not cost there; they start at 2^20 points)
profile late --sizes "$LATE_PROFILE" --losses focal,ap,alrp --late
profile late_spread --sizes "$LATE_PROFILE" --losses ap,alrp --late --spread 1024
profile early_spread --sizes "$BIG_PROFILE" --losses ap,alrp,rank_sort,pap --spread 1024
if [ "${LANES:-0}" = 1 ]; then
  profile early_one_table --sizes "$BIG_PROFILE" --losses ap --lanes 1
  profile late_one_table --sizes "$BIG_PROFILE" --losses ap --late --lanes 1
fi
cat "$PROFILES"/*.txt > "$OUT/profile.txt"

step "training step, RetinaNet ResNet-50-FPN 640 px"
timeout 150 $PY -m benchmarks.train_step --device "$DEVICE" --preset r50 "${STEP[@]}" --json "$OUT/step_r50.json"

step "training step, RetinaNet ResNet-50-FPN 640 px, without CUDA graphs"
timeout 150 $PY -m benchmarks.train_step --device "$DEVICE" --preset r50 --losses ap,alrp,rank_sort,pap \
  --no-cuda-graphs "${STEP[@]}" --json "$OUT/step_r50_eager.json"

step "training step, RetinaNet MobileNetV2-FPN 512 px"
timeout 120 $PY -m benchmarks.train_step --device "$DEVICE" --preset light "${STEP[@]}" --json "$OUT/step_light.json"

if [ "${BF16:-0}" = 1 ]; then
  step "training step, RetinaNet ResNet-50-FPN 640 px, bf16-mixed"
  timeout 150 $PY -m benchmarks.train_step --device "$DEVICE" --preset r50 --precision bf16-mixed "${STEP[@]}" \
    --json "$OUT/step_r50_bf16.json"
fi

step "launch counts and time vs focal"
timeout 150 $PY -m benchmarks.launches --device "$DEVICE" --sizes "$LAUNCH_SIZES" --criteria all --json "$OUT/launches.json"

step "forward + backward times"
timeout 240 $PY -m benchmarks.losses --device "$DEVICE" "${LOSS_SIZES[@]}" --json "$OUT/losses.json"
step done
