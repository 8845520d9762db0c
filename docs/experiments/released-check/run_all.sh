#!/bin/bash
# The whole comparison (about 2.5 min on one thread; FP16=1 adds the float16 released run, ~6 min), in /tmp/refcheck:
#   bash docs/experiments/released-check/run_all.sh /path/to/RUCBM+LeaF/repo
# needs leaf installed (the README's test command) and a RUCBM/LeaF snapshot (git dir).
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p /tmp/refcheck/out
bash "$HERE/setup_released.sh" "${1:?usage: run_all.sh RUCBM-LeaF-git-dir}"
cp "$HERE"/{harness.py,build_models.py,merge_grads.py,run_leaf.sh} /tmp/refcheck/
cd /tmp/refcheck
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
python - "$HERE/../../../tests/data/gsm_plus_distraction_dev.jsonl" <<'PY'   # the 16 rows: the first 16 of the shipped GSM-Plus distraction rows
import json, sys
from pathlib import Path
src = [json.loads(l) for l in Path(sys.argv[1]).read_text().splitlines()[:16]]
rows = [{"id": f"gsmplus-{k}", "instruction": r["question"], "output": r["solution"],
         "seed_question": r["seed_question"], "answer": r["answer"]} for k, r in enumerate(src)]
Path("rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
Path("rows.json").write_text(json.dumps(rows))
PY
python build_models.py
SCRIPT=run_gradients_qwen_instruct_level_noP3.py bash released/run_released.sh /tmp/refcheck/out/released_grads_unpatched
python merge_grads.py out/released_grads_unpatched out/released_grads_unpatched.json
(cd released && python src/Confounding_token_detection/remove_confounding_tokens_math.py \
   --instruction_file /tmp/refcheck/rows.json --grads_file /tmp/refcheck/out/released_grads_unpatched.json \
   --output_file /tmp/refcheck/out/released_cf_unpatched.jsonl)   # 0 lines: every sample fails the token match
bash released/run_released.sh /tmp/refcheck/out/released_grads
python merge_grads.py out/released_grads out/released_grads.json
(cd released && python src/Confounding_token_detection/remove_confounding_tokens_math.py \
   --instruction_file /tmp/refcheck/rows.json --grads_file /tmp/refcheck/out/released_grads.json \
   --output_file /tmp/refcheck/out/released_cf.jsonl)
if [ -n "$FP16" ]; then
  SCRIPT=run_gradients_qwen_instruct_level_fp16.py bash released/run_released.sh /tmp/refcheck/out/released_grads_fp16
  python merge_grads.py out/released_grads_fp16 out/released_grads_fp16.json
fi
bash run_leaf.sh
python harness.py > out/harness.log 2>&1 && echo "results.json written: /tmp/refcheck/results.json"
