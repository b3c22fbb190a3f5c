#!/usr/bin/env bash
# One GPU session's checks and measurements, in one go (see docs/benchmarks.md).
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh            # on a CUDA machine, from the repo root
#   OUT=/tmp/x DEVICE=cpu SMALL=1 bash benchmarks/gpu_check.sh # dry run of the same steps on a CPU
#
# Writes its JSON and the profile under $OUT (7 files) and prints the tables. Each step has its own
# time limit, so one that fails or runs long does not cost the others.
set -u
OUT=${OUT:?set OUT to a folder}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
if [ "${SMALL:-0}" = 1 ]; then
  LAUNCH_SIZES=100000x100; LOSS_SIZES=(--sizes small --no-loop --repeats 1); PROFILE_SIZES=100000x100
  STEP=(--image-size 128 --batch 2 --repeats 2 --warmup 1); STEP_R50=("${STEP[@]}")
else
  LAUNCH_SIZES=1000000x1000,10000000x4000,100000000x4000; LOSS_SIZES=(--sizes gpu); PROFILE_SIZES=1000000x1000,100000000x4000
  STEP=(); STEP_R50=()
fi
step() { echo; echo "=== $1 ($(date +%T))"; }

step environment
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>/dev/null
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"

step "CUDA tests"
[ "$DEVICE" = cuda ] && timeout 150 $PY -m pytest -q -p no:cacheprovider -o addopts= tests/losses/test_dtypes_devices.py \
  tests/losses/test_autocast.py 2>&1 | tail -8

step "launch counts and time vs focal"
timeout 150 $PY -m benchmarks.launches --device "$DEVICE" --sizes "$LAUNCH_SIZES" --criteria all --json "$OUT/launches.json"

step "forward + backward times (released loops as baselines)"
timeout 240 $PY -m benchmarks.losses --device "$DEVICE" "${LOSS_SIZES[@]}" --json "$OUT/losses.json"

step "training step, RetinaNet ResNet-50-FPN 640 px"
timeout 150 $PY -m benchmarks.train_step --device "$DEVICE" --preset r50 "${STEP_R50[@]}" --json "$OUT/step_r50.json"

step "training step, RetinaNet MobileNetV2-FPN 512 px"
timeout 120 $PY -m benchmarks.train_step --device "$DEVICE" --preset light "${STEP[@]}" --json "$OUT/step_light.json"

step "training step, RetinaNet ResNet-50-FPN 640 px, bf16-mixed"
timeout 150 $PY -m benchmarks.train_step --device "$DEVICE" --preset r50 --precision bf16-mixed "${STEP_R50[@]}" \
  --json "$OUT/step_r50_bf16.json"

step "kernel profile"
timeout 150 $PY -m benchmarks.kernel_profile --device "$DEVICE" --sizes "$PROFILE_SIZES" --out "$OUT/profile.txt" \
  2>&1 | grep -E '^\|' | grep -v -- '---'
step done
