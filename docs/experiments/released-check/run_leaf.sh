#!/bin/bash
# leaf analyze on the same 16 rows and tiny pair: --threshold released and quantile (p = 0.05), instruction level.
set -e
cd /tmp/refcheck
source /work/main/.venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
for mode in released quantile; do
  rm -rf out/leaf_$mode
  leaf analyze --teacher models/teacher --student models/student --data rows.jsonl --output out/leaf_$mode \
    --threshold $mode --quantile 0.05 --level instruction --device cpu --dtype float32 --json > out/leaf_$mode.summary.json
done
