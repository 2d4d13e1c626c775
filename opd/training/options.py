"""The methods' config dataclasses, in a module that imports nothing heavy.

Every method reads its options from one of these (built from the YAML by
:func:`opd.config.build_dataclass`, which also runs its ``validate``). They live apart from the
methods themselves (``opd.training.base``, ``rl``, ``distill``) so that the workflow can check a
config at parse time without importing torch (:mod:`opd.manifest`).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class MethodConfig:
    """Fields shared by every method; subclasses add their own (all validated from YAML)."""

    tasks: list[str] | None = None  # tasks this run trains on; None = every task of the profile
    steps: int = 20  # optimizer steps
    lr: float = 3e-4
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.9
    ema_every: int = 8
    checkpoint_every: int = 10
    prompts_per_task: int = 8
    guidance: float | None = None  # student CFG in rollouts and training (None: profile's)
    eval_guidance: float | None = None  # CFG at evaluation (None: profile's eval guidance)
    num_steps: int | None = None  # rollout steps (None: profile's sampling.num_steps)
    train_steps: int | None = None  # the first k steps are trained (None: num_steps - 1)
    # Train only a window of that many of those steps per optimizer step (rollouts unchanged):
    # "slide" moves it one step later every `window_every` optimizer steps from the noisiest
    # step (MixGRPO), "random" draws that many distinct steps per step and task (Flow-GRPO-Fast).
    train_window: int | None = None
    window_mode: str = "slide"
    window_every: int = 1
    lora_rank: int | None = None
    lora_alpha: float | None = None
    # Module names the student's LoRA adapts (None: model.lora.targets, else the paper's
    # attention projections); e.g. add "ff.net.0.proj", "ff.net.2" and "proj_out" to let a small
    # model's adapter reach its feed-forward layers and output projection.
    lora_targets: list[str] | None = None
    # "matched": train on a no-signal control of each task's reward (0/1 draws at the real
    # reward's batch mean: opd.training.context.MatchedControl), to calibrate what a 0/1 reward's
    # advantages do without information. None: the real reward.
    reward_control: str | None = None
    # The rollouts' last step t_{N-1} -> 0 (the largest, never trained): "sde" takes it with the
    # method's sampler like every other step; "ode" takes the Euler step x - h v (its mean, no
    # noise), so no per-pixel noise of that step lands in the clean sample and its reward.
    # Deterministic samplers (NFT's dpm2m, the ODE) give the same last state either way.
    final_step: str = "sde"

    def validate(self) -> None:
        for name in ("steps", "prompts_per_task", "checkpoint_every", "ema_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.train_window is not None and self.train_window < 1:
            raise ValueError(f"train_window must be >= 1, got {self.train_window}")
        if self.window_mode not in ("slide", "random"):
            raise ValueError(f"window_mode must be 'slide' or 'random', got {self.window_mode!r}")
        if self.window_every < 1:
            raise ValueError(f"window_every must be >= 1, got {self.window_every}")
        if self.reward_control not in (None, "matched"):
            raise ValueError(f"reward_control must be 'matched' or null: {self.reward_control!r}")
        if self.final_step not in ("sde", "ode"):
            raise ValueError(f"final_step must be 'sde' or 'ode', got {self.final_step!r}")


@dataclasses.dataclass
class GRPOConfig(MethodConfig):
    group_size: int = 8
    noise_level: float = 0.7
    clip_range: float = 1e-4
    beta: float = 0.04  # KL to the base model
    adv_clip: float = 5.0
    std_mode: str = "group"  # "group" or "global" (the shipped configs' whole-batch std)
    drop_constant_groups: bool = False  # leave groups of equal rewards out of the loss's mean

    def validate(self) -> None:
        super().validate()
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 for group advantages, got {self.group_size}")
        if self.noise_level <= 0:
            raise ValueError("GRPO needs a stochastic sampler: noise_level must be > 0")
        if self.std_mode not in ("group", "global"):
            raise ValueError(f"std_mode must be 'group' or 'global', got {self.std_mode!r}")


@dataclasses.dataclass
class NFTConfig(MethodConfig):
    group_size: int = 8
    beta_mix: float = 1.0  # b: 1 for one reward, 0.1 for several
    adv_clip: float = 5.0
    noisings: int = 2  # forward noisings per clean sample and step
    # noisings (noisings x trained steps of a step) stacked into one model call: 1 (one call
    # each, the paper's memory) ... 0 (all in one call); results equal up to float summation
    noisings_per_call: int = 1
    reg: float = 1e-4  # ||v_theta - v_ref||^2
    eta_rate: float = 0.001
    eta_max: float = 0.5
    sampler: str = "dpm2m"  # deterministic 2nd-order rollouts
    guidance: float | None = 1.0  # CFG-free
    eval_guidance: float | None = 1.0
    std_mode: str = "group"
    drop_constant_groups: bool = False  # leave groups of equal rewards (r = 0.5) out of the loss

    def validate(self) -> None:
        super().validate()
        if not 0 < self.beta_mix <= 1:
            raise ValueError(f"beta_mix must be in (0, 1], got {self.beta_mix}")
        if self.noisings_per_call < 0:
            raise ValueError(
                f"noisings_per_call must be >= 0 (0: all in one call), got {self.noisings_per_call}"
            )


@dataclasses.dataclass
class OPDConfig(MethodConfig):
    noise_level: float = 0.0  # 0: the ODE objective (paper Eq. 12); > 0: closed-form KL (Eq. 11)
    prompts_per_task: int = 8
    # a task's trained steps stacked into one student call and one teacher call: 1 (one call
    # each, the paper's memory) ... 0 (all in one call); results equal up to float summation
    steps_per_call: int = 1

    def validate(self) -> None:
        super().validate()
        if self.noise_level < 0:
            raise ValueError(f"noise_level must be >= 0, got {self.noise_level}")
        if self.steps_per_call < 0:
            raise ValueError(
                f"steps_per_call must be >= 0 (0: all in one call), got {self.steps_per_call}"
            )


@dataclasses.dataclass
class OPDPPOConfig(OPDConfig):
    noise_level: float = 0.7
    clip_range: float = 0.2
    log_prob: str = "sum"  # "sum": the true density; "mean": Flow-GRPO's element mean

    def validate(self) -> None:
        super().validate()
        if self.noise_level <= 0:
            raise ValueError("the PPO-style estimator needs a stochastic kernel (noise_level > 0)")
        if self.log_prob not in ("sum", "mean"):
            raise ValueError(f"log_prob must be 'sum' or 'mean', got {self.log_prob!r}")


@dataclasses.dataclass
class SFTConfig(MethodConfig):
    samples_per_prompt: int = 1
    noisings: int = 4
