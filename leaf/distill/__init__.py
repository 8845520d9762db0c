"""Stage 2, `leaf distill`: train the student on the teacher's distributions over original and counterfactual
samples with the hybrid loss (`leaf.distill.losses`)."""

from leaf.distill.run import MODES, DistillConfig, run_distill

__all__ = ["MODES", "DistillConfig", "run_distill"]
