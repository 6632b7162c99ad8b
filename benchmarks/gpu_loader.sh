#!/bin/bash
# Batch workers on a lent GPU machine (CPU machines never run this): the trainer's steps with
# batches prepared in the loop against TrainConfig.workers, slim_u22 and u22, alone and 3
# runs side by side (as an experiment runs its seeds). Needs the wheels of benchmarks/gpu.sh
# (`bash benchmarks/gpu.sh --fetch`); on the device:
#   run(command="bash benchmarks/gpu_loader.sh", timeout_s=300, carry=[".whl"])
# Writes $OUT/loader_*.json; ~3 min.
set -o pipefail
OUT=${OUT:-/tmp/cellsynth-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
B="timeout 100 python3 benchmarks/loader.py --device cuda --workers 4"
$B --steps 60 --json "$OUT/loader_slim.json" 2>&1 | grep -v Warn
$B --steps 40 --model u22 --json "$OUT/loader_u22.json" 2>&1 | grep -v Warn
for i in 1 2 3; do  # 3 runs side by side, 4 workers each
  $B --steps 40 --json "$OUT/loader_slim_x3_$i.json" > "$OUT/x3_$i.log" 2>&1 &
done
wait
grep -h "faster\|s/step" "$OUT"/x3_*.log
