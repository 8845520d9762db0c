"""Teacher scores computed once, reused by many student runs (`leaf analyze --teacher-only`, then `--teacher-scores`).

The teacher's per-token gradient sensitivity of one loss depends only on the teacher, the rendered text and the
character span of the loss target, never on the student. A teacher-only pass stores one tensor per (text, target)
key; a later `leaf analyze --teacher-scores DIR --student S` looks them up instead of running the teacher, so a
70B teacher runs once for every student experiment. The folder holds the teacher's tokenizer (for the offsets that
carry its scores onto the student's tokens) and its context length, so the teacher's weights are never loaded again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from leaf.errors import LeafError

KIND = "leaf-teacher-scores"
SCORES, INDEX, TOKENIZER = "teacher_scores.safetensors", "teacher_scores.jsonl", "tokenizer"


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


def score_key(text: str, target: tuple[int, int]) -> str:
    """The store's key of one loss: a digest of the rendered text and the target's character span."""
    return f"{text_digest(text)}:{target[0]}:{target[1]}"


@dataclass
class TeacherScore:
    saliency: "torch.Tensor"  # (T_teacher,) gradient norm per teacher token
    loss: float              # the teacher's mean NLL of the target


class TeacherScores:
    """A teacher-scores folder, opened for lookups. Behaves like the teacher where analyze needs it (tokenizer,
    context length, description) without its weights."""

    def __init__(self, folder: Path | str) -> None:
        from safetensors import safe_open
        from transformers import AutoTokenizer

        self.folder = Path(folder)
        summary_path = self.folder / "summary.json"
        try:
            self.summary = json.loads(summary_path.read_text())
        except (OSError, json.JSONDecodeError):
            self.summary = {}
        if self.summary.get("kind") != KIND or not (self.folder / SCORES).exists():
            raise LeafError(f"{self.folder} is not a finished teacher-scores folder (no {SCORES} and summary.json of "
                            "kind teacher scores). Write one with `leaf analyze --teacher-only --teacher T --data D "
                            f"--output {self.folder}` (add --resume to finish an interrupted one).")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder / TOKENIZER))
        self.max_length = self.summary["teacher_max_length"]
        self.description = {**self.summary["models"]["teacher"], "scores_from": str(self.folder)}
        self.name = self.description["name"]
        self.losses: dict[str, float] = {}
        self.texts: set[str] = set()  # digests of every text the teacher-only pass saw (scored or skipped)
        for line in (self.folder / INDEX).read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            self.texts.add(record["text_sha256"])
            for unit in record.get("units", []):
                self.losses[unit["key"]] = unit["loss"]
        self._file = safe_open(str(self.folder / SCORES), "pt")

    def digest(self) -> str:
        """What a resumed run checks: the scores it started from have not changed."""
        digest = hashlib.sha256((self.folder / "summary.json").read_bytes())
        digest.update((self.folder / INDEX).read_bytes())
        return digest.hexdigest()

    def check_covers(self, texts: list[str], ids: list) -> None:
        """Fail before any work when a text of this run was never seen by the teacher-only pass."""
        for text, sample_id in zip(texts, ids):
            if text_digest(text) not in self.texts:
                raise LeafError(
                    f"The teacher scores in {self.folder} do not cover sample {sample_id!r}: they were computed on "
                    "other text. The teacher-only pass needs the same --data and --template (and the same "
                    "tokenizer's chat template) as this run; --level and --segments must match too.")

    def lookup(self, text: str, target: tuple[int, int], n_tokens: int, sample_id) -> TeacherScore:
        key = score_key(text, target)
        if key not in self.losses:
            raise LeafError(
                f"The teacher scores in {self.folder} have no entry for sample {sample_id!r} (loss span {target}). "
                "They were computed on other text: the teacher-only pass needs the same --data, --template (and the "
                "same tokenizer's chat template), --level and --segments as this run.")
        saliency = self._file.get_tensor(key)
        if saliency.shape[0] != n_tokens:
            raise LeafError(f"The teacher scores in {self.folder} for sample {sample_id!r} cover {saliency.shape[0]} "
                            f"tokens but its tokenizer gives {n_tokens}: the folder's tokenizer/ was changed.")
        return TeacherScore(saliency=saliency, loss=self.losses[key])
