"""Experiments on the toy: Figure 6 over seeds, and the appendix-D ablations in small.

Each seed draws its own feedback table, pretrains its own model, fine-tunes every method
from it and samples ``n_samples`` points per model. Results are plain dicts of floats, so
they go straight to JSON; the samples of the first seed are kept for the scatter panels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from .data import DESIRABLE, UNDESIRABLE
from .metrics import METRICS, param_change, sample_metrics
from .sample import sample
from .train import PRETRAINED, ToyConfig, finetune, make_feedback_for, parse_method, pretrain

Tensor = torch.Tensor

# Appendix D in small: the values swept (D.3 beta, D.2 gamma, D.4 utility).
ABLATION_BETAS = (0.3, 1.0, 3.0, 10.0, 30.0)
ABLATION_GAMMAS = (0.5, 0.65, 0.8, 0.95, 1.0)
ABLATION_UTILITIES = ("loss_averse", "kto", "risk_seeking", "prospect")


@contextlib.contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _check_seeds(seeds) -> None:
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")


@dataclass
class SeedResult:
    seed: int
    metrics: Dict[str, Dict[str, float]]  # method -> metric -> value
    samples: Dict[str, Tensor]  # method -> (n_samples, 2)
    seconds: Dict[str, float] = field(default_factory=dict)  # "pretrain", "finetune:<m>", "sample:<m>"


def _sample_method(cfg: ToyConfig, method: str, model, seed: int) -> Tensor:
    objective, _ = parse_method(method)
    cond = 1 if objective == "csft" else None  # CSFT samples with the "good" class
    steps = cfg.flow_sample_steps if cfg.family == "flow" else None  # DDPM walks its whole chain
    return sample(model, cfg.schedule(), cfg.n_samples, cond=cond, generator=torch.Generator().manual_seed(seed + 5),
                  steps=steps)


def run_seed(cfg: ToyConfig, seed: int, methods: Optional[Sequence[str]] = None,
             pretrained=None, progress: bool = False) -> SeedResult:
    """Pretrain (unless ``pretrained`` is given), fine-tune and sample every method for one seed."""
    cfg.validate()
    methods = list(cfg.methods if methods is None else methods)
    seconds: Dict[str, float] = {}
    with torch_threads(cfg.threads):
        t0 = time.perf_counter()
        if pretrained is None:
            pretrained = pretrain(cfg, seed)
            seconds["pretrain"] = time.perf_counter() - t0
        feedback = make_feedback_for(cfg, seed)
        desirable_draws = DESIRABLE.sample(cfg.n_samples, torch.Generator().manual_seed(seed + 6))
        t0 = time.perf_counter()
        pre_samples = _sample_method(cfg, PRETRAINED, pretrained, seed)
        seconds[f"sample:{PRETRAINED}"] = time.perf_counter() - t0
        metrics, samples = {}, {}
        for method in tqdm(methods, desc=f"seed {seed}", disable=not progress, leave=False):
            t0 = time.perf_counter()
            model = finetune(cfg, method, pretrained, feedback, seed).model
            if method != PRETRAINED:
                seconds[f"finetune:{method}"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                x = _sample_method(cfg, method, model, seed)
                seconds[f"sample:{method}"] = time.perf_counter() - t0
            else:
                x = pre_samples
            m = sample_metrics(x, desirable_draws, pre_samples)
            m["param_change"] = param_change(model, pretrained)
            metrics[method], samples[method] = m, x
    return SeedResult(seed, metrics, samples, seconds)


def reference_metrics(n: int = 3500, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """The metrics of exact draws of P_d and P_u: what a perfect model would score."""
    g = torch.Generator().manual_seed(seed + 6)
    desirable_draws = DESIRABLE.sample(n, g)
    return {
        "data: P_d": sample_metrics(DESIRABLE.sample(n, g), desirable_draws),
        "data: P_u": sample_metrics(UNDESIRABLE.sample(n, g), desirable_draws),
    }


def summarize(per_seed: List[Dict[str, Dict[str, float]]]) -> Dict[str, Dict[str, Dict[str, object]]]:
    """[{method: {metric: v}}] over seeds -> {method: {metric: {mean, sd, values}}} (sd: sample sd)."""
    out: Dict[str, Dict[str, Dict[str, object]]] = {}
    for method in per_seed[0]:
        out[method] = {}
        for metric in per_seed[0][method]:
            values = [r[method][metric] for r in per_seed]
            out[method][metric] = {
                "mean": statistics.fmean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values,
            }
    return out


@dataclass
class Figure6Result:
    config: ToyConfig
    seeds: List[int]
    summary: Dict[str, Dict[str, Dict[str, object]]]
    samples: Dict[str, Tensor]  # first seed
    seconds: List[Dict[str, float]]


def run_figure6(cfg: ToyConfig, seeds: int = 3, progress: bool = True) -> Figure6Result:
    """Figure 6 over ``seeds`` seeds (``cfg.seed``, ``cfg.seed + 1``, ...)."""
    _check_seeds(seeds)
    cfg.validate()
    results = [run_seed(cfg, cfg.seed + k, progress=progress) for k in range(seeds)]
    return Figure6Result(cfg, [r.seed for r in results], summarize([r.metrics for r in results]),
                         results[0].samples, [r.seconds for r in results])


def run_ablations(cfg: ToyConfig, seeds: int = 2, betas: Sequence[float] = ABLATION_BETAS,
                  gammas: Sequence[float] = ABLATION_GAMMAS, utilities: Sequence[str] = ABLATION_UTILITIES,
                  progress: bool = True) -> Dict[str, Dict[str, Dict[str, Dict[str, object]]]]:
    """Diffusion-KTO (sigmoid unless swept) against beta, gamma and the utility.

    Returns ``{"beta": {value: summary}, "gamma": {...}, "utility": {...}}``, each summary
    ``{metric: {mean, sd, values}}`` over ``seeds`` seeds. Other settings are ``cfg``'s;
    per-method overrides are *not* applied, so every row differs from the default in one knob only.
    """
    _check_seeds(seeds)
    base = dataclasses.replace(cfg, method_overrides={}).validate()
    runs = [("beta", b, dataclasses.replace(base, beta=float(b)), "kto:kto") for b in betas]
    runs += [("gamma", g, dataclasses.replace(base, gamma=float(g)), "kto:kto") for g in gammas]
    runs += [("utility", u, base, f"kto:{u}") for u in utilities]
    for _, _, c, m in runs:
        c.validate(), parse_method(m)
    per_seed: Dict[tuple, List[Dict[str, float]]] = {}
    errors: Dict[tuple, str] = {}
    bar = tqdm(total=seeds * len(runs), desc="ablations", disable=not progress)
    with torch_threads(cfg.threads):
        for k in range(seeds):
            seed = cfg.seed + k
            pretrained = pretrain(base, seed)
            for knob, value, c, method in runs:
                try:
                    r = run_seed(c, seed, [method], pretrained=pretrained)
                    per_seed.setdefault((knob, value), []).append(r.metrics[method])
                except FloatingPointError as e:  # a diverged setting is a result, not a crash
                    errors[(knob, value)] = str(e)
                bar.update()
    bar.close()
    out: Dict[str, Dict[str, Dict[str, Dict[str, object]]]] = {"beta": {}, "gamma": {}, "utility": {}}
    for knob, value, _, _ in runs:
        key = str(value)
        if (knob, value) in errors:
            out[knob][key] = {"diverged": errors[(knob, value)]}
        else:
            out[knob][key] = summarize([{"m": m} for m in per_seed[(knob, value)]])["m"]
    return out


__all__ = ["run_seed", "run_figure6", "run_ablations", "reference_metrics", "summarize", "METRICS",
           "ABLATION_BETAS", "ABLATION_GAMMAS", "ABLATION_UTILITIES"]
