#!/bin/bash
# Extract the released detection scripts from a RUCBM/LeaF snapshot (a git dir: the `fetch` tool's mirror, or a
# clone) into /tmp/refcheck/released and apply the four patches of PATCHES.md (P0-P3), keeping the unpatched-P3 and
# float16 variants beside. Usage: setup_released.sh /path/to/RUCBM+LeaF/repo
set -e
GIT=${1:?usage: setup_released.sh RUCBM-LeaF-git-dir}
DEST=/tmp/refcheck/released
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p $DEST/src/Confounding_token_detection
cp "$HERE/run_released.sh" "$HERE/PATCHES.md" $DEST/
for f in run_gradients_qwen_instruct_level.py remove_confounding_tokens_math.py; do
  git -C "$GIT" show HEAD:src/Confounding_token_detection/$f > $DEST/src/Confounding_token_detection/$f
done
python3 - "$DEST/src/Confounding_token_detection" <<'PY'
import sys
from pathlib import Path
d = Path(sys.argv[1]); src = (d / "run_gradients_qwen_instruct_level.py").read_text()
def patch(text, old, new):
    assert text.count(old) == 1, old
    return text.replace(old, new)
p = patch(src, "import torch\n", "import torch\ntorch.set_num_threads(1)  # P0\n")
fp16 = patch(p, '        device_map="auto",\n', "")                                          # P1 (float16 kept)
p = patch(fp16, "torch_dtype=torch.float16", "torch_dtype=torch.float32")                   # P1
grad = "    inputs_embeds.requires_grad_(True)\n"
p, fp16 = (patch(t, grad, grad + "    inputs_embeds.retain_grad()  # P2\n") for t in (p, fp16))
(d / "run_gradients_qwen_instruct_level_noP3.py").write_text(p)
skip = "            # Compute gradients and calculate differences\n"
p, fp16 = (patch(t, skip, "            start_idx += 2  # P3\n" + skip) for t in (p, fp16))
(d / "run_gradients_qwen_instruct_level.py").write_text(p)
(d / "run_gradients_qwen_instruct_level_fp16.py").write_text(fp16)
PY
echo "released scripts in $DEST (patched: P0-P3; see PATCHES.md)"
