"""The noise schedules and forward (noising) processes, shared by the toy and SD.

Two schedules, one interface (``sample_timesteps`` / ``add_noise`` / ``target``, all that
:func:`kto_lab.step.objective_step` calls; ``with_options`` applies a training config's ``schedule.*`` options
of its kind, named by ``OPTIONS``):

- :class:`NoiseSchedule`, DDPM: ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (Ho et al. 2020;
  Diffusion-KTO sec. 3.1), integer timesteps, target eps (or v, or x0).
- :class:`FlowMatchingSchedule`, rectified flow (Stable Diffusion 3, Esser et al. 2024, sec. 2):
  ``x_t = (1 - t) x_0 + t eps`` for a continuous noise level ``t`` in (0, 1), target the
  velocity ``eps - x_0``.

For SD each is read from the pipeline's diffusers scheduler config (``from_diffusers``), so
the numbers are the ones diffusers uses; the toy builds one directly (tiny-diffusion style, ~50 steps).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional, Tuple

import math

import torch

from .config import ConfigError, check_choice, check_range

Tensor = torch.Tensor

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass
class NoiseSchedule:
    alphas_cumprod: Tensor  # (T,), float32
    prediction_type: str = "epsilon"

    KIND: ClassVar[str] = "DDPM"  # what error messages call this kind of schedule
    EXPLAIN: ClassVar[str] = ""
    OPTIONS: ClassVar[Tuple[str, ...]] = ("prediction_type",)  # the training config's options for it (schedule.*)

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}"
            )
        self.alphas_cumprod = self.alphas_cumprod.detach().float()
        self._on_device = {}  # device -> alphas_cumprod there: no host-to-device copy per step

    # --- construction -----------------------------------------------------------------
    @classmethod
    def linear(
        cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
        prediction_type: str = "epsilon",
    ) -> "NoiseSchedule":
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        return cls(torch.cumprod(1.0 - betas, 0).float(), prediction_type)

    @classmethod
    def scaled_linear(
        cls, num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
        prediction_type: str = "epsilon",
    ) -> "NoiseSchedule":
        """The Stable Diffusion 1.x/2.x schedule."""
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
        return cls(torch.cumprod(1.0 - betas, 0).float(), prediction_type)

    @classmethod
    def from_diffusers(cls, scheduler) -> "NoiseSchedule":
        """Take ``alphas_cumprod`` and ``prediction_type`` from a diffusers scheduler."""
        if not hasattr(scheduler, "alphas_cumprod"):
            raise ConfigError(
                f"{type(scheduler).__name__} has no DDPM alphas_cumprod (a flow-matching scheduler?); "
                "use FlowMatchingSchedule.from_diffusers"
            )
        return cls(
            torch.as_tensor(scheduler.alphas_cumprod).float(),
            scheduler.config.get("prediction_type", "epsilon"),
        )

    @classmethod
    def default_options(cls) -> Dict[str, Any]:
        """The values of :attr:`OPTIONS` a run uses when unset, if known before the pipeline loads: none (an unset
        prediction type is the pipeline's)."""
        return {}

    def with_options(self, prediction_type: Optional[str] = None) -> "NoiseSchedule":
        """This schedule trained with another prediction type (diffusers' ``--prediction_type``); unset: as is."""
        if prediction_type is not None and prediction_type != self.prediction_type:
            return dataclasses.replace(self, prediction_type=prediction_type)
        return self

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    # --- the forward process ------------------------------------------------------------
    def sample_timesteps(self, n: int, device=None, generator: Optional[torch.Generator] = None) -> Tensor:
        """``t ~ Uniform{0..T-1}`` (eq. 7)."""
        return torch.randint(0, self.num_timesteps, (n,), device=device, generator=generator)

    def _coefs(self, t: Tensor, like: Tensor):
        table = self._on_device.get(like.device)
        if table is None:
            table = self._on_device[like.device] = self.alphas_cumprod.to(like.device)
        abar = table[t].to(like.dtype)
        shape = (-1,) + (1,) * (like.dim() - 1)
        return abar.sqrt().view(shape), (1.0 - abar).sqrt().view(shape)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        a, s = self._coefs(t, x0)
        return a * x0 + s * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network predicts: eps, v = sqrt(abar) eps - sqrt(1-abar) x0, or x0."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            a, s = self._coefs(t, x0)
            return a * noise - s * x0
        return x0


# --- rectified flow (Stable Diffusion 3) ------------------------------------------------

FLOW_PREDICTION = "flow_prediction"  # diffusers' name for a velocity-predicting (flow) model
TIMESTEP_DENSITIES = ("logit_normal", "uniform", "mode")  # SD3 sec. 3.1 (CosMap left out)
MODE_SCALE_RANGE = (-1.0, 2.0 / (math.pi - 2.0))  # where SD3's f_mode maps [0, 1] onto itself monotonically


@dataclass
class FlowMatchingSchedule:
    """Rectified flow (SD3, Esser et al. 2024, sec. 2): ``x_t = (1 - t) x_0 + t eps``, target ``eps - x_0``.

    ``t`` in (0, 1) is the noise level (diffusers' ``sigma``; 1 = pure noise). Timesteps handed
    to the denoiser are in the model's units, ``t * num_train_timesteps``, exactly what
    diffusers' ``FlowMatchEulerDiscreteScheduler.timesteps`` hold and SD3's transformer takes;
    :meth:`noise_level` maps them back. A training timestep is ``t = shift(u)`` with ``u`` drawn
    from ``density`` (SD3 sec. 3.1: logit-normal with mean 0 and std 1 is its default and best),
    and ``shift(u) = s u / (1 + (s - 1) u)``, the resolution-dependent shift of SD3 sec. 5.3.2
    as diffusers' scheduler applies it (``s = 3`` for SD3 at 1024 px). Every density here is used
    with loss weight 1, as in diffusers' SD3 training scripts, so the step needs no weights.

    Differences from diffusers' SD3 training scripts, both invisible at the default mean 0:
    ``t`` is continuous (they draw one of ``num_train_timesteps`` grid points), and
    ``logit_mean > 0`` means *more* noise, as in the SD3 paper (they index a descending
    timestep table with ``u``, which flips the sign of the mean).
    """

    num_train_timesteps: int = 1000  # the denoiser sees t * this (SD3's scheduler config: 1000)
    shift: float = 1.0  # SD3 sec. 5.3.2; SD3's scheduler config: 3.0 (1 = no shift)
    density: str = "logit_normal"  # SD3 sec. 3.1: logit_normal (its default) | uniform | mode
    logit_mean: float = 0.0  # SD3 sec. 3.1: logit-normal m = 0, s = 1 works best
    logit_std: float = 1.0
    mode_scale: float = 1.29  # SD3 sec. 3.1's "mode" density scale (diffusers' default)
    prediction_type: str = FLOW_PREDICTION  # the only one: eps / v / x0 are DDPM options

    KIND: ClassVar[str] = "flow-matching"
    EXPLAIN: ClassVar[str] = ": it predicts the velocity eps - x0"
    OPTIONS: ClassVar[Tuple[str, ...]] = ("density", "logit_mean", "logit_std", "mode_scale")

    def __post_init__(self):
        if self.prediction_type != FLOW_PREDICTION:
            raise ConfigError(
                f"prediction_type={self.prediction_type!r} is a DDPM option; a flow-matching model "
                f"predicts the velocity eps - x0 (prediction_type={FLOW_PREDICTION!r})"
            )
        n = self.num_train_timesteps
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"num_train_timesteps={n!r} must be an integer >= 1")
        check_range("shift", self.shift, low=0.0, low_open=True)
        check_choice("density", self.density, TIMESTEP_DENSITIES)
        check_range("logit_mean", self.logit_mean)
        check_range("logit_std", self.logit_std, low=0.0, low_open=True)
        check_range("mode_scale", self.mode_scale, *MODE_SCALE_RANGE)

    @classmethod
    def from_diffusers(cls, scheduler, shift: Optional[float] = None, **density) -> "FlowMatchingSchedule":
        """``num_train_timesteps`` and ``shift`` from a ``FlowMatchEulerDiscreteScheduler`` (SD3/3.5: 1000 and
        3.0). ``shift``: this one instead of the config's; a scheduler with ``use_dynamic_shifting`` (a shift that
        depends on the image size, as Flux's) needs it, computed by its family for the resolution. ``density``
        takes the training-only fields (``density=``, ...)."""
        config = scheduler.config
        name = type(scheduler).__name__
        if "shift" not in config or hasattr(scheduler, "alphas_cumprod"):
            raise ConfigError(f"{name} is not a flow-matching scheduler (no 'shift'); use NoiseSchedule.from_diffusers")
        if shift is None and config.get("use_dynamic_shifting"):
            raise ConfigError(f"{name} uses use_dynamic_shifting (a shift that depends on the image size): "
                              "pass the shift for the training resolution (shift=)")
        return cls(num_train_timesteps=config["num_train_timesteps"],
                   shift=float(config["shift"] if shift is None else shift),
                   prediction_type=config.get("prediction_type") or FLOW_PREDICTION, **density)

    @classmethod
    def default_options(cls) -> Dict[str, Any]:
        """The values of :attr:`OPTIONS` a run uses when unset (SD3 sec. 3.1's logit-normal, m = 0, s = 1)."""
        default = cls()
        return {k: getattr(default, k) for k in cls.OPTIONS}

    def with_options(self, **options) -> "FlowMatchingSchedule":
        """This schedule with other training timestep options (:attr:`OPTIONS`; None: unchanged), checked."""
        return dataclasses.replace(self, **{k: v for k, v in options.items() if v is not None})

    # --- timesteps ----------------------------------------------------------------------
    def shifted(self, u: Tensor) -> Tensor:
        """``s u / (1 + (s - 1) u)`` (SD3 sec. 5.3.2; diffusers' ``FlowMatchEulerDiscreteScheduler``)."""
        return self.shift * u / (1.0 + (self.shift - 1.0) * u)

    def sample_timesteps(self, n: int, device=None, generator: Optional[torch.Generator] = None) -> Tensor:
        """``shift(u) * num_train_timesteps`` with ``u ~ density`` (SD3 sec. 3.1), float32."""
        if self.density == "logit_normal":
            u = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, device=device, generator=generator))
        else:
            u = torch.rand(n, device=device, generator=generator)
            if self.density == "mode":  # f_mode(u) = 1 - u - s (cos^2(pi u / 2) - 1 + u)
                u = 1.0 - u - self.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1.0 + u)
        return self.shifted(u) * self.num_train_timesteps

    def noise_level(self, t: Tensor, like: Tensor) -> Tensor:
        """The noise level ``t / num_train_timesteps`` in (0, 1), shaped to broadcast against ``like``."""
        shape = (-1,) + (1,) * (like.dim() - 1)
        sigma = (t if t.is_floating_point() else t.float()) / self.num_train_timesteps
        return sigma.to(like.dtype).view(shape)

    def sampling_timesteps(self, steps: int) -> Tensor:
        """``steps + 1`` model timesteps from pure noise to clean: a uniform grid of ``t`` from 1
        to 0, shifted, for an Euler ODE sampler (float64)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"sampling steps must be an integer >= 1, got {steps!r}")
        return self.shifted(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)) * self.num_train_timesteps

    # --- the forward process ------------------------------------------------------------
    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        sigma = self.noise_level(t, x0)
        return (1.0 - sigma) * x0 + sigma * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The velocity ``d x_t / d t = eps - x_0`` (the same for every ``t``)."""
        return noise - x0
