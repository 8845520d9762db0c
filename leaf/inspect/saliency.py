"""`leaf saliency`: per-token gradient sensitivity and attention share for one prompt/response on one model.

The smallest end-to-end use of `leaf.hooks`, and a quick look at what a model leans on:

    leaf saliency --model PATH --prompt "Tom has 3 apples and a red hat. How many apples?" --response "3"
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from leaf.errors import LeafError
from leaf.options import doc
from leaf.io import write_json_atomic


@dataclass
class SaliencyReportConfig:
    model: str = field(metadata=doc("Local HF model folder or hub id."))
    prompt: str = field(metadata=doc("The instruction / question text."))
    response: str = field(metadata=doc("The reference response whose NLL is differentiated."))
    method: str = field(default="saliency", metadata=doc(
        "saliency (||dL/de||, inseq's id, as in leaf inspect) or input_x_gradient_norm (||dL/de * e||, unsigned: "
        "not inspect's signed input_x_gradient)."))
    norm: str = field(default="l2", metadata=doc("Norm over the embedding dimension: l2 or l1."))
    chat_template: bool = field(default=True, metadata=doc("Render with the tokenizer's chat template."))
    device: str = field(default="cpu", metadata=doc("torch device, e.g. cpu, cuda, cuda:1."))
    dtype: str = field(default="float32", metadata=doc("float32, bfloat16, float16 or auto."))
    allow_pickle: bool = field(default=False, metadata=doc(
        "Allow pickle (.bin) weights: only for files you trust (pickle can run code)."))
    trust_remote_code: bool = field(default=False, metadata=doc("Run model code from the checkpoint (only if trusted)."))
    output: Path | None = field(default=None, metadata=doc("Write the report as JSON here."))

    def __post_init__(self) -> None:
        if not self.response:
            raise LeafError("The response is empty: saliency differentiates the response's NLL, so give one.")
        if self.method not in METHODS:
            raise LeafError(f"Unknown --method {self.method!r}: use saliency or input_x_gradient_norm.")

    @property
    def plan_method(self) -> str:
        """The leaf.hooks HookPlan name of the method."""
        return METHODS[self.method]


# CLI names (inseq's ids, as leaf inspect) -> leaf.hooks HookPlan names; the last three are accepted old names
METHODS = {"saliency": "grad", "input_x_gradient_norm": "grad_x_input", "grad": "grad", "grad_x_input": "grad_x_input",
           "grad_norm": "grad"}


def saliency_report(config: SaliencyReportConfig) -> dict:
    """Tokens of the prompt with their min-max normalised saliency and the response's attention share on each."""
    from leaf.hooks import HookPlan, encode_prompt_response, load_model, model_summary, run  # heavy: nnsight

    model = load_model(config.model, device=config.device, dtype=config.dtype, allow_pickle=config.allow_pickle,
                       trust_remote_code=config.trust_remote_code)
    enc = encode_prompt_response(model.tokenizer, config.prompt, config.response, chat_template=config.chat_template)
    n = len(enc.input_ids)
    key_masks = {"prompt": [enc.prompt_mask]}
    for i in enc.prompt_mask.nonzero().flatten().tolist():  # one key set per prompt token: its own share
        key_masks[f"token_{i}"] = [enc.prompt_mask.new_zeros(n)]
        key_masks[f"token_{i}"][0][i] = True
    [result] = run(model, [enc.input_ids], HookPlan(
        saliency=config.plan_method, norm=config.norm, target_mask=[enc.response_mask], query_mask=[enc.response_mask],
        key_masks=key_masks))
    scores = result.saliency[enc.prompt_mask]
    lo, hi = float(scores.min()), float(scores.max())
    prompt_mass = float(result.attention_mass["prompt"].mean())
    tokens = []
    for i in enc.prompt_mask.nonzero().flatten().tolist():
        start, end = enc.offsets[i].tolist()
        raw = float(result.saliency[i])
        tokens.append({"index": i, "text": enc.text[start:end], "start": start, "end": end, "saliency": raw,
                       "saliency_norm": (raw - lo) / (hi - lo) if hi > lo else 0.0,
                       "attention": float(result.attention_mass[f"token_{i}"].mean())})
    report = {"model": model_summary(model), "config": {k: str(v) if isinstance(v, Path) else v
                                                       for k, v in asdict(config).items()},
              "response_nll": result.loss, "attention_on_prompt": prompt_mass, "tokens": tokens}
    if config.output:
        write_json_atomic(config.output, report)
    return report


def format_report(report: dict, top: int = 10) -> str:
    """A plain-text table of the `top` most salient prompt tokens."""
    rows = sorted(report["tokens"], key=lambda t: -t["saliency"])[:top]
    lines = [f"response NLL {report['response_nll']:.4f}; attention from response onto prompt "
             f"{report['attention_on_prompt']:.3f} (sink excluded)",
             f"{'pos':>5}  {'token':<12} {'saliency':>10} {'norm':>6} {'attention':>9}"]
    for t in rows:
        lines.append(f"{t['index']:>5}  {json.dumps(t['text'])[:12]:<12} {t['saliency']:>10.3e} "
                     f"{t['saliency_norm']:>6.3f} {t['attention']:>9.4f}")
    return "\n".join(lines)
