"""Pretrain the toy denoiser on ``N((0.5, 0.8), 0.04 I)``, then fine-tune it with any objective.

Every fine-tuning step is :func:`kto_lab.step.objective_step`, the step the Stable Diffusion
trainer runs too; the toy only supplies the denoiser (the MLP), the data and the optimiser.

Toy-specific choices (documented, not in the paper):

- The toy is unconditional, so for Diffusion-KTO's "unrelated pairs" reference point
  (sec. 4.1) rolling the captions by one position is a no-op (``cond=None``): ``z_ref`` is
  computed on the same points with *fresh* noise and timesteps, under ``no_grad``.
- CSFT's caption prefix becomes a class input: 1 = "good", 0 = "bad"; sampled with 1.
- Diffusion-DPO gets random (desirable, undesirable) pairs: the toy has no real pairs.
- Pretraining is the plain denoising loss (eq. 1, lambda(t) = 1); it is computed by the same
  step with ``objective="csft"`` and no class input, which is exactly that loss.
- ``family="flow"`` swaps the DDPM schedule for rectified flow (:class:`kto_lab.schedule.FlowMatchingSchedule`,
  as Stable Diffusion 3): the same MLP predicts the velocity; pretraining uses the velocity error, the
  fine-tunes ``flow_error``'s (default epsilon: the epsilon error of the velocity prediction); the
  step, the objectives and the rest of this file are unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from kto_lab import objectives as O
from kto_lab.config import ConfigError, check_choice, check_positive, check_range, warn_outside
from kto_lab.data.sampler import GammaSampler, check_gamma, sampling_gamma
from kto_lab.schedule import DEFAULT_FLOW_ERROR, FLOW_ERRORS, TIMESTEP_DENSITIES, FlowMatchingSchedule, NoiseSchedule
from kto_lab.reference_point import REFERENCE_POINTS
from kto_lab.step import ObjectiveConfig, flow_only_message, objective_step

from .data import PRETRAIN, FeedbackSet, make_feedback
from .model import ToyDenoiser

Tensor = torch.Tensor

PRETRAINED = "pretrained"
# Figure 6's methods: the pretrained model, the baselines, and Diffusion-KTO with each utility.
# "kto:<utility>" names Diffusion-KTO with a registered utility (kto_lab.objectives.UTILITIES).
FIGURE6_METHODS = (
    PRETRAINED, "sft", "csft", "bce", "dpo",
    "kto:loss_averse", "kto:risk_seeking", "kto:kto", "kto:prospect",
)
# Under flow matching Figure 6 adds DiffusionNFT, defined for flow models only (kto_lab.objectives.FLOW_ONLY).
FIGURE6_FLOW_METHODS = FIGURE6_METHODS + ("nft",)


def figure6_methods(family: str) -> Tuple[str, ...]:
    """The methods Figure 6 runs by default for a schedule family (``ToyConfig.methods=None``)."""
    return FIGURE6_FLOW_METHODS if family == "flow" else FIGURE6_METHODS


# The schedule families and the ToyConfig fields that only one of them reads.
FAMILY_OPTIONS = {"ddpm": ("beta_end",), "flow": ("flow_density", "flow_shift", "flow_sample_steps", "flow_error")}
# Where Diffusion-KTO's beta still matters on the flow toy, per flow_error (3 seeds each, figures/beta_scale/
# ablation_flow_metrics.csv for the default, flow_error_<name>/ for the others; docs/toy.md, "Flow matching"):
# below it every metric equals beta -> 0's (epsilon: beta <= 0.03 diverged), above it KTO no longer avoids P_u.
# A beta outside it gets a one-line warning.
FLOW_BETA_RANGES = {"velocity": (0.1, 30.0), "epsilon": (0.1, 30.0), "x0": (10.0, 1000.0)}

# Fine-tuning fields a method may override (ToyConfig.method_overrides).
OVERRIDABLE = {"beta", "lr", "steps", "gamma", "lambda_desirable", "lambda_undesirable", "reference_point"}


class ToyDivergenceError(FloatingPointError):
    """A fine-tune blew up; the message names the method, the step and what to change."""


def parse_method(method: str) -> Tuple[Optional[str], Optional[str]]:
    """``"kto:loss_averse"`` -> ``("kto", "loss_averse")``; ``"sft"`` -> ``("sft", None)``;
    ``"pretrained"`` -> ``(None, None)``. Unknown names raise, listing the known ones."""
    if method == PRETRAINED:
        return None, None
    objective, _, utility = method.partition(":")
    if objective not in O.OBJECTIVES:
        raise ConfigError(
            f"unknown method {method!r}: objective {objective!r} is not one of {', '.join(O.OBJECTIVES)} "
            f"(or use {PRETRAINED!r}; Diffusion-KTO with a utility is 'kto:<utility>')"
        )
    if objective == "kto":
        utility = utility or "kto"
        try:
            O.get_utility(utility)
        except ValueError as e:
            raise ConfigError(f"method {method!r}: {e}") from None
        return objective, utility
    if utility:
        raise ConfigError(f"method {method!r}: only 'kto' takes a utility (kto:<utility>)")
    return objective, None


@dataclass
class ToyConfig:
    """Everything one toy run needs. Paper values are cited; the rest were chosen by
    measurement on this toy (docs/toy.md)."""

    seed: int = 0
    # --- the world (sec. 6) ---
    n_feedback: int = 1000  # points per class in the binary-feedback table
    n_samples: int = 3500  # sec. 6: "We sample 3500 data points from the trained model"
    # --- the denoiser (tiny-diffusion) ---
    family: str = "ddpm"  # ddpm: the paper's noise-predicting DDPM (sec. 3.1) | flow: rectified flow (SD3), velocity-predicting
    hidden: int = 64
    num_blocks: int = 3
    emb_size: int = 32
    num_timesteps: int = 50  # tiny-diffusion; flow: the model's time input is t * num_timesteps, the DDPM range
    beta_end: float = 0.2  # ddpm only: linear betas 1e-4..beta_end; 0.2 gives abar_T ~ 0.005 (data is not centred)
    flow_density: str = "uniform"  # flow only: timestep density (SD3 sec. 3.1); uniform fits the 2-D toy better than SD3's logit_normal (docs/toy.md)
    flow_shift: float = 1.0  # flow only: SD3's timestep shift (sec. 5.3.2; 3.0 for 1024 px latents; 1 = none)
    flow_sample_steps: int = 200  # flow only: Euler steps of the ODE sampler; 50 would shrink P_d's spread 8 % even with the exact velocity
    flow_error: str = DEFAULT_FLOW_ERROR  # flow only: the fine-tunes' per-sample error, velocity | epsilon | x0 (pretraining: velocity)
    # --- pretraining ---
    pretrain_steps: int = 1500
    pretrain_lr: float = 1e-3
    # --- fine-tuning ---
    steps: int = 600
    lr: float = 1e-4
    batch_size: int = 512
    grad_clip: float = 1.0  # tiny-diffusion
    beta: float = 3.0  # picked by measurement; ties with 1 in figures/ablation*; SD's 5000 (sec. A.1) is for latent errors
    gamma: float = 0.8  # sec. 4.2 / D.2
    reference_point: str = "unrelated"  # sec. 4.1
    lambda_desirable: float = 1.0
    lambda_undesirable: float = 1.0
    divergence_factor: float = 10.0  # stop when the policy's error exceeds this x its first-step error
    methods: Optional[Tuple[str, ...]] = None  # None = the family's Figure 6 methods (flow adds nft); set by validate()
    # Per-method settings that differ from the shared ones, {method: {field: value}}. Defaults:
    # risk-seeking's utility is unbounded on gains and diverges with lambda_U = 1 at every beta
    # and lr we tried (toy_claims.md), so it gets a 10x lighter undesirable weight; DPO's beta
    # multiplies a difference of two pair members (and beta/2), so it gets its own scale.
    method_overrides: Dict[str, Dict[str, float]] = field(
        default_factory=lambda: {"kto:risk_seeking": {"lambda_undesirable": 0.1}, "dpo": {"beta": 300.0},
                                 "nft": {"beta": 1.0}}
    )
    threads: int = 1  # torch threads; a 128-wide MLP is fastest on one core

    def validate(self) -> "ToyConfig":
        """Check every value (one-line ConfigError naming the field); warn about a suspicious beta."""
        self._check_values()
        self._warn_beta_scale()
        return self

    def _check_values(self) -> "ToyConfig":
        for name in ("n_feedback", "n_samples", "hidden", "num_blocks", "emb_size", "num_timesteps",
                     "flow_sample_steps", "batch_size", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be an integer >= 1")
        for name in ("pretrain_steps", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}={value!r} must be an integer >= 0")
        if self.emb_size % 2:
            raise ConfigError(f"emb_size={self.emb_size} must be even")
        check_choice("family", self.family, FAMILY_OPTIONS)
        self._check_family_options()
        check_range("beta_end", self.beta_end, low=0.0, high=1.0, low_open=True, high_open=True)
        check_choice("flow_density", self.flow_density, TIMESTEP_DENSITIES)
        check_choice("flow_error", self.flow_error, FLOW_ERRORS)
        check_positive("flow_shift", self.flow_shift)
        for name in ("pretrain_lr", "lr", "grad_clip", "beta", "lambda_desirable", "lambda_undesirable"):
            check_positive(name, getattr(self, name))
        check_range("divergence_factor", self.divergence_factor, low=1.0, low_open=True)
        check_gamma(self.gamma)
        check_choice("reference_point", self.reference_point, REFERENCE_POINTS)
        if self.methods is None:
            self.methods = figure6_methods(self.family)
        if not self.methods:
            raise ConfigError("methods is empty; known: " + ", ".join(FIGURE6_FLOW_METHODS))
        for m in self.methods:
            if parse_method(m)[0] in O.FLOW_ONLY and self.family != "flow":
                raise ConfigError(f"methods: {flow_only_message(m)}")
        overridable = sorted(OVERRIDABLE)
        for m, kv in (self.method_overrides or {}).items():
            parse_method(m)
            if not isinstance(kv, dict):
                raise ConfigError(f"method_overrides[{m!r}] must be a mapping of field: value, got {kv!r}")
            for k in kv:
                if k not in OVERRIDABLE:
                    raise ConfigError(f"method_overrides[{m!r}]: {k!r} cannot be overridden per method; allowed: {overridable}")
            if kv:  # an empty override is this config itself: checking it again would recurse
                self.for_method(m, check=False)._check_values()
        return self

    def _warn_beta_scale(self) -> None:
        """Flow only: a Diffusion-KTO beta outside FLOW_BETA_RANGE gets a one-line warning."""
        if self.family != "flow":
            return
        betas = {}  # the field to change -> its value, once each
        for m in self.methods:
            if parse_method(m)[0] == "kto":
                own = "beta" in (self.method_overrides or {}).get(m, {})
                betas[f"method_overrides[{m!r}].beta" if own else "beta"] = self.for_method(m, check=False).beta
        for name, beta in betas.items():
            if self.flow_error in FLOW_BETA_RANGES:
                warn_outside(name, beta, *FLOW_BETA_RANGES[self.flow_error],
                             f"for Diffusion-KTO on the flow-matching toy's {self.flow_error} errors (figures/flow_error.md)")

    def for_method(self, method: str, check: bool = True) -> "ToyConfig":
        """This config with ``method_overrides[method]`` applied."""
        kv = (self.method_overrides or {}).get(method, {})
        if not kv:
            return self
        out = dataclasses.replace(self, method_overrides={}, **kv)
        return out._check_values() if check else out

    def _check_family_options(self) -> None:
        """A schedule option of the other family is a mistake, not something to ignore silently."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for family, names in FAMILY_OPTIONS.items():
            for name in names:
                if family != self.family and getattr(self, name) != defaults[name]:
                    raise ConfigError(f"{name}={getattr(self, name)!r} is a {family}-only option, but family={self.family!r}")

    def schedule(self) -> NoiseSchedule | FlowMatchingSchedule:
        if self.family == "flow":
            return FlowMatchingSchedule(self.num_timesteps, shift=self.flow_shift, density=self.flow_density)
        return NoiseSchedule.linear(self.num_timesteps, beta_start=1e-4, beta_end=self.beta_end)

    def objective(self, method: str) -> ObjectiveConfig:
        objective, utility = parse_method(method)
        return ObjectiveConfig(
            objective=objective, utility=utility or "kto", beta=self.beta,
            reference_point=self.reference_point, lambda_desirable=self.lambda_desirable,
            lambda_undesirable=self.lambda_undesirable, flow_error=self.flow_error if self.family == "flow" else None,
        ).validate()


def build_model(cfg: ToyConfig) -> ToyDenoiser:
    return ToyDenoiser(hidden=cfg.hidden, num_blocks=cfg.num_blocks, emb_size=cfg.emb_size)


def _optimise(model, loss, opt, grad_clip):
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()


def pretrain(cfg: ToyConfig, seed: Optional[int] = None) -> ToyDenoiser:
    """Fit the denoiser to fresh draws of the pretraining Gaussian (eq. 1)."""
    seed = cfg.seed if seed is None else seed
    torch.manual_seed(seed)  # model initialisation
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    schedule = cfg.schedule()
    # the plain denoising loss, no class input; under flow matching SD3's rectified-flow (velocity) loss, whatever
    # flow_error the fine-tunes use, so every flow_error starts from the same pretrained model
    plain = ObjectiveConfig(objective="csft", flow_error="velocity" if cfg.family == "flow" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr)
    lr_at = lambda i: cfg.pretrain_lr * 0.5 * (1 + math.cos(math.pi * i / max(cfg.pretrain_steps, 1)))
    ones = torch.ones(cfg.batch_size, dtype=torch.long)
    for i in range(cfg.pretrain_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(i)
        x0 = PRETRAIN.sample(cfg.batch_size, gen)
        out = objective_step(plain, schedule, model, x0, ones, generator=gen)
        O.check_finite(out.loss, where=f"toy pretraining step {i}")
        _optimise(model, out.loss, opt, cfg.grad_clip)
    return model.eval()


@dataclass
class FinetuneResult:
    model: ToyDenoiser
    history: List[Dict[str, float]] = field(default_factory=list)


def finetune(cfg: ToyConfig, method: str, pretrained: ToyDenoiser, feedback: FeedbackSet,
             seed: Optional[int] = None, log_every: int = 50) -> FinetuneResult:
    """Fine-tune a copy of ``pretrained`` with ``method`` on the feedback table.

    Batches are gamma-sampled (sec. 4.2; SFT: desirable points only); Diffusion-DPO instead draws ``batch_size // 2``
    random (desirable, undesirable) pairs. A non-finite loss or a policy error that grows
    past ``divergence_factor`` times its first-step value stops the run with
    :class:`ToyDivergenceError` naming the method and the step.
    """
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every must be an integer >= 1, got {log_every!r}")
    seed = cfg.seed if seed is None else seed
    objective, _ = parse_method(method)
    if objective is None:
        return FinetuneResult(pretrained)
    cfg = cfg.for_method(method)
    ocfg = cfg.objective(method)
    schedule = cfg.schedule()
    policy = copy.deepcopy(pretrained).train()
    reference = None
    if O.NEEDS_REFERENCE[objective]:
        reference = copy.deepcopy(pretrained).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed + 2)
    sampler = GammaSampler(feedback.labels, sampling_gamma(objective, cfg.gamma), seed=seed + 3)
    des, und = feedback.desirable, feedback.undesirable
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    history: List[Dict[str, float]] = []
    first_err = None
    for step in range(cfg.steps):
        loser = None
        if objective == "dpo":
            h = max(cfg.batch_size // 2, 1)
            x0 = des[torch.randint(len(des), (h,), generator=gen)]
            loser = und[torch.randint(len(und), (h,), generator=gen)]
            labels = torch.ones(h, dtype=torch.long)
        else:
            idx = sampler.sample(cfg.batch_size)
            x0, labels = feedback.x[idx], feedback.labels[idx]
        cond = labels if objective == "csft" else None
        out = objective_step(ocfg, schedule, policy, x0, labels, cond, reference=reference,
                             x0_loser=loser, generator=gen)
        where = f"toy fine-tune {method!r} step {step} (beta={cfg.beta}, lr={cfg.lr})"
        try:
            O.check_finite(out.loss, where=where)
        except FloatingPointError as e:
            raise ToyDivergenceError(f"{e}: diverged; lower beta or lr") from None
        err = float(out.metrics["err/policy"])
        first_err = err if first_err is None else first_err
        if not math.isfinite(err) or err > cfg.divergence_factor * first_err:
            raise ToyDivergenceError(
                f"{where} diverged: the policy's denoising error {err:.4g} is more than "
                f"divergence_factor={cfg.divergence_factor} x its first-step value {first_err:.4g}; lower beta or lr"
            )
        _optimise(policy, out.loss, opt, cfg.grad_clip)
        if step % log_every == 0 or step == cfg.steps - 1:
            history.append({"step": step, **O.metrics_to_floats(out.metrics)})
    return FinetuneResult(policy.eval(), history)


def make_feedback_for(cfg: ToyConfig, seed: Optional[int] = None) -> FeedbackSet:
    seed = cfg.seed if seed is None else seed
    return make_feedback(cfg.n_feedback, cfg.n_feedback, torch.Generator().manual_seed(seed + 4))
