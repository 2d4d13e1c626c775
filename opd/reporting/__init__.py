"""Reporting: the tidy metrics table, Table 1 and the ablation table, and the paper's figures.

``collect`` concatenates the evaluation CSVs and training logs into ``results/<p>/metrics.csv``;
``tables`` and ``figures`` read only that table (and the config). Importing this package is
cheap (the workflow reads :data:`FIGURES` at parse time); pandas and matplotlib load lazily.
"""

#: figures written by ``opd figures`` (each as PNG, PDF and a generated caption ``.rst``)
FIGURES: tuple[str, ...] = (
    "convergence",
    "radar",
    "per_task",
    "distill_ablation",
    "loss_noise",
    "sample_grid",
)

#: tables written by ``opd tables`` (name -> formats; each also gets a caption ``.rst``)
TABLES: dict[str, tuple[str, ...]] = {
    "table1": ("md", "tex", "csv"),
    "ablations": ("md", "csv"),
}

#: the tidy long table's columns, in order
METRIC_COLUMNS: tuple[str, ...] = (
    "profile",
    "world_version",
    "run",
    "method",
    "role",
    "seed",
    "stage",
    "step",
    "samples",
    "forward_evals",
    "backward_evals",
    "model_evals",
    "wall_seconds",
    "task",
    "metric",
    "eval_seed",
    "value",
    "n",
    "se",
)
