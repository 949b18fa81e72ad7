"""How much larger are a flow model's implicit rewards than SD 1.5's epsilon ones? Where SD3's beta ranges come from.

    python benchmarks/flow_beta_scale.py            # seconds on a CPU

Diffusion-KTO's implicit reward is ``beta * g`` with ``g = err_ref - err_policy`` (DESIGN.md), so the beta that
makes a fine-tune's rewards a given size scales inversely with the size of ``g``. A flow model's per-sample error
is one of three (``objective.flow_error``, :meth:`kto_lab.schedule.FlowMatchingSchedule.error`): the velocity
error, or the error of the epsilon or x0 estimate the same prediction implies. They and SD 1.5's epsilon errors
of the same change to a model differ in size, and by how much depends on the noise level. A closed form, for a
model family that is exact on Gaussian data: per latent element, data ``x0 ~ N(m, 1)`` (SD latents are scaled to
unit variance), ``x_t = a x0 + b eps``; the reference is the optimal denoiser of ``m = 0``, the policy the
optimal denoiser of ``m = delta`` (it prefers images shifted by delta). Then, averaged over the noise ``eps``,

    E[g | x0, t] = w(t) * delta * (2 x0 - delta)      with
    w(t) = a^2 b^2 / (a^2 + b^2)^2  for epsilon errors   (DDPM: a^2 = abar, b^2 = 1 - abar, so abar (1 - abar))
    w(t) = b^2 / (a^2 + b^2)^2      for velocity errors  (rectified flow: a = 1 - t, b = t; velocity error =
                                                          epsilon error / a^2 = x0 error / b^2)
    w(t) = b^4 / (a^2 + b^2)^2      for x0 errors

so the error changes only the weight ``w(t)``, averaged over the training timestep density: the ratio of
``E_t[w]`` between two schedules is the factor between their betas *under this model*. This script samples
each schedule's training timesteps with the library's own samplers (``kto_lab.schedule``) and prints ``E_t[w]``
and the ratios, for SD3 and for the 2-D toy's two schedules, where the factor was also MEASURED: fitted from
the committed beta sweeps (``figures/beta_scale/``: the flow curves over beta against the DDPM ones). From
both it derives each flow error's beta warning range for SD3 (``kto_lab/sd/families/sd3.py``, SD3_BETA_RANGES):
SD 1.5's useful 2000-5000 (Diffusion-KTO D.3) divided by every factor between 1, the model's and the model's
corrected by the toy's measured/predicted ratio, with a 10x margin on either side. Nothing here runs SD3: its
useful beta is not measured.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from kto_lab.schedule import DEFAULT_FLOW_ERROR, FLOW_ERRORS, FlowMatchingSchedule, NoiseSchedule

REPO = Path(__file__).resolve().parents[1]
SD15_USEFUL_BETA = (2000.0, 5000.0)  # Diffusion-KTO D.3 (rising from 2000 to 5000, flat after); Diffusion-DPO
MARGIN = 10.0  # the warning range is the estimated band widened 10x on either side


def epsilon_weight(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    abar = schedule.alphas_cumprod[t].double()
    return abar * (1.0 - abar)


def flow_weight(flow_error: str):
    """``w(t)`` of a flow schedule for one ``objective.flow_error``."""
    power = {"epsilon": (2, 2), "velocity": (0, 2), "x0": (0, 4)}[flow_error]  # w = a^p b^q / (a^2 + b^2)^2

    def weight(schedule: FlowMatchingSchedule, t: torch.Tensor) -> torch.Tensor:
        sigma = t.double() / schedule.num_train_timesteps
        a, b = 1.0 - sigma, sigma
        return a ** power[0] * b ** power[1] / (a**2 + b**2) ** 2

    return weight


SD3 = FlowMatchingSchedule(shift=3.0)  # SD3: logit-normal (0, 1), shift 3
TOY_FLOW = FlowMatchingSchedule(num_train_timesteps=50, density="uniform")  # toy/train.py ToyConfig defaults
SCHEDULES = {
    # name: (schedule, weight); the SD ones as their pipelines' scheduler configs give them
    "sd15_epsilon": (NoiseSchedule.scaled_linear(1000), epsilon_weight),  # SD 1.x/2.x and SDXL: scaled_linear
    "toy_ddpm": (NoiseSchedule.linear(50, 1e-4, 0.2), epsilon_weight),  # toy/train.py ToyConfig defaults
    **{f"sd3_{k}": (SD3, flow_weight(k)) for k in FLOW_ERRORS},
    **{f"toy_flow_{k}": (TOY_FLOW, flow_weight(k)) for k in FLOW_ERRORS},
}


def mean_weights(n: int = 1_000_000, seed: int = 0) -> Dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    return {name: float(weight(s, s.sample_timesteps(n, generator=g)).mean()) for name, (s, weight) in SCHEDULES.items()}


# --- the toy's measured factor -------------------------------------------------------------------

SWEEP_METRICS = ("share_desirable", "share_undesirable", "energy_to_pretrained")


def sweep_file(flow_error: Optional[str]) -> Path:
    """The committed beta sweep of the DDPM toy (None) or of the flow toy with one flow_error (the default's is
    the committed command's, figures/beta_scale/ablation_flow_metrics.csv; the others' in flow_error_<name>/)."""
    stem = "ablation_metrics.csv" if flow_error is None else "ablation_flow_metrics.csv"
    folder = REPO / "figures" / "beta_scale"
    return (folder if flow_error in (None, DEFAULT_FLOW_ERROR) else folder / f"flow_error_{flow_error}") / stem


def read_sweep(path: Path) -> Dict[float, Dict[str, float]]:
    with open(path, newline="") as f:
        return {float(r["value"]): {m: float(r[f"{m}_mean"]) for m in SWEEP_METRICS}
                for r in csv.DictReader(f) if r["knob"] == "beta" and not r.get("diverged")}


def fit_factor(ddpm: Dict[float, Dict[str, float]], flow: Dict[float, Dict[str, float]]) -> Optional[float]:
    """The factor F with flow(beta) ~ ddpm(F beta): the flow rewards are F times the DDPM ones. Least squares over
    the sweep's metrics (each scaled by its spread over the DDPM sweep), DDPM curves interpolated in log beta,
    F on a log grid from 1/100 to 100; only flow betas whose F beta lies inside the DDPM sweep count. None when the
    best F is an end of the grid: no rescaling of beta maps the flow curve onto the DDPM one (the flow toy's x0
    errors: their small-beta plateau is another model than DDPM's), so there is no factor to measure."""
    xd = np.log(sorted(ddpm))
    grid = np.linspace(math.log(0.01), math.log(100.0), 801)
    best, best_cost = 1.0, math.inf
    for log_f in grid:
        cost, count = 0.0, 0
        for beta, row in flow.items():
            x = math.log(beta) + log_f
            if not xd[0] <= x <= xd[-1]:
                continue
            for m in SWEEP_METRICS:
                yd = np.array([ddpm[b][m] for b in sorted(ddpm)])
                cost += ((row[m] - np.interp(x, xd, yd)) / (yd.max() - yd.min() + 1e-12)) ** 2
                count += 1
        if count >= 3 * len(SWEEP_METRICS) and cost / count < best_cost:
            best, best_cost = math.exp(log_f), cost / count
    return None if math.isclose(math.log(best), grid[0]) or math.isclose(math.log(best), grid[-1]) else best


def measured_toy_factors() -> Dict[str, float]:
    """The flow toy's measured reward factor over the DDPM toy's, per flow_error with a committed sweep whose curve
    a factor fits (:func:`fit_factor`)."""
    ddpm = read_sweep(sweep_file(None))
    fitted = {k: fit_factor(ddpm, read_sweep(sweep_file(k))) for k in FLOW_ERRORS if sweep_file(k).is_file()}
    return {k: f for k, f in fitted.items() if f is not None}


def _round(x: float) -> float:
    """Two significant digits: a warning range, not a measurement."""
    return float(f"{x:.2g}")


def sd3_beta_ranges(w: Dict[str, float], measured: Dict[str, float]) -> Dict[str, Dict[str, object]]:
    """Per flow_error: the model's SD3/SD 1.5 factor, the toy-corrected one, and the warning range."""
    out = {}
    for k in FLOW_ERRORS:
        model = w[f"sd3_{k}"] / w["sd15_epsilon"]
        factors = [1.0, model]
        if k in measured:
            factors.append(model * measured[k] / (w[f"toy_flow_{k}"] / w["toy_ddpm"]))
        low, high = SD15_USEFUL_BETA[0] / max(factors), SD15_USEFUL_BETA[1] / min(factors)
        out[k] = {"model_factor": model, "factors": factors, "useful_band": [low, high],
                  "warning_range": [_round(low / MARGIN), _round(high * MARGIN)]}
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=1_000_000, help="timesteps drawn per schedule")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    w = mean_weights(args.samples, args.seed)
    measured = measured_toy_factors()
    out = {"mean_weight": w,
           "sd3_over_sd15": {k: w[f"sd3_{k}"] / w["sd15_epsilon"] for k in FLOW_ERRORS},
           "toy_flow_over_ddpm_predicted": {k: w[f"toy_flow_{k}"] / w["toy_ddpm"] for k in FLOW_ERRORS},
           "toy_flow_over_ddpm_measured": measured,
           "toy_flow_no_factor_fits": [k for k in FLOW_ERRORS if sweep_file(k).is_file() and k not in measured],
           "sd3_beta_ranges": sd3_beta_ranges(w, measured)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
