"""DiffusionOPD: on-policy distillation of per-task diffusion RL teachers into one student.

The package holds the sampler (`opd.sampling`), the objectives (`opd.objectives`), the model
interface (`opd.models`), the synthetic mini world (`opd.worlds.mini`), the scorers
(`opd.rewards`), the shared trainer and its algorithm pieces (`opd.training`), and the analyses
and writers used by the Snakemake workflow.
"""

__version__ = "0.1.0"
