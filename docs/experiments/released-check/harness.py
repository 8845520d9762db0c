"""Compare `leaf analyze` (instruction level) with the released RUCBM/LeaF confounder-detection scripts on one tiny
same-tokenizer pair and 16 GSM-Plus rows, and attribute the disagreement to definition differences by applying the
released choices one at a time (cumulatively, and singly) on top of leaf's own outputs.

Inputs (made by build_models.py, run_released.sh + merge_grads.py + the remove script, run_leaf.sh):
  out/released_grads.json, out/released_cf.jsonl, out/released_grads_unpatched.json, out/leaf_{released,quantile}/
Output: results.json (and a printed summary).
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
import json
import statistics
import sys
from collections import Counter, defaultdict

import torch

torch.set_num_threads(1)
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from leaf.analyze.scoring import minmax
from leaf.analyze.thresholds import ThresholdContext, flag
from leaf.spans import grow_spans, never_flagged, remove_spans, token_spans

ROOT = "/tmp/refcheck"
sys.path.insert(0, f"{ROOT}/released/src/Confounding_token_detection")
import remove_confounding_tokens_math as REL  # the released masking/reconstruction functions, used as a library

P = 0.05
rows = json.load(open(f"{ROOT}/rows.json"))
tok = AutoTokenizer.from_pretrained(f"{ROOT}/models/student")
SPECIAL = set(tok.all_special_ids)
models = {name: AutoModelForCausalLM.from_pretrained(f"{ROOT}/models/{name}", dtype=torch.float32).eval()
          for name in ("student", "teacher")}

rel_grads = {r["sample_id"]: r for r in json.load(open(f"{ROOT}/out/released_grads.json"))}
rel_grads_unpatched = {r["sample_id"]: r for r in json.load(open(f"{ROOT}/out/released_grads_unpatched.json"))}
rel_cf = defaultdict(list)
for line in open(f"{ROOT}/out/released_cf.jsonl"):
    r = json.loads(line)
    rel_cf[r["sample_id"] - 1].append(r["instruction"])
leaf = {}
for mode in ("released", "quantile"):
    recs = [json.loads(l) for l in open(f"{ROOT}/out/leaf_{mode}/samples.jsonl")]
    leaf[mode] = ({r["row"]: r for r in recs}, load_file(f"{ROOT}/out/leaf_{mode}/scores.safetensors"))


def grad_norms(model, ids, labels):
    """Per-token L2 norm of d(mean CE over labels != -100)/d(input embeddings): what both sides compute."""
    emb = model.get_input_embeddings()(ids[None]).detach().requires_grad_(True)
    out = model(inputs_embeds=emb, labels=labels[None])
    out.loss.backward()
    return emb.grad[0].norm(dim=-1).double()


def released_flags_rule(d):
    """remove_confounding_tokens_math.py:21-31,48: tau = min(sorted(d)[int(n*0.05)], 0.5); flag d <= tau."""
    s = sorted(d.tolist())
    tau = min(s[int(len(s) * P)], 0.5) if s else 0.0
    return d <= tau


def jaccard(a, b):
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def agreement(pred, ref):
    """pred, ref: {row: set(positions)} over the rows both have."""
    keys = sorted(set(pred) & set(ref))
    js = [jaccard(pred[k], ref[k]) for k in keys]
    return {"exact_rows": sum(pred[k] == ref[k] for k in keys), "rows": len(keys),
            "jaccard_median": round(statistics.median(js), 4), "jaccard_mean": round(statistics.mean(js), 4),
            "flagged_total": sum(len(pred[k]) for k in keys), "flagged_total_released": sum(len(ref[k]) for k in keys)}


def cf_match(pred, ref):
    """pred, ref: {row: [texts]}: how many of the released counterfactual texts appear (exactly) among pred's."""
    hit = total = rows_equal = 0
    for k in ref:
        p = Counter(pred.get(k, []))
        r = Counter(ref[k])
        total += sum(r.values())
        hit += sum((p & r).values())
        rows_equal += p == r
    return {"reproduced": hit, "of": total, "rows_identical": rows_equal, "rows": len(ref)}


per_row, grad_checks = {}, []
rel_flags, rel_flags_unpatched_fixed = {}, {}
ladder = defaultdict(dict)     # step -> {row: set}
single = defaultdict(dict)     # factor alone on top of leaf --threshold released
llama15 = {}
leaf_flags = {m: {} for m in leaf}
loss_positions_example = None
fp16_path = f"{ROOT}/out/released_grads_fp16.json"
rel_grads_fp16 = {r["sample_id"]: r for r in json.load(open(fp16_path))} if os.path.exists(fp16_path) else None
rel_flags_fp16 = {}
for i, row in enumerate(rows):
    full = tok.apply_chat_template([{"role": "user", "content": row["instruction"]},
                                    {"role": "assistant", "content": row["output"]}], tokenize=False,
                                   add_generation_prompt=True)
    user = tok.apply_chat_template([{"role": "user", "content": row["instruction"]}], tokenize=False,
                                   add_generation_prompt=True)
    ids_full = torch.tensor(tok(full)["input_ids"])
    user_len = len(tok(user)["input_ids"])
    # the released range (qwen script + PATCH P3): after the 2nd <|im_start|> + "user\n", up to <|im_end|>
    dec = [tok.decode([t]).strip() for t in ids_full.tolist()]
    starts = [k for k, t in enumerate(dec) if t == "<|im_start|>"]
    start = starts[1] + 1 + 2
    end = next(k for k in range(start, len(dec)) if dec[k] == "<|im_end|>")
    rng = list(range(start, end))
    assert len(rng) == len(rel_grads[i + 1]["grad_diff"]), (i, len(rng))

    rec, scores = leaf["released"][0][i], leaf["released"][1]
    text = rec["text"]
    enc = tok(text, return_offsets_mapping=True)
    ids_leaf = torch.tensor(enc["input_ids"])
    offsets = torch.tensor(enc["offset_mapping"])
    assert torch.equal(ids_full[: len(ids_leaf)], ids_leaf), "leaf's rendering is not a prefix of the released one"
    assert full.startswith(text)
    unit = rec["units"][0]
    cand = [t["index"] for t in unit["tokens"]]
    cand_mask = torch.zeros(len(ids_leaf), dtype=torch.bool)
    cand_mask[cand] = True
    assert set(cand) <= set(rng)
    ws_in_range = [k for k in rng if k not in set(cand)]
    ws_text = sorted({text[int(offsets[k, 0]): int(offsets[k, 1])] for k in ws_in_range})

    # --- gradients: leaf's raw saliency vs a plain-HF recomputation under each loss definition
    rs, re_ = rec["response_span"]
    leaf_target = torch.tensor([(k > 0 and int(ids_leaf[k]) not in SPECIAL and offsets[k, 0] >= rs
                                 and offsets[k, 1] <= re_) for k in range(len(ids_leaf))])
    lab_leaf = torch.where(leaf_target, ids_leaf, torch.tensor(-100))
    lab_rel = ids_full.clone()
    lab_rel[:user_len] = -100
    g = {}
    for name, model in models.items():
        model.zero_grad(set_to_none=True)
        g[(name, "leaf_loss")] = grad_norms(model, ids_leaf, lab_leaf)
        g[(name, "released_loss")] = grad_norms(model, ids_full, lab_rel)[: len(ids_leaf)]
    if loss_positions_example is None:
        loss_positions_example = {
            "leaf": [tok.decode([int(t)]) for t in ids_leaf[leaf_target]][-3:],
            "leaf_count": int(leaf_target.sum()),
            "released": [tok.decode([int(t)]) for t in ids_full[user_len:]][-7:],
            "released_count": int(len(ids_full) - user_len),
            "released_extra_beyond_leaf": [tok.decode([int(t)]) for t in ids_full[len(ids_leaf) - 2:]],
        }
    row_grad = {}
    for name, key in (("student", "student"), ("teacher", "teacher")):
        leaf_raw = scores[f"{i}.0.{key}"].double()
        mine = g[(name, "leaf_loss")]
        row_grad[name] = {
            # leaf (batch 8, padded) vs plain HF, same loss: raw norms and candidate-normalised
            "leaf_vs_hf_same_loss_maxabs_raw": float((leaf_raw[cand] - mine[cand]).abs().max()),
            "leaf_vs_hf_same_loss_rel": float((leaf_raw[cand] - mine[cand]).abs().max() / mine[cand].abs().max()),
            "leaf_vs_hf_same_loss_maxabs_norm": float((minmax(leaf_raw[cand]) - minmax(mine[cand])).abs().max()),
            # the released JSON (normalised over its range) vs plain HF with the released loss
            "released_json_vs_hf_released_loss_maxabs_norm": float(max(
                abs(a - b) for a, b in zip(minmax(g[(name, "released_loss")][rng]).tolist(),
                                           [e["grad_norm_1" if name == "student" else "grad_norm_2"]
                                            for e in rel_grads[i + 1]["grad_diff"]]))),
            # how much the loss positions change the (candidate-normalised) norms
            "leaf_loss_vs_released_loss_maxabs_norm": float(
                (minmax(g[(name, "leaf_loss")][cand]) - minmax(g[(name, "released_loss")][cand])).abs().max()),
        }
    grad_checks.append(row_grad)

    # --- the released flags: their own masking function on their own gradient file
    try:
        info = REL.get_tokens_info(rel_grads[i + 1]["grad_diff"], row["instruction"])
        rel_flags[i] = {rng[k] for k, t in enumerate(info) if t["masked"]}
    except Exception as e:  # the remove script skips such a sample (remove_confounding_tokens_math.py:135-139)
        per_row.setdefault(i, {})["released_skipped"] = str(e)[:120]
    # the unpatched qwen range (includes "user", "\n"): its normalisation, with the two tokens then dropped
    un = rel_grads_unpatched[i + 1]["grad_diff"]
    try:
        info_un = REL.get_tokens_info(un[2:], row["instruction"])
        rel_flags_unpatched_fixed[i] = {rng[k] for k, t in enumerate(info_un) if t["masked"]}
    except Exception:
        pass
    if rel_grads_fp16 is not None:
        try:
            info16 = REL.get_tokens_info(rel_grads_fp16[i + 1]["grad_diff"], row["instruction"])
            rel_flags_fp16[i] = {rng[k] for k, t in enumerate(info16) if t["masked"]}
        except Exception:
            pass
    for m in leaf:
        leaf_flags[m][i] = {t["index"] for t in leaf[m][0][i]["units"][0]["tokens"] if t["flag"]}

    # --- emulation ladder on leaf's saliency
    def flags(gs, gt, norm_set, q_set, rule, mask_set):
        ns, nt = minmax(gs[norm_set]), minmax(gt[norm_set])
        d = minmax(nt - ns)
        dmap = dict(zip(norm_set, d.tolist()))
        dq = torch.tensor([dmap[k] for k in q_set])
        if rule == "quantile":
            m = flag("quantile", dq, ThresholdContext(quantile=P))
            chosen = {k for k, f in zip(q_set, m.mask.tolist()) if f}
            return chosen & set(mask_set)
        if bool(dq.max() == dq.min()):
            return set()
        s = sorted(dq.tolist())
        tau = min(s[min(int(P * len(s)), len(s) - 1)], 0.5)
        return {k for k in mask_set if dmap[k] <= tau}

    leaf_s, leaf_t = leaf["released"][1][f"{i}.0.student"].double(), leaf["released"][1][f"{i}.0.teacher"].double()
    rel_s, rel_t = g[("student", "released_loss")], g[("teacher", "released_loss")]
    ladder["S0 leaf --threshold quantile (ceil(p*n) lowest over candidates)"][i] = flags(
        leaf_s, leaf_t, cand, cand, "quantile", cand)
    ladder["S1 +(d) released rule: tau=min(sorted[int(p*n)],0.5), flag <= tau  [= leaf --threshold released]"][i] = \
        flags(leaf_s, leaf_t, cand, cand, "released", cand)
    ladder["S2 +(a) min-max normalisation (both g's and delta) over the whole released range incl. whitespace"][i] = \
        flags(leaf_s, leaf_t, rng, cand, "released", cand)
    ladder["S3 +(b) quantile index over the whole range (n incl. whitespace tokens)"][i] = flags(
        leaf_s, leaf_t, rng, rng, "released", cand)
    ladder["S4 +(c) released loss positions (response + <|im_end|>\\n<|im_start|>assistant\\n)"][i] = flags(
        rel_s, rel_t, rng, rng, "released", cand)
    single["(a) alone: normalise over whole range"][i] = flags(leaf_s, leaf_t, rng, cand, "released", cand)
    single["(b) alone: quantile index over whole range (delta normalised over candidates, ws get delta=nan->skip)"][
        i] = None  # needs delta on whitespace tokens, which only (a) provides: see S2->S3
    single["(c) alone: released loss positions"][i] = flags(rel_s, rel_t, cand, cand, "released", cand)
    single["(a)+(b) without (c)"][i] = ladder["S3 +(b) quantile index over the whole range (n incl. whitespace tokens)"][i]
    single["(c)+(a) without (b)"][i] = flags(rel_s, rel_t, rng, cand, "released", cand)
    single["(c)+(a)+(b) with leaf's quantile rule instead of (d)"][i] = flags(rel_s, rel_t, rng, rng, "quantile", cand)
    # the llama script's range (end_idx -= 15) applied to this data, with everything else released
    llama15[i] = flags(rel_s, rel_t, rng[:-15], rng[:-15], "released", [k for k in cand if k in rng[:-15]])

    d_c = minmax(minmax(leaf_t[cand]) - minmax(leaf_s[cand]))
    d_r = minmax(minmax(leaf_t[rng]) - minmax(leaf_s[rng]))
    d_r_c = torch.tensor([v for k, v in zip(rng, d_r.tolist()) if k in set(cand)], dtype=d_c.dtype)
    gd = sorted(e["grad_diff"] for e in rel_grads[i + 1]["grad_diff"])
    tau_raw = gd[int(len(gd) * P)]
    per_row.setdefault(i, {}).update({
        "delta_maxabs_cand_vs_range_normalisation": float((d_c - d_r_c).abs().max()),
        "ws_delta_values_in_released_range": [round(v, 4) for k, v in zip(rng, d_r.tolist()) if k not in set(cand)],
        "released_tau_raw": tau_raw, "released_tau_capped": tau_raw > 0.5,
        "released_ties_at_tau": sum(v == tau_raw for v in gd) - 1,
        "released_int_pn_range": int(len(gd) * P), "leaf_int_pn_cand": int(len(cand) * P),
        "range_tokens": len(rng), "candidates": len(cand), "whitespace_tokens_in_range": len(ws_in_range),
        "whitespace_token_texts": ws_text,
        "released": sorted(rel_flags.get(i, [])), "leaf_released": sorted(leaf_flags["released"][i]),
        "leaf_quantile": sorted(leaf_flags["quantile"][i]),
        "released_tokens": [text[int(offsets[k, 0]): int(offsets[k, 1])] for k in sorted(rel_flags.get(i, []))],
        "leaf_released_tokens": [text[int(offsets[k, 0]): int(offsets[k, 1])] for k in
                                 sorted(leaf_flags["released"][i])],
    })
    per_row[i]["_ctx"] = (text, offsets, cand_mask, rng, tuple(rec["prompt_span"]))

single = {k: v for k, v in single.items() if None not in v.values()}

# --- counterfactual texts from the released flag set, through leaf's and the released pruning, step by step
def cf_leaf(text, offsets, cand_mask, flagged, span_unit, bridge, pspan):
    full = torch.zeros(len(offsets), dtype=torch.bool)
    full[sorted(flagged)] = True
    if bridge:
        runs = token_spans(full, offsets, text, cand_mask)
    else:  # released runs: consecutive token indices only (remove_confounding_tokens_math.py:73-88)
        runs, cur = [], []
        for k in range(len(offsets)):
            if full[k] and (not cur or k == cur[-1] + 1):
                cur.append(k)
            elif full[k]:
                runs.append(cur)
                cur = [k]
            elif cur:
                runs.append(cur)
                cur = []
        if cur:
            runs.append(cur)
        runs = [(int(offsets[r[0], 0]), int(offsets[r[-1], 1]), r) for r in runs]
    spans = grow_spans(runs, text, offsets, cand_mask, pspan, span_unit)
    base = text[pspan[0]: pspan[1]]
    return [remove_spans(base, [(a - pspan[0], b - pspan[0])]) for a, b, _ in spans]


def cf_released_text(row_i, flagged, newline):
    """The released reconstruction (get_tokens_info's matching + get_masked_instructions_by_runs) on a given flag
    set: grad_diff 0 for flagged tokens and 1 otherwise reproduces the set exactly under their rule."""
    text, offsets, cand_mask, rng, pspan = per_row[row_i]["_ctx"]
    gd = [{"token": e["token"], "grad_diff": 0.0 if rng[k] in flagged else 1.0}
          for k, e in enumerate(rel_grads[row_i + 1]["grad_diff"])]
    info = REL.get_tokens_info(gd, rows[row_i]["instruction"])
    texts, _ = REL.get_masked_instructions_by_runs(info)
    texts = texts or [rows[row_i]["instruction"]]  # remove_confounding_tokens_math.py:142-143 (no "\n" there)
    return texts if newline else [t[:-1] if t.endswith("\n") else t for t in texts]


ref_cf = {i: rel_cf[i] for i in rel_flags}
cf_steps = {}
src = rel_flags  # the released flags, so that only the pruning differs
ctx = lambda i: per_row[i]["_ctx"]
nl = lambda texts: [t + "\n" for t in texts]
cf_steps["K0 leaf pruning (whitespace-bridged runs, --span-unit word, remove_spans tidy)"] = {
    i: cf_leaf(*ctx(i)[:3], src[i], "word", True, ctx(i)[4]) for i in src}
cf_steps["K1 +(f) '\\n' appended to every counterfactual"] = {
    i: nl(cf_leaf(*ctx(i)[:3], src[i], "word", True, ctx(i)[4])) for i in src}
cf_steps["K2 +span-unit token (no growth to whole words)"] = {
    i: nl(cf_leaf(*ctx(i)[:3], src[i], "token", True, ctx(i)[4])) for i in src}
cf_steps["K3 +(e) runs = consecutive tokens only (whitespace tokens break a run)"] = {
    i: nl(cf_leaf(*ctx(i)[:3], src[i], "token", False, ctx(i)[4])) for i in src}
cf_steps["K4 +released text rebuild (each removed token takes its leading whitespace; no tidy-up)"] = {
    i: cf_released_text(i, src[i], True) for i in src}
cf_single = {
    "K1 + (e) alone (word growth kept)": {i: nl(cf_leaf(*ctx(i)[:3], src[i], "word", False, ctx(i)[4])) for i in src},
    "K1 + released rebuild, keeping (e)-bridging: n/a": None,
}
cf_single = {k: v for k, v in cf_single.items() if v is not None}
# the empty-flag fallback: released emits the original instruction (+ nothing) when no run exists
leaf_cf = {m: {i: [c["prompt"] for c in leaf[m][0][i]["units"][0]["counterfactuals"]] for i in leaf[m][0]}
           for m in leaf}


def fmt(d):
    return {k: agreement(v, rel_flags) for k, v in d.items()}


results = {
    "setup": {
        "rows": len(rows), "data": "/work/shared/data/gsm-plus/distraction_dev.jsonl rows 0-15 (question->instruction, "
                                   "solution->output)",
        "teacher": "leaf build_tiny_model llama size=small seed=1, SmolLM2-135M-Instruct tokenizer + ChatML template",
        "student": "leaf build_tiny_model llama size=tiny seed=2, same tokenizer",
        "quantile": P,
        "released_rows_with_flags": len(rel_flags), "released_counterfactuals": sum(len(v) for v in ref_cf.values()),
        "chat_template_identical_prefix": True,
    },
    "flag_agreement_vs_released": {
        "leaf --threshold released": agreement(leaf_flags["released"], rel_flags),
        "leaf --threshold quantile": agreement(leaf_flags["quantile"], rel_flags),
    },
    "counterfactuals_vs_released": {
        "leaf --threshold released (as emitted)": cf_match(leaf_cf["released"], ref_cf),
        "leaf --threshold quantile (as emitted)": cf_match(leaf_cf["quantile"], ref_cf),
        "leaf --threshold released, '\\n' appended": cf_match(
            {i: [t + "\n" for t in v] for i, v in leaf_cf["released"].items()}, ref_cf),
    },
    "gradients": {
        "loss_positions_row0": loss_positions_example,
        "max_over_rows": {name: {k: max(r[name][k] for r in grad_checks) for k in grad_checks[0][name]}
                          for name in ("student", "teacher")},
    },
    "emulation_ladder_cumulative": fmt(ladder),
    "emulation_single_factors_on_leaf_released": fmt(single),
    "cf_ladder_from_released_flags": {k: cf_match(v, ref_cf) for k, v in cf_steps.items()},
    "cf_single_from_released_flags": {k: cf_match(v, ref_cf) for k, v in cf_single.items()},
    "extra": {
        "unpatched_qwen_range (normalisation incl. 'user','\\n'; P3 effect) vs patched released":
            agreement(rel_flags_unpatched_fixed, rel_flags),
        "llama_script_range (end_idx -= 15) vs released (qwen+P3)": agreement(llama15, rel_flags),
        "released run in float16 (the released dtype) vs released in float32 (PATCH P1)":
            agreement(rel_flags_fp16, rel_flags) if rel_flags_fp16 else None,
        "leaf --threshold released (float32) vs released run in float16":
            agreement(leaf_flags["released"], rel_flags_fp16) if rel_flags_fp16 else None,
        "leaf --threshold released vs leaf --threshold quantile": agreement(leaf_flags["quantile"],
                                                                          leaf_flags["released"]),
    },
    "summary_of_thresholds": {
        "rows_where_0.5_cap_binds": sum(r.get("released_tau_capped", False) for r in per_row.values()),
        "rows_with_ties_at_tau": sum(r.get("released_ties_at_tau", 0) > 0 for r in per_row.values()),
        "rows_where_int(p*n)_differs_range_vs_candidates": sum(
            r["released_int_pn_range"] != r["leaf_int_pn_cand"] for r in per_row.values()),
        "max_delta_change_from_(a)": max(r["delta_maxabs_cand_vs_range_normalisation"] for r in per_row.values()),
    },
    "per_row": {i: {k: v for k, v in r.items() if k != "_ctx"} for i, r in per_row.items()},
}
json.dump(results, open(f"{ROOT}/results.json", "w"), indent=1, ensure_ascii=False)
print(json.dumps({k: v for k, v in results.items() if k != "per_row"}, indent=1, ensure_ascii=False))
