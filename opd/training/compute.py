"""Compute accounting shared by every method (docs/mini_world.md's convention).

A model evaluation is one transformer forward on one sample; a CFG step counts 2 (conditional
and unconditional branches), a backward pass counts 2 more per forward it differentiates, and
teacher or reference forwards count like any other. Wall seconds are accumulated separately so
that resumed runs keep an honest total.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any


@dataclasses.dataclass
class ComputeCounter:
    """Running totals of samples generated, model evaluations and wall seconds."""

    samples: int = 0
    forward_evals: int = 0
    backward_evals: int = 0
    wall_seconds: float = 0.0
    _t0: float | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def model_evals(self) -> int:
        return self.forward_evals + self.backward_evals

    def forward(self, batch: int, guidance_scale: float = 1.0, grad: bool = False) -> None:
        """Count one transformer call on ``batch`` samples (x2 with CFG, +2x if differentiated)."""
        n = batch * (2 if guidance_scale != 1.0 else 1)
        self.forward_evals += n
        if grad:
            self.backward_evals += 2 * n

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self._t0 is not None:
            self.wall_seconds += time.perf_counter() - self._t0
            self._t0 = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "forward_evals": self.forward_evals,
            "backward_evals": self.backward_evals,
            "model_evals": self.model_evals,
            "wall_seconds": round(self.wall_seconds, 3),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComputeCounter:
        return cls(
            samples=int(data.get("samples", 0)),
            forward_evals=int(data.get("forward_evals", 0)),
            backward_evals=int(data.get("backward_evals", 0)),
            wall_seconds=float(data.get("wall_seconds", 0.0)),
        )
