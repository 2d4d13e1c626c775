"""The one shared training loop: student adapter, optimizer, EMA, checkpoints, logs, resume.

``train_run`` runs a :class:`Trainer`: it builds the run context (base model, tasks, rewards,
frozen teachers as named adapters), instantiates the registered method, resumes from the last
complete checkpoint if there is one (refusing a checkpoint written under another config unless
asked), and then runs optimizer steps with a progress bar. Every ``checkpoint_every`` steps and
at the end it writes an atomic checkpoint with the student, EMA and optimizer state, the
method's extra state and the compute counters, and appends the step metrics to ``metrics.csv``
(rows past the resumed step are dropped first, so a resumed run's log equals an uninterrupted
one's).

Integrity: each checkpoint's manifest also records the size and SHA-256 of ``metrics.csv`` as it
stood when the checkpoint was written; on resume the log must still start with exactly those
bytes (else :class:`~opd.training.checkpoint.CheckpointError` names the file), and
:func:`verify_run_log` checks a finished run's log the same way. A NaN or Inf in a logged loss,
reward or gradient norm stops the run with :class:`NonFiniteError` naming the step (1-based,
as in ``metrics.csv`` and the checkpoint names) and the component, before that step's update,
log rows or checkpoint: the last good checkpoint is left as it was.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from opd.config import config_hash, resolve_method
from opd.faults import maybe_fail
from opd.training import checkpoint as ckpt
from opd.training.base import (
    STUDENT,
    RunContext,
    keyed_seed,
    lora_settings,
)
from opd.training.compute import ComputeCounter
from opd.training.context import build_context

METRIC_FIELDS = ["step", "stage", "task", "metric", "value"]
METRICS_LOG = "metrics.csv"


class NonFiniteError(FloatingPointError):
    """A NaN or Inf in a loss, reward or gradient; the message names the step and component."""


class EMA:
    """Exponential moving average of the trainable adapter, updated every ``every`` steps."""

    def __init__(self, params: dict[str, torch.Tensor], decay: float, every: int) -> None:
        self.decay, self.every = decay, every
        self.shadow = {k: v.detach().clone() for k, v in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, torch.Tensor], iteration: int) -> None:
        if (iteration + 1) % self.every:
            return
        for k, v in params.items():
            self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)


def _named_trainable(model: Any, adapter: str) -> dict[str, torch.nn.Parameter]:
    return dict(model.adapter_named_parameters(adapter))


def init_distributed() -> tuple[int, int]:
    """(rank, world size) of this process; joins the process group that ``accelerate launch``
    or ``torchrun`` describe in the environment (gloo on CPU, nccl on CUDA)."""
    import os

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if torch.cuda.is_available():  # one GPU per process: "cuda" then means this process's GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _all_reduce_mean(grads: list[torch.Tensor | None], world_size: int) -> None:
    """Average gradients over the data-parallel processes (each holds a shard's mean)."""
    import torch.distributed as dist

    for g in grads:
        if g is not None:
            dist.all_reduce(g, op=dist.ReduceOp.SUM)
            g.div_(world_size)


def _check_finite(name: str, value: float, step: int) -> None:
    if not math.isfinite(value):
        raise NonFiniteError(f"non-finite {name} ({value}) at step {step}")


def _log_record(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of the training log as it stands (stored in every checkpoint)."""
    data = path.read_bytes() if path.exists() else b""
    return {"file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _check_log(path: Path, record: dict[str, Any], checkpoint: Path, exact: bool) -> bytes:
    """The log's bytes after checking that it starts with (``exact``: equals) the recorded ones."""
    data = path.read_bytes() if path.exists() else b""
    n = int(record["bytes"])
    problem = None
    if not path.exists() and n:
        problem = "is missing"
    elif len(data) < n:
        problem = f"is truncated ({len(data)} bytes, {n} recorded)"
    elif hashlib.sha256(data[:n]).hexdigest() != record["sha256"]:
        problem = "was altered (checksum mismatch)"
    elif exact and len(data) != n:
        problem = f"has {len(data) - n} bytes past the final checkpoint's record"
    if problem:
        raise ckpt.CheckpointError(
            f"training log {path} {problem}: it does not match the record in "
            f"{checkpoint / ckpt.MANIFEST}; restore the file, or remove the run folder to "
            "start the run over"
        )
    return data


def _restore_log(path: Path, manifest: dict[str, Any], checkpoint: Path) -> None:
    """Verify the log against the resumed checkpoint and drop rows of later steps."""
    record = manifest.get("metrics_log")
    if record is None:  # a checkpoint written before logs were recorded
        _truncate_metrics(path, int(manifest["step"]))
        return
    data = _check_log(path, record, checkpoint, exact=False)
    if len(data) > int(record["bytes"]):  # rows of steps after the checkpoint: recomputed
        with path.open("r+b") as fh:
            fh.truncate(int(record["bytes"]))


def verify_run_log(run_dir: Path) -> Path | None:
    """Check a run folder's ``metrics.csv`` against its latest checkpoint's record.

    Returns the log's path (``None`` for a run without log nor record); raises
    :class:`~opd.training.checkpoint.CheckpointError` naming the file if it is missing,
    truncated or altered.
    """
    run_dir = Path(run_dir)
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    path = run_dir / METRICS_LOG
    if latest is None:
        if path.exists():
            raise ckpt.CheckpointError(f"training log {path} has no checkpoint to check it by")
        return None
    record = ckpt.read_manifest(latest).get("metrics_log")
    if record is None:
        return path if path.exists() else None
    _check_log(path, record, latest, exact=True)
    return path if path.exists() else None


def _append_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop logged rows of steps after ``last_step`` (they will be recomputed)."""
    if not path.exists():
        return
    with path.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= last_step]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _set_aside(out_dir: Path, old_hash: str) -> None:
    """Move a run folder's outputs of another configuration into ``stale-<old_hash>/``."""
    stale = out_dir / f"stale-{old_hash}"
    stale.mkdir(exist_ok=True)
    for name in ("checkpoints", METRICS_LOG, "final", "DONE"):
        if (out_dir / name).exists():
            os.replace(out_dir / name, stale / name)
    print(f"[opd] {out_dir}: the configuration changed; earlier outputs moved to {stale}")


class Trainer:
    """One training run, its parts named: :meth:`resume` (from the last complete checkpoint),
    :meth:`step` (one optimizer step), :meth:`log`, :meth:`checkpoint` and :meth:`finish` (the
    final EMA adapter and ``DONE``); :meth:`run` strings them together. Arguments as
    :func:`train_run`'s."""

    def __init__(
        self,
        profile: dict[str, Any],
        run: str,
        seed: int,
        out_dir: Path,
        teachers: dict[str, Path] | None = None,
        *,
        progress: bool = True,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.run_name, self.seed, self.progress = run, seed, progress
        cls, cfg, section = resolve_method(profile, run)  # an unknown run leaves no folder
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.profile, self.cfg, self.section = profile, cfg, section
        self.compute = ComputeCounter()
        rank, world_size = init_distributed()  # first: it picks this process's GPU
        ctx: RunContext = build_context(
            profile, seed, self.compute, teachers or {}, reward_control=cfg.reward_control
        )
        ctx.rank, ctx.world_size = rank, world_size
        self.ctx, self.is_main = ctx, ctx.rank == 0
        torch.manual_seed(keyed_seed(seed, run, "init"))
        self.method = cls(ctx, cfg)
        self.model = model = ctx.model
        if cls.trainable is not None:
            model.add_adapter(STUDENT, **lora_settings(cfg, profile))
            model.set_trainable(STUDENT)
        self.method.setup()
        self.chash = run_config_hash(profile, section, seed)
        self.has_student = STUDENT in model.adapter_names()
        self.params = _named_trainable(model, STUDENT) if self.has_student else {}
        self.opt = (
            torch.optim.AdamW(self.params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            if self.params and cls.trainable
            else None
        )
        self.ema = EMA(self.params, cfg.ema_decay, cfg.ema_every)
        self.ckpt_root = self.out_dir / "checkpoints"
        self.metrics_path = self.out_dir / METRICS_LOG
        self.extra_checkpoints = self.method.checkpoint_steps()

    # ---------------------------------------------------------------- resume
    def resume(
        self, allow_config_change: bool = False, restart_on_config_change: bool = False
    ) -> int:
        """Load the last complete checkpoint, if any, and return the step to continue from;
        a fresh run writes its step-0 checkpoint. ``run.json`` is (re)written either way."""
        latest = ckpt.latest_checkpoint(self.ckpt_root)
        if latest is not None:
            try:
                tensors, manifest = ckpt.load_checkpoint(latest)
            except ckpt.CheckpointError as err:  # never a silent fresh start
                raise ckpt.CheckpointError(
                    f"cannot resume {self.run_name}/seed{self.seed}: {err}. Nothing was "
                    f"overwritten; remove {latest} to resume from the checkpoint before it, or "
                    f"{self.out_dir} to start over"
                ) from None
            if manifest.get("config_hash") != self.chash and restart_on_config_change:
                _set_aside(self.out_dir, str(manifest.get("config_hash")))
                latest = None
            elif manifest.get("config_hash") != self.chash and not allow_config_change:
                raise ckpt.CheckpointError(
                    f"{latest} was written under another configuration "
                    f"(hash {manifest.get('config_hash')} != {self.chash}); pass "
                    "--allow-config-change to resume anyway, or remove the run folder"
                )
        start = 0
        if latest is not None:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(tensors["student"][k])
                for k in self.ema.shadow:
                    self.ema.shadow[k].copy_(tensors["ema"][k])
            if self.opt is not None:
                ckpt.optimizer_from_tensors(
                    self.opt, tensors.get("optimizer", {}), manifest["optimizer"]
                )
            self.method.load_extra_state(tensors.get("extra", {}))
            self.compute = self.ctx.compute = ComputeCounter.from_dict(manifest["compute"])
            start = int(manifest["step"])
            if self.is_main:
                _restore_log(self.metrics_path, manifest, latest)
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        if self.is_main:
            _write_run_info(
                self.out_dir, self.profile, self.run_name, self.section, self.seed, self.chash
            )
        if latest is None:
            self.checkpoint(0)  # the initial student: evaluations start from it
        return start

    # ---------------------------------------------------------------- one step
    def step(self, it: int) -> dict[str, float]:
        """One optimizer step (0-based ``it``): the method's gradients, every model call
        counted, checks for NaN / Inf, clipping, the update, EMA; returns the step's logs."""
        compute, opt, params = self.compute, self.opt, self.params
        compute.start()
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        try:
            with self.model.counting(compute):  # every model call of the step, where it is made
                logs = self.method.step(it)
            maybe_fail("train.step", it + 1)
            if self.ctx.world_size > 1 and params:
                _all_reduce_mean([p.grad for p in params.values()], self.ctx.world_size)
            for key, value in logs.items():
                _check_finite(key, float(value), it + 1)
            if opt is not None:
                clip = torch.nn.utils.clip_grad_norm_(list(params.values()), self.cfg.grad_clip)
                grad_norm = float(clip)
                _check_finite("grad_norm", grad_norm, it + 1)
                logs["grad_norm"] = grad_norm
        except FloatingPointError as err:  # a NaN / Inf loss, reward or gradient
            last = ckpt.latest_checkpoint(self.ckpt_root)
            raise NonFiniteError(
                f"{self.run_name}/seed{self.seed}: {err}; stopped before the update of step "
                f"{it + 1}, the last good checkpoint is {last}"
            ) from err
        if opt is not None:
            opt.step()
            self.ema.update(params, it)
        self.method.after_optimizer_step(it)
        compute.stop()
        return logs

    def log(self, it: int, logs: dict[str, float]) -> None:
        """Append step ``it``'s logs and the compute totals to ``metrics.csv``."""
        stage = self.method.stage_of(it)
        rows = [
            {
                "step": it + 1,
                "stage": stage,
                "task": k.split("/")[0] if "/" in k else "all",
                "metric": k.split("/")[-1],
                "value": f"{float(v):.6g}",
            }
            for k, v in logs.items()
        ]
        rows += [
            {"step": it + 1, "stage": stage, "task": "all", "metric": k, "value": v}
            for k, v in self.compute.as_dict().items()
        ]
        if self.is_main:
            _append_metrics(self.metrics_path, rows)

    # ---------------------------------------------------------------- files
    def due(self, step: int) -> bool:
        """Whether a checkpoint is written after ``step`` steps."""
        return (
            step % self.cfg.checkpoint_every == 0
            or step == self.cfg.steps
            or step in self.extra_checkpoints
        )

    def checkpoint(self, step: int) -> None:
        """The atomic checkpoint after ``step`` steps (rank 0 writes; every process holds the
        same weights)."""
        if not self.is_main:
            return
        groups = {"student": dict(self.params), "ema": dict(self.ema.shadow)}
        opt_meta: dict[str, Any] = {}
        if self.opt is not None:
            groups["optimizer"], opt_meta = ckpt.optimizer_to_tensors(self.opt)
        extra = self.method.extra_state()
        if extra:
            groups["extra"] = extra
        ckpt.save_checkpoint(
            self.ckpt_root,
            step,
            groups,
            {
                "config_hash": self.chash,
                "run": self.run_name,
                "method": self.section["method"],
                "seed": self.seed,
                "stage": self.method.stage_of(max(step - 1, 0)),
                "compute": self.compute.as_dict(),
                "optimizer": opt_meta,
                "adapter": self.model.adapter_info(STUDENT) if self.has_student else None,
                "metrics_log": _log_record(self.metrics_path),
            },
        )

    def finish(self, total: int) -> None:
        """The final EMA weights as a standalone adapter (teachers are loaded so), ``DONE`` and
        the one-line summary of a finished job."""
        if not self.is_main:
            return
        if self.has_student:
            with torch.no_grad():
                live = {k: v.detach().clone() for k, v in self.params.items()}
                for k, p in self.params.items():
                    p.copy_(self.ema.shadow[k])
                self.model.save_adapter(STUDENT, self.out_dir / "final")
                for k, p in self.params.items():
                    p.copy_(live[k])
        (self.out_dir / "DONE").write_text(json.dumps(self.compute.as_dict()) + "\n")
        print(
            f"[opd] {self.run_name}/seed{self.seed}: {total} steps, "
            f"{self.compute.model_evals} model evals, {self.compute.wall_seconds:.1f} s"
        )

    # ---------------------------------------------------------------- all of it
    def run(
        self,
        *,
        allow_config_change: bool = False,
        restart_on_config_change: bool = False,
        max_steps: int | None = None,
    ) -> Path:
        start = self.resume(allow_config_change, restart_on_config_change)
        steps = self.cfg.steps
        total = steps if max_steps is None else min(steps, max_steps)
        bar = tqdm(
            total=total,
            initial=start,
            desc=f"{self.run_name}/seed{self.seed}",
            disable=not self.progress,
            leave=False,
        )
        for it in range(start, total):
            logs = self.step(it)
            self.log(it, logs)
            bar.update(1)
            bar.set_postfix({k: f"{float(v):.3g}" for k, v in list(logs.items())[:3]})
            if self.due(it + 1):
                self.checkpoint(it + 1)
        bar.close()
        if total == steps:
            self.finish(total)
        return self.out_dir


def train_run(
    profile: dict[str, Any],
    run: str,
    seed: int,
    out_dir: Path,
    teachers: dict[str, Path] | None = None,
    *,
    allow_config_change: bool = False,
    restart_on_config_change: bool = False,
    progress: bool = True,
    max_steps: int | None = None,
) -> Path:
    """Train run ``run`` (a method entry of the profile or ``teacher_<task>``) with ``seed``.

    ``teachers`` maps task -> adapter folder of its frozen teacher. ``max_steps`` stops early
    (for tests of resume) without changing the schedule. A run folder whose last checkpoint was
    written under another configuration is an error, unless ``allow_config_change`` (resume from
    it anyway) or ``restart_on_config_change`` (move its checkpoints, metrics and final adapter
    into ``stale-<old hash>/`` and start over: what the workflow does when an edited config makes
    Snakemake rerun the job). Returns ``out_dir``.
    """
    trainer = Trainer(profile, run, seed, out_dir, teachers, progress=progress)
    return trainer.run(
        allow_config_change=allow_config_change,
        restart_on_config_change=restart_on_config_change,
        max_steps=max_steps,
    )


def run_config_hash(profile: dict[str, Any], section: dict[str, Any], seed: int) -> str:
    """The hash that a run's checkpoints and ``run.json`` record: the profile (less where it
    runs and how it reports), the run's resolved section (:func:`resolve_method`) and seed."""
    return config_hash({"profile": _hashable(profile), "run": section, "seed": seed})


def read_run_info(run_dir: Path) -> dict[str, Any] | None:
    """A run folder's ``run.json`` (written when its training starts or resumes: the run name,
    its resolved ``method`` section, seed, config hash and profile), or None without one."""
    path = Path(run_dir) / "run.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _hashable(profile: dict[str, Any]) -> dict[str, Any]:
    """The parts of the profile that change what a run computes (where it runs and how it
    reports excluded: paths, threads, progress bars, warm start)."""
    excluded = {"paths", "threads", "progress", "warm_start"}
    return {k: v for k, v in profile.items() if k not in excluded}


def _write_run_info(
    out_dir: Path, profile: dict, run: str, section: dict, seed: int, chash: str
) -> None:
    import diffusers
    import transformers

    info = {
        "run": run,
        "method": section,
        "seed": seed,
        "config_hash": chash,
        "profile": profile,
        "world_version": profile.get("world", {}).get("version"),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (out_dir / "run.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
