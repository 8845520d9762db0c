"""Stage 2, `leaf distill`: train the student on the teacher's distributions over original and counterfactual
samples with the hybrid loss (`leaf.distill.losses`); one batch's loss without a Trainer is
`leaf.distill.step.distill_step`."""

from leaf.distill.config import MODES, DistillConfig
from leaf.distill.run import run_distill

__all__ = ["MODES", "DistillConfig", "run_distill"]
