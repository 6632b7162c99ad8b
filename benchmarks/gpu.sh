#!/bin/bash
# Issue 16's GPU numbers, in one run on a lent device machine (CPU machines never run this;
# nothing here is needed by the tests). Prepared on 2026-11-30 without a GPU: its first run
# is also its test, so it stops at the first failure and prints what it got.
#
#   here, once:   bash benchmarks/gpu.sh --fetch
#                 (the wheels the device image lacks -> .whl/; .git/info/exclude needs /.whl/)
#   the device:   run(command="bash benchmarks/gpu.sh", timeout_s=540, carry=[".whl",
#                     "runs/tiny-real-k2-s0/best.pt", "runs/tiny-real-k2-s0/run.json",
#                     "runs/tiny-real-k2-s0/config.yaml"])   (~40 MB with the tree)
#
# Writes $OUT/gpu.txt and $OUT/segment_<model>.json: training s/step at 256², batch 4 and
# prediction MP/s of a 4096² image in tiles of 1024, fp32 and bf16, torch.compile off and on.
set -o pipefail
WHEELS="celldetection==0.4.9 albumentations==2.0.8 albucore==0.0.24
        segmentation_models_pytorch==0.6.0 pydantic==2.13.4 pydantic_core==2.46.4
        annotated-types==0.7.0 typing-inspection==0.4.2 stringzilla==5.3.2 simsimd==6.5.16"
if [ "$1" = "--fetch" ]; then
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl $WHEELS
fi
OUT=${OUT:-/tmp/cellsynth-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, celldetection; print('torch', torch.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/gpu.txt" || exit 1
DETECTOR=runs/tiny-real-k2-s0   # a trained tiny_u22 (an untrained CPN proposes too many cells)
for model in slim_u22 tiny_u22; do
  extra=""; [ "$model" = tiny_u22 ] && [ -d "$DETECTOR" ] && extra="--detector $DETECTOR"
  timeout 240 python3 benchmarks/segment.py --device cuda --model $model --steps 20 --compile \
    --size 4096 --tile 1024 $extra --json "$OUT/segment_$model.json" 2>&1 \
    | grep -v Warning | tee -a "$OUT/gpu.txt"
done
