"""Pretraining split in two jobs (``opd pretrain --stop-at`` then a resume) gives the weights of
an unbroken run, and refuses a state saved under another config."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from opd.cli import main
from opd.config import write_resolved
from opd.training.pretrain import pretrain_base


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.rglob("*.safetensors")):
        out.update({f"{f.relative_to(folder)}:{k}": v for k, v in load_file(f).items()})
    assert out, f"no weights under {folder}"
    return out


@pytest.fixture()
def six_steps(smoke_cfg: dict) -> dict:
    cfg = copy.deepcopy(smoke_cfg)
    cfg["base"]["steps"] = 6
    return cfg


def test_stopped_and_resumed_pretraining_equals_an_unbroken_run(six_steps, tmp_path):
    whole = pretrain_base(six_steps, tmp_path / "whole", progress=False)
    assert whole["resumed_at"] == 0

    # the workflow's two jobs, through the command line
    cfg_file = tmp_path / "config.yaml"
    write_resolved(six_steps, cfg_file)
    state = tmp_path / "split" / "state.pt"
    common = ["pretrain", "--config", str(cfg_file), "--out", str(tmp_path / "split")]
    assert main([*common, "--state", str(state), "--stop-at", "4"]) == 0
    assert state.exists() and not (tmp_path / "split" / "DONE").exists()
    assert main([*common, "--state", str(state)]) == 0
    assert (tmp_path / "split" / "DONE").exists()

    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, differing[:5]
    # the weights did move: a resume that silently restarted from scratch would differ too,
    # but equality with a run that trained is only meaningful if training changed something
    fresh = pretrain_base(
        {**six_steps, "base": {**six_steps["base"], "steps": 1}}, tmp_path / "one", progress=False
    )
    assert fresh["steps"] == 1
    one = _weights(tmp_path / "one")
    assert any(not torch.equal(a[k], one[k]) for k in a)


def test_a_frozen_text_encoder_keeps_its_weights_while_the_transformer_learns(six_steps, tmp_path):
    def run(mode: str, steps: int) -> dict[str, torch.Tensor]:
        cfg = copy.deepcopy(six_steps)
        cfg["base"] |= {"steps": steps, "text_encoder": mode}
        pretrain_base(cfg, tmp_path / f"{mode}{steps}", progress=False)
        return _weights(tmp_path / f"{mode}{steps}")

    def split(w: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        enc = {k: v for k, v in w.items() if k.startswith("text_encoder")}
        return enc, {k: v for k, v in w.items() if k.startswith("transformer")}

    (enc_a, tr_a), (enc_b, tr_b) = split(run("frozen", 1)), split(run("frozen", 4))
    assert enc_a and all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)
    assert any(not torch.equal(tr_a[k], tr_b[k]) for k in tr_a)
    (enc_c, _), (enc_d, _) = split(run("train", 1)), split(run("train", 4))
    assert any(not torch.equal(enc_c[k], enc_d[k]) for k in enc_c)


def test_a_state_saved_under_another_config_is_refused(six_steps, tmp_path):
    state = tmp_path / "state.pt"
    pretrain_base(six_steps, tmp_path / "m", progress=False, state=state, stop_at=2)
    other = copy.deepcopy(six_steps)
    other["base"]["lr"] = 1e-3
    with pytest.raises(ValueError, match="different world/model/base config"):
        pretrain_base(other, tmp_path / "m", progress=False, state=state)
    with pytest.raises(ValueError, match="0 < stop_at < 6"):
        pretrain_base(six_steps, tmp_path / "m", progress=False, state=state, stop_at=6)


@pytest.mark.slow
def test_compiled_pretraining_resumes_like_an_unbroken_run(six_steps, tmp_path):
    """``base.compile``: the split jobs of a compiled run give the compiled unbroken run's
    weights, saved under the plain parameter names, and the run says it was compiled."""
    from opd.models.compile import compiler_works

    if not compiler_works():
        pytest.skip("torch.compile cannot build kernels on this machine")
    cfg = copy.deepcopy(six_steps)
    cfg["base"]["compile"] = True
    whole = pretrain_base(cfg, tmp_path / "whole", progress=False)
    assert whole["compiled"] is True
    state = tmp_path / "state.pt"
    pretrain_base(cfg, tmp_path / "split", progress=False, state=state, stop_at=4)
    pretrain_base(cfg, tmp_path / "split", progress=False, state=state)
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert not any("_orig_mod" in k for k in a)
    assert a.keys() == b.keys()
    assert not [k for k in a if not torch.equal(a[k], b[k])]


def test_compile_falls_back_to_eager_with_a_warning(monkeypatch):
    from opd.models import compile as compiling

    layer = torch.nn.Linear(3, 2)
    assert compiling.maybe_compile(layer, False) is False
    monkeypatch.setattr(compiling, "compiler_works", lambda: False)
    with pytest.warns(RuntimeWarning, match="eager mode"):
        assert compiling.maybe_compile(layer, True) is False
    assert getattr(layer, "_compiled_call_impl", None) is None


def test_a_compiled_module_computes_what_the_eager_one_does():
    """Against a float64 evaluation of the same layer: the compiled float32 output is as close
    to it as the eager float32 output is (kernel fusion changes rounding, nothing else)."""
    from opd.models.compile import compiler_works, maybe_compile

    if not compiler_works():
        pytest.skip("torch.compile cannot build kernels on this machine")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
    x = torch.randn(32, 16)
    ref = copy.deepcopy(net).double()(x.double())
    eager = net(x).detach()
    assert maybe_compile(net, True) is True
    compiled = net(x).detach()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    err_eager = (eager.double() - ref).abs().max().item()
    err_compiled = (compiled.double() - ref).abs().max().item()
    # float32 rounding of a 16 -> 64 -> 8 network: a few ulps of the outputs' scale
    ulp = torch.finfo(torch.float32).eps * ref.abs().max().item()
    assert err_compiled <= max(4 * err_eager, 64 * ulp)
