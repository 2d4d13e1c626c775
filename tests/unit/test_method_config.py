"""Run sections: ``method_defaults`` reach every method and every teacher (the schema's promise)."""

from __future__ import annotations

from opd.config import load_config
from opd.training.loop import resolve_method


def test_method_defaults_reach_teachers_and_runs_and_yield_to_their_own_keys() -> None:
    cfg = load_config("mini")
    defaults = cfg["method_defaults"]
    assert defaults == {"ema_decay": 0.8, "ema_every": 1}  # differ from the dataclass's 0.9 / 8
    for run in ["opd", "multitask_nft", *(f"teacher_{task}" for task in cfg["tasks"])]:
        _, method_cfg, section = resolve_method(cfg, run)
        assert (method_cfg.ema_decay, method_cfg.ema_every) == (0.8, 1), run
        assert section["ema_decay"] == 0.8
    # A teacher's own setting wins over the default; the default still fills the rest.
    cfg["tasks"]["text"]["teacher"]["ema_decay"] = 0.5
    _, method_cfg, _ = resolve_method(cfg, "teacher_text")
    assert (method_cfg.ema_decay, method_cfg.ema_every) == (0.5, 1)
