"""The README's Table 1 is the reference run's (``benchmarks/reference/mini/table1.csv``), as
``benchmarks/readme_table.py`` renders it: replacing the reference without rewriting the README's
block fails here."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tests.benchmark_run import load_script

REPO = Path(__file__).resolve().parents[2]
readme_table = load_script(REPO / "benchmarks/readme_table.py")


def test_the_readme_shows_the_reference_table_1() -> None:
    block = readme_table.readme_block((REPO / "README.md").read_text(encoding="utf-8"))
    assert block == readme_table.render(readme_table.REFERENCE)


def test_every_table_1_row_and_value_of_the_reference_is_in_the_block() -> None:
    frame = pd.read_csv(readme_table.REFERENCE)
    lines = readme_table.render(readme_table.REFERENCE).splitlines()[2:]
    assert [line.split(" | ")[0].removeprefix("| ") for line in lines] == list(frame["row"])
    opd = next(line for line in lines if line.startswith("| opd |"))
    row = frame.set_index("row").loc["opd"]
    assert f"{row['compose_mean']:.3f} ± {row['compose_std']:.3f}" in opd


def test_the_readme_embeds_the_reference_figure() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "](benchmarks/reference/mini/recovery.png)" in text
    assert (REPO / "benchmarks/reference/mini/recovery.png").stat().st_size > 10_000
