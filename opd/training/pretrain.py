"""Pretraining of the mini world's base model: flow matching on the (caption, image) corpus.

The tiny SD3-style transformer and its one-layer CLIP text encoder are trained together from
random weights with the rectified-flow loss ``||v - (eps - x0)||^2`` at logit-normal times (as
SD3), with caption dropout so that classifier-free guidance works. The EMA weights are saved
with ``save_pretrained`` in the mini layout, loadable by ``FlowModel.from_pretrained`` like
SD3.5. The corpus captions are imperfect on purpose (docs/mini_world.md), so the base is mediocre.

Pretraining can stop after ``stop_at`` steps and save its whole state (weights, AdamW moments,
learning-rate schedule, EMA, both random generators, losses); a later call with the same
``state`` file resumes from it and gives the same weights as an unbroken run on the same thread
count. The workflow uses this to run the first part beside scorer training on one thread each and
the rest on both threads once scorer training has ended (``base.split``). With ``base.compile``
the transformer is compiled in place (:func:`opd.models.compile.maybe_compile`; eager mode
where no compiler works).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from opd import calltime
from opd.config import config_hash
from opd.models.base import images_to_unit
from opd.models.compile import maybe_compile
from opd.models.tiny import TinyModelConfig, build_tiny_flow_model
from opd.training.base import keyed_seed
from opd.worlds.mini import TASKS, WorldConfig, all_prompts, build_corpus

_TOKEN = re.compile(r"[A-Z0-9]|[a-z]+|[^\sA-Za-z0-9]")


def tokenize_words(text: str) -> list[str]:
    """The mini tokenizer's pre-tokenisation: lowercase words, single capitals/digits, marks."""
    return _TOKEN.findall(text)


def world_vocabulary(world: Any, captions: list[str]) -> list[str]:
    """Every token of the captions and of every task's prompt sets, sorted."""
    words: set[str] = set()
    texts = list(captions)
    for task in TASKS:  # every split's prompts, validation included
        texts += all_prompts(task, world)
    for text in texts:
        words.update(tokenize_words(text))
    return sorted(words)


def _ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:  # a frozen weight's average is itself (without rounding drift)
                ema[name].mul_(decay).add_(p.detach(), alpha=1 - decay)


def _state_key(profile: dict[str, Any]) -> str:
    """What a saved pretraining state must agree on with the config that resumes it."""
    base = {k: v for k, v in profile["base"].items() if k != "split"}
    return config_hash({"base": base, "world": profile["world"], "model": profile["model"]})


def _save_state(path: Path, step: int, seconds: float, **parts: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"step": step, "seconds": seconds, **parts}, tmp)
    tmp.replace(path)  # atomic: an interrupted save never leaves a half-written state


def pretrain_base(
    profile: dict[str, Any],
    out_dir: Path,
    progress: bool = True,
    *,
    state: Path | None = None,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Build the corpus, train the base model, save it under ``out_dir``; returns a summary.

    With ``stop_at``, stop after that many steps and save the state to ``state`` instead of the
    model; without it, resume from ``state`` when that file exists.
    """
    t_start = time.perf_counter()
    base = profile["base"]
    seed = int(base.get("seed", 0))
    world = WorldConfig.from_dict(profile["world"].get("params", {}))
    images, captions = build_corpus(int(profile["world"]["corpus_size"]), seed, world)
    vocab = world_vocabulary(world, list(captions))
    tiny = dict(profile["model"].get("tiny", {}))
    mcfg = TinyModelConfig(resolution=world.resolution, **tiny)
    model = build_tiny_flow_model(mcfg, vocab, seed=seed)
    # base.text_encoder: "frozen" keeps the encoder's random weights (a stand-in for SD3's frozen
    # pretrained encoders): trained on confused captions it merges the partners' embeddings.
    train_encoder = base.get("text_encoder", "train") == "train"
    model.set_trainable("base", text_encoder=train_encoder)
    # base.compile: the transformer's training step through torch.compile (docs/PERFORMANCE.md)
    compiled = maybe_compile(model.transformer, bool(base.get("compile", False)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(base["lr"]), weight_decay=0.0)
    steps, batch = int(base["steps"]), int(base["batch_size"])
    if stop_at is not None and (state is None or not 0 < stop_at < steps):
        raise ValueError(f"stop_at={stop_at} needs a state path and 0 < stop_at < {steps} steps")
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=float(base["lr"]), total_steps=steps, pct_start=0.05
    )
    ema = {n: p.detach().clone() for n, p in model.named_parameters()}
    x_all = images_to_unit(images)
    rng = np.random.default_rng(keyed_seed(seed, "pretrain"))
    gen = torch.Generator().manual_seed(keyed_seed(seed, "pretrain-noise") % (2**62))
    dropout = float(base.get("caption_dropout", 0.1))
    losses: list[float] = []
    start, before = 0, 0.0
    if stop_at is None and state is not None and Path(state).exists():
        saved = torch.load(state, map_location="cpu", weights_only=False)
        if saved["key"] != _state_key(profile):
            raise ValueError(
                f"{state} was saved under a different world/model/base config; delete it"
            )
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(saved["params"][name])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        ema = saved["ema"]
        rng.bit_generator.state = saved["rng"]
        gen.set_state(saved["gen"])
        losses, start, before = list(saved["losses"]), int(saved["step"]), float(saved["seconds"])
    end = steps if stop_at is None else stop_at
    bar = tqdm(
        range(start, end),
        desc="pretrain",
        initial=start,  # a split run's bars read 0 -> at and at -> steps, both of steps
        total=steps,
        disable=not progress,
        leave=False,
    )
    for _step in bar:
        idx = rng.integers(0, len(x_all), size=batch)
        x0 = x_all[idx]
        caps = ["" if rng.random() < dropout else str(captions[i]) for i in idx]
        t = torch.sigmoid(torch.randn(batch, generator=gen))  # logit-normal(0, 1), as SD3
        eps = torch.randn(x0.shape, generator=gen)
        tb = t.view(-1, 1, 1, 1)
        xt = (1 - tb) * x0 + tb * eps
        embeds = model.encode_prompts(caps, grad=train_encoder)
        v = model.velocity(xt, t, embeds, adapter="base")
        loss = ((v - (eps - x0)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        with calltime.timed("backward"):
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        _ema_update(ema, model, float(base.get("ema_decay", 0.995)))
        losses.append(float(loss.detach()))
        if _step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    seconds = before + time.perf_counter() - t_start
    if stop_at is not None:
        assert state is not None
        _save_state(
            Path(state),
            stop_at,
            seconds,
            key=_state_key(profile),
            params={n: p.detach().clone() for n, p in model.named_parameters()},
            opt=opt.state_dict(),
            sched=sched.state_dict(),
            ema=ema,
            rng=rng.bit_generator.state,
            gen=gen.get_state(),
            losses=losses,
        )
        return {"stopped_at": stop_at, "steps": steps, "state": str(state), "seconds": seconds}
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(ema[name])
    model.set_trainable(None)
    model.clear_prompt_cache()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    summary = {
        "steps": steps,
        "batch_size": batch,
        "final_loss": float(np.mean(losses[-50:])),
        "corpus_size": len(x_all),
        "vocab_size": len(vocab),
        "seconds": round(seconds, 1),
        "resumed_at": start,
        "compiled": compiled,
        "world_version": profile["world"].get("version"),
    }
    (out_dir / "pretrain.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out_dir / "DONE").write_text("ok\n")
    return summary
