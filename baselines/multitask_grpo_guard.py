"""Multi-task RL with GRPO-Guard: one model, task batches alternating round-robin.

Each optimizer step draws one task's prompts (the same curriculum as DiffusionOPD) and scores
them with that task's own reward. Default budget: at least the teachers' plus OPD's compute.
"""

from baselines._configs import MultitaskGRPOGuardConfig
from opd.registry import METHODS
from opd.training.rl import GRPOGuard


@METHODS.register("multitask_grpo_guard")
class MultitaskGRPOGuard(GRPOGuard):
    Config = MultitaskGRPOGuardConfig
