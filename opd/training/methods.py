"""Importing this module registers the built-in methods (teachers' RL, OPD, ablations)."""

from opd.training import distill, rl

__all__ = ["distill", "rl"]
