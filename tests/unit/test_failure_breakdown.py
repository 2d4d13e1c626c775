"""benchmarks/failure_breakdown.py: right / partner / other shares of text readings, by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmark_run import load_script

REPO = Path(__file__).resolve().parents[2]
failure_breakdown = load_script(REPO / "benchmarks/failure_breakdown.py")


def test_text_breakdown_sorts_readings_into_right_partner_and_other() -> None:
    # AFJLMSTZ: partners A<->F, J<->L, M<->S, T<->Z
    reads = ["A", "F", "?", "", "F", "F", "JL", "LJ"]
    targets = ["A", "A", "A", "A", "F", "Z", "JL", "JL"]
    out = failure_breakdown.text_breakdown(reads, targets, "AFJLMSTZ")
    assert out["images"] == 8
    assert out["shares"]["right"] == pytest.approx(3 / 8)  # A, F (for F), JL
    assert out["shares"]["partner"] == pytest.approx(2 / 8)  # F for A, LJ for JL
    assert out["shares"]["other"] == pytest.approx(3 / 8)  # ?, empty, F for Z
    assert out["right_per_target"] == {"A": 0.25, "F": 1.0, "JL": 0.5, "Z": 0.0}
