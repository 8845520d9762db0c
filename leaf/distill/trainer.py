"""The transformers Trainer of `leaf distill`, with LeaF's loss (`leaf.distill.step.distill_step`) in place of the
language-modelling one; everything else (AdamW, schedule, accumulation, checkpoints, DDP/FSDP/DeepSpeed under
accelerate launch) is the Trainer's own."""

from __future__ import annotations


import torch
from transformers import Trainer

from leaf.distill.checkpoints import load_checkpoint_weights
from leaf.distill.config import DistillConfig
from leaf.distill.losses import get_divergence, lambda_at
from leaf.distill.step import StepTerms, distill_step
from leaf.distill.teacher_cache import TeacherCache


class DistillTrainer(Trainer):
    """Trainer(model=student, ...) plus the teacher (its model, never trained, or a TeacherCache) and the run's
    settings; each forward/backward appends its StepTerms to `terms`, which the log callback drains per step.
    matched: the --cross-tokenizer vocabulary pair, else None."""

    def __init__(self, *args, distill: DistillConfig, teacher, terms: list[StepTerms],
                 matched: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.distill, self.teacher, self.terms, self.matched = distill, teacher, terms, matched
        self.divergence = get_divergence(distill.divergence, distill.beta)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        config = self.distill
        self._place_teacher(inputs["input_ids"].device)
        loss, terms = distill_step(model, self.teacher, inputs,
                                   lam=lambda_at(config.lam, self.state.global_step, self.state.max_steps),
                                   divergence=self.divergence, temperature=config.temperature,
                                   chunk_size=config.chunk_size, ce_weight=config.ce_weight, matched=self.matched,
                                   uld_weight=config.uld_weight)
        self.terms.append(terms)
        return loss

    def _place_teacher(self, device: torch.device) -> None:
        """An online teacher follows the batch to its device (the Trainer places only the student), unless
        --teacher-device-map spread it over the GPUs."""
        if isinstance(self.teacher, TeacherCache) or self.distill.teacher_device_map is not None:
            return
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """The student's weights from a checkpoint through from_pretrained, which applies the key renames
        transformers makes on load (GPT-NeoX's embed_out -> lm_head, ...); the Trainer's own loader reads the
        file's keys as saved and silently skips a renamed one. Every key must match: a missing or unexpected
        one is an error, never a warning. FSDP / DeepSpeed checkpoints keep the Trainer's loader."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_checkpoint_weights(model if model is not None else self.model, resume_from_checkpoint)
