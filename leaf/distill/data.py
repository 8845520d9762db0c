"""What `leaf distill` trains on: originals with their counterfactuals, tokenized, paired and batched.

Two sources: the output folder of `leaf analyze` (samples.jsonl), or any dataset `leaf analyze` reads plus a
counterfactual file in the same format, whose rows carry the id of their original and its pruned prompt and/or
response:

    {"id": "7", "question": "Tom has 3 apples. How many ...", "solution": "..."}        # data.jsonl
    {"id": "7", "question": "Tom has 3 apples. How many ...", "solution": "..."}        # counterfactuals.jsonl

A counterfactual row whose prompt differs from its original's is an instruction counterfactual (modes instr and
instr+resp); one whose response differs (too) is a response counterfactual (mode instr+resp).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from leaf.errors import LeafError
from leaf.records import AnalysedSample, AnalysedUnit, Counterfactual

LEVELS = {"kd": (), "instr": ("instruction",), "instr+resp": ("instruction", "response")}


@dataclass
class Example:
    """One original and the counterfactuals the mode allows, already rendered and tokenized; levels[j] is
    counterfactual j's level (instruction or response)."""

    input_ids: list[int]
    response_mask: list[bool]
    counterfactuals: list[tuple[list[int], list[bool]]]
    levels: list[str] = field(default_factory=list)
    cross: list[dict] | None = None   # --cross-tokenizer: the teacher's view of the original (0) and cf j (1 + j)

    def by_level(self) -> dict[str, list[int]]:
        """Indices of the counterfactuals of each level present, in order."""
        out: dict[str, list[int]] = {}
        for j, level in enumerate(self.levels):
            out.setdefault(level, []).append(j)
        return out


def read_analyze_output(path: Path) -> list[AnalysedSample]:
    """The analysed samples (status ok) of a finished `leaf analyze` folder (or its samples.jsonl)."""
    from leaf.records import read_samples, samples_file

    records = read_samples(path, analysed_only=True)
    if not records:
        raise LeafError(f"{samples_file(path)} holds no analysed samples (status ok): nothing to distil on.")
    return records


def read_dataset(data: Path, counterfactuals: Path | None, *, prompt_field: str | None = None,
                 response_field: str | None = None, id_field: str = "id") -> tuple[list[AnalysedSample], int]:
    """Analysed-sample records from a plain dataset and (optionally) a counterfactual file keyed by id.
    Returns the records and how many counterfactual rows were dropped as identical to their original."""
    from leaf.data import load_records, to_samples

    fields = dict(prompt_field=prompt_field, response_field=response_field, id_field=id_field)
    originals = to_samples(load_records(data), **fields)
    by_id: dict[str, AnalysedSample] = {}
    for sample in originals:
        if sample.id in by_id:
            raise LeafError(f"{data}: id {sample.id!r} appears twice. Counterfactuals are matched to originals by "
                            f"id, so ids must be unique (field {id_field!r}, or set --id-field).")
        by_id[sample.id] = AnalysedSample(row=len(by_id), id=sample.id, status="ok", prompt=sample.prompt,
                                          response=sample.response, units=[])
    identical = 0
    if counterfactuals is not None:
        rows = load_records(counterfactuals)
        if any(row.get(id_field) is None for row in rows):
            raise LeafError(f"{counterfactuals}: every counterfactual row needs the id of its original in field "
                            f"{id_field!r} (set --id-field if it is named differently).")
        cfs = to_samples(rows, **fields)
        unknown = sorted({cf.id for cf in cfs if cf.id not in by_id})
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5
                                                               else "")
            raise LeafError(f"{counterfactuals}: {len(unknown)} counterfactual id(s) match no original in {data}: "
                            f"{shown}. Each row's {id_field!r} must be the id of the sample it was pruned from.")
        for cf in cfs:
            record = by_id[cf.id]
            prompt_changed, response_changed = cf.prompt != record.prompt, cf.response != record.response
            if not (prompt_changed or response_changed):
                identical += 1
                continue
            level = "response" if response_changed else "instruction"
            record.units.append(AnalysedUnit(level, counterfactuals=[Counterfactual(
                prompt=cf.prompt if prompt_changed else None, response=cf.response if response_changed else None)]))
    return list(by_id.values()), identical


def with_end_of_turn(ids: list[int], mask: list[bool], stops: set[int]) -> list[bool]:
    """The response mask extended over the template tokens after the response up to its end-of-turn token, so that
    the student is also taught where to stop (without it a distilled student forgets to end its turn)."""
    if not any(mask):
        return mask
    last = max(i for i, m in enumerate(mask) if m)
    end = next((j for j in range(last + 1, len(ids)) if ids[j] in stops), None)
    if end is None:
        return mask
    return [m or last < i <= end for i, m in enumerate(mask)]


def build_examples(records: list[AnalysedSample], tokenizer, mode: str, max_length: int | None,
                   teacher_tokenizer=None, teacher_max_length: int | None = None, template=None,
                   what: str = "the data") -> tuple[list[Example], int]:
    """Render and tokenize originals and their counterfactuals with the student's tokenizer; returns the examples
    and how many samples were dropped as too long. With a teacher tokenizer (--cross-tokenizer), each also gets
    the teacher's own rendering and the alignment of the two (leaf.distill.cross_tokenizer.cross_view).

    template: the leaf.rendering.RecordedTemplate of an analyze folder: each original's text and spans are the
    ones analyze recorded (LeafError when this tokenizer no longer gives them), its counterfactuals rendered under
    the same template; None (a plain dataset): the student's own rendering."""
    from leaf.distill.cross_tokenizer import cross_view
    from leaf.end_of_turn import stop_ids
    from leaf.hooks import encode_text
    from leaf.rendering import own_rendering

    stops = set(stop_ids(tokenizer))
    t_stops = set(stop_ids(teacher_tokenizer)) if teacher_tokenizer is not None else set()

    def encode(prompt: str, response: str, prefix: str, view=None):
        """(ids, response mask) for the student, and the cross view (or None; False when the teacher's is too long).
        prefix: the answer prefix analyze rendered before the response (code), in the context, not in the loss.
        view: the student's rendering when known (analyze's record), else rendered here."""
        if view is None:
            view = (template.renderer(tokenizer, prefix).render("student", prompt, response) if template is not None
                    else own_rendering(tokenizer, prompt, response, prefix))
        enc = encode_text(tokenizer, view.text, view.prompt, view.response)
        ids = enc.input_ids.tolist()
        cross = None
        if teacher_tokenizer is not None:
            t_view = own_rendering(teacher_tokenizer, prompt, response, prefix)
            t_enc = encode_text(teacher_tokenizer, t_view.text, t_view.prompt, t_view.response)
            too_long = teacher_max_length and len(t_enc.input_ids) > teacher_max_length
            cross = False if too_long else cross_view(enc, t_enc, stops, t_stops)
        return ids, with_end_of_turn(ids, enc.response_mask.tolist(), stops), cross

    levels = LEVELS[mode]
    examples, dropped = [], 0
    for record in records:
        prefix = record.answer_prefix or ""
        recorded = template.original(record, tokenizer, what) if template is not None and record.text else None
        ids, mask, cross = encode(record.prompt, record.response, prefix, recorded)
        if (max_length and len(ids) > max_length) or cross is False:
            dropped += 1
            continue
        cfs, cf_levels, crosses = [], [], [cross]
        for level, cf in record.counterfactuals(levels):
            prompt, response = cf.texts(record)
            if not prompt.strip() or not response.strip():
                continue
            cf_ids, cf_mask, cf_cross = encode(prompt, response, prefix)
            if any(cf_mask) and not (max_length and len(cf_ids) > max_length) and cf_cross is not False:
                cfs.append((cf_ids, cf_mask))
                cf_levels.append(level)
                crosses.append(cf_cross)
        examples.append(Example(ids, mask, cfs, cf_levels, crosses if teacher_tokenizer is not None else None))
    return examples, dropped



def _pad(rows: list[list], value, dtype):
    import torch

    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=dtype)
    return out


class PairedData:
    """Originals with their counterfactuals: every counterfactual of a sample is used, in turn.

    Each original appears `rounds` times (the most counterfactuals any sample has at one level, at most
    MAX_ROUNDS); on its r-th appearance it is paired, at each level it has, with that level's counterfactual
    perm[r mod n] (a seeded permutation per sample and level). So an instruction-level and a response-level
    counterfactual never compete for one slot, and over `rounds` appearances every counterfactual is used once
    (the reference code adds every pruned span as its own row); a sample with more than MAX_ROUNDS at one level
    uses MAX_ROUNDS of them. Item index k is (appearance k // n, sample k % n), so one pass over the dataset is
    `rounds` passes over the originals: train by --max-steps.
    """

    MAX_ROUNDS = 16

    def __init__(self, examples: list[Example], seed: int) -> None:
        self.examples, self.seed = examples, seed
        counts = [len(js) for ex in examples for js in ex.by_level().values()]
        self.rounds = min(max(counts, default=1), self.MAX_ROUNDS)

    def __len__(self) -> int:
        return len(self.examples) * self.rounds

    def choices(self, index: int, appearance: int = 0) -> list[int]:
        """The counterfactuals (indices into the example's list) paired with sample `index` on an appearance."""
        out = []
        for level, js in sorted(self.examples[index].by_level().items()):
            order = list(js)
            random.Random(f"{self.seed}:{index}:{level}").shuffle(order)
            out.append(order[appearance % len(order)])
        return out

    def __getitem__(self, item: int) -> dict:
        index, appearance = item % len(self.examples), item // len(self.examples)
        ex, chosen = self.examples[index], self.choices(index, appearance)
        item = {"index": index, "choices": chosen, "ids": ex.input_ids, "mask": ex.response_mask,
                "cfs": [ex.counterfactuals[j] for j in chosen]}
        if ex.cross is not None:
            item["cross"], item["cf_cross"] = ex.cross[0], [ex.cross[1 + j] for j in chosen]
        return item


def _cross_batch(views: list[dict], pad_id: int, prefix: str) -> dict:
    """The teacher's ids of a batch of cross views and their alignment, flattened over the batch: per group its
    row; per side the (row, position) predicting each group's first token and each later token (with its id and
    group). Groups are numbered across the batch."""
    import torch

    out: dict[str, list] = {k: [] for k in ("group_row", "s_first_b", "s_first_p", "t_first_b", "t_first_p",
                                            "s_later_b", "s_later_p", "s_later_tok", "s_later_g",
                                            "t_later_b", "t_later_p", "t_later_tok", "t_later_g")}
    offset = 0
    for row, view in enumerate(views):
        out["group_row"] += [row] * len(view["s_first"])
        for side in ("s", "t"):
            out[f"{side}_first_b"] += [row] * len(view[f"{side}_first"])
            out[f"{side}_first_p"] += view[f"{side}_first"]
            for p, tok, g in view[f"{side}_later"]:
                out[f"{side}_later_b"].append(row)
                out[f"{side}_later_p"].append(p)
                out[f"{side}_later_tok"].append(tok)
                out[f"{side}_later_g"].append(g + offset)
        offset += len(view["s_first"])
    batch = {f"{prefix}x_{k}": torch.tensor(v, dtype=torch.long) for k, v in out.items()}
    batch[f"{prefix}t_input_ids"] = _pad([v["t_ids"] for v in views], pad_id, torch.long)
    batch[f"{prefix}t_attention_mask"] = _pad([[1] * len(v["t_ids"]) for v in views], 0, torch.long)
    return batch


def make_collator(pad_id: int, teacher_pad_id: int | None = None):
    import torch

    def collate(items: list[dict]) -> dict:
        batch = {"index": torch.tensor([it["index"] for it in items], dtype=torch.long),
                 "input_ids": _pad([it["ids"] for it in items], pad_id, torch.long),
                 "attention_mask": _pad([[1] * len(it["ids"]) for it in items], 0, torch.long),
                 "response_mask": _pad([it["mask"] for it in items], False, torch.bool)}
        # counterfactual rows: cf_index[k] is the batch row of the original that row k belongs to
        rows = [(i, j, cf) for i, it in enumerate(items) for j, cf in zip(it["choices"], it["cfs"])]
        if rows:
            batch["cf_index"] = torch.tensor([i for i, _, _ in rows], dtype=torch.long)
            batch["cf_choice"] = torch.tensor([j for _, j, _ in rows], dtype=torch.long)
            batch["cf_input_ids"] = _pad([cf[0] for _, _, cf in rows], pad_id, torch.long)
            batch["cf_attention_mask"] = _pad([[1] * len(cf[0]) for _, _, cf in rows], 0, torch.long)
            batch["cf_response_mask"] = _pad([cf[1] for _, _, cf in rows], False, torch.bool)
        if "cross" in items[0]:
            t_pad = pad_id if teacher_pad_id is None else teacher_pad_id
            batch.update(_cross_batch([it["cross"] for it in items], t_pad, ""))
            views = [view for it in items for view in it["cf_cross"]]
            if views:
                batch.update(_cross_batch(views, t_pad, "cf_"))
        return batch

    return collate


