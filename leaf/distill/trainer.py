"""The transformers Trainer of `leaf distill`, with LeaF's loss (`leaf.distill.step.distill_step`) in place of the
language-modelling one; everything else (AdamW, schedule, accumulation, checkpoints, logging to the report_to
integrations, the evaluation loop, DDP/FSDP/DeepSpeed under accelerate launch) is the Trainer's own."""

from __future__ import annotations


import torch
from transformers import Trainer

from leaf.distill.checkpoints import load_checkpoint_weights
from leaf.distill.config import DistillConfig
from leaf.distill.log import window_means
from leaf.distill.losses import get_divergence, lambda_at
from leaf.distill.step import StepTerms, distill_step
from leaf.distill.teacher_cache import TeacherCache


class DistillTrainer(Trainer):
    """Trainer(model=student, ...) plus the teacher (its model, never trained, or a TeacherCache) and the run's
    settings; each forward/backward appends its StepTerms to `terms`, which the log callback drains per step into
    a log.jsonl line and appends to `lines`, whose means the next training log carries to the integrations.
    matched: the --cross-tokenizer vocabulary pair, else None."""

    def __init__(self, *args, distill: DistillConfig, teacher, terms: list[StepTerms], lines: list[dict],
                 matched: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.distill, self.teacher, self.terms, self.lines, self.matched = distill, teacher, terms, lines, matched
        self.divergence = get_divergence(distill.divergence, distill.beta)
        self.eval_sums = torch.zeros(4, dtype=torch.float64)

    def _step(self, model, inputs: dict, **kwargs) -> tuple[torch.Tensor, StepTerms]:
        config = self.distill
        self._place_teacher(inputs["input_ids"].device)
        return distill_step(model, self.teacher, inputs,
                            lam=lambda_at(config.lam, self.state.global_step, self.state.max_steps),
                            divergence=self.divergence, temperature=config.temperature,
                            chunk_size=config.chunk_size, ce_weight=config.ce_weight, matched=self.matched,
                            uld_weight=config.uld_weight, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, terms = self._step(model, inputs)
        self.terms.append(terms)
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """One held-out batch (--eval-data): the loss at the current λ and both terms, without gradients; the
        terms add up, weighted by the samples they average over, into what evaluation_loop reports."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, terms = self._step(model, inputs, score_counterfactuals=True)
        rows = len(inputs["index"])
        with_cf = len(inputs["cf_index"].unique()) if terms.kd_counterfactual is not None else 0
        self.eval_sums += torch.tensor([terms.kd_original * rows, rows, (terms.kd_counterfactual or 0) * with_cf,
                                        with_cf], dtype=torch.float64)
        return loss.detach(), None, None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """The Trainer's loop (eval_loss, timings) plus {prefix}_kd_original and {prefix}_kd_counterfactual: the
        means over the held-out samples (over those with a counterfactual), summed over the processes."""
        self.eval_sums.zero_()
        output = super().evaluation_loop(dataloader, description, prediction_loss_only=prediction_loss_only,
                                         ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        sums = self.eval_sums.to(self.args.device)
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        original, rows, counterfactual, with_cf = sums.tolist()
        output.metrics[f"{metric_key_prefix}_kd_original"] = original / max(rows, 1)
        if with_cf:  # no None among the metrics: the integrations log numbers only
            output.metrics[f"{metric_key_prefix}_kd_counterfactual"] = counterfactual / with_cf
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """A training log (every --logging-steps) also carries leaf's terms, averaged over the steps since the
        last one, so that every report_to integration receives them."""
        if "loss" in logs and self.lines:
            logs.update(window_means(self.lines))
            self.lines.clear()
        super().log(logs, start_time)

    def _place_teacher(self, device: torch.device) -> None:
        """An online teacher follows the batch to its device (the Trainer places only the student), unless
        --teacher-device-map spread it over the GPUs."""
        if isinstance(self.teacher, TeacherCache) or self.distill.teacher_device_map is not None:
            return
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """The student's weights (or its LoRA adapter) from a checkpoint through from_pretrained, which applies
        the key renames transformers makes on load (GPT-NeoX's embed_out -> lm_head, ...); the Trainer's own loader
        reads the file's keys as saved and silently skips a renamed one. Every key must match: a missing or
        unexpected one is an error, never a warning. FSDP / DeepSpeed checkpoints keep the Trainer's loader."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_checkpoint_weights(model if model is not None else self.model, resume_from_checkpoint)
