#!/bin/bash
# Released gradient comparison (qwen/ChatML instruct-level script), CPU, tiny models. model_1 = student, model_2 = teacher
# (as in the released run_instruct_level_*.sh: 1B/1.5B student first, 70B/72B teacher second).
set -e
cd /tmp/refcheck/released
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
OUT=${1:-/tmp/refcheck/out/released_grads}
python src/Confounding_token_detection/${SCRIPT:-run_gradients_qwen_instruct_level.py} \
    --file_path /tmp/refcheck/rows.json \
    --model_name_1 /tmp/refcheck/models/student \
    --model_name_2 /tmp/refcheck/models/teacher \
    --mistake_file $OUT.mistakes.json \
    --output_base_dir $OUT
