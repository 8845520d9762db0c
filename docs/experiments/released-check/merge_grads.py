"""Glue (not in the release): run_gradients_* writes one sample_{id}.json per sample, remove_confounding_tokens_*
reads one JSON list of those records (--grads_file). Merge a folder into that list, ordered by sample_id."""
import json, pathlib, sys
folder, out = pathlib.Path(sys.argv[1]), sys.argv[2]
recs = sorted((json.loads(p.read_text()) for p in folder.glob("sample_*.json")), key=lambda r: r["sample_id"])
json.dump(recs, open(out, "w"), ensure_ascii=False)
print(len(recs), "records ->", out)
