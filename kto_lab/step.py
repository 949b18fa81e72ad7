"""One training step's loss for any objective: noise -> errors of policy and reference -> objective.

This is the whole algorithm of a step, shared verbatim by the toy trainer and the SD trainer.
A *denoiser* is any callable ``fn(x_t, t, cond) -> prediction`` (an MLP, a UNet wrapper, a
UNet with its LoRA adapters disabled). ``cond`` is the conditioning, batch-first: ``None``, a
tensor (class ids for the toy, text embeddings for SD 1.x/2.x), or a small structure of tensors,
a tuple or a dict (SDXL: text states, pooled embedding and time ids). The step only ever rolls
it (:func:`roll_cond`) and concatenates it (:func:`cat_cond`), and both treat every part alike,
so an unrelated pair moves a caption's text, pooled embedding and time ids together.

Forward passes per step for Diffusion-KTO with the paper's reference point (sec. 4.1):

1. policy on the matched batch, with grad                       (B samples)
2. reference on the matched batch and the unrelated batch,      (2B samples, ONE forward)
   batched together under ``no_grad``
3. policy on the unrelated batch under ``no_grad``               (B samples)

The unrelated batch pairs every image with the caption of its neighbour (captions rolled by
one position, KTO's convention) and draws its own noise and timestep. With
``reference_point_fraction`` < 1 it keeps only the first m of those pairs (passes 2 and 3 then
run B + m and m samples): a cheaper, noisier z_ref. A batch of one sample has no neighbour: the
caller passes other captions (``cond_unrelated``), or the step refuses. Everything else about z_ref (the
options, the pair count, the captions, the estimate, its mean across processes) is
:mod:`kto_lab.reference_point`'s; the conditioning helpers are :mod:`kto_lab.cond`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch

from . import objectives as O
from .config import ConfigError, check_choice, check_positive, check_range
from .schedule import FLOW_ERRORS, NoiseSchedule

from .cond import Cond, cat_cond, cond_batch_size, map_cond, roll_cond  # noqa: F401  (the step's conditioning helpers)
from .reference_point import REFERENCE_POINTS, reference_point, unrelated_cond, unrelated_pair_count  # noqa: F401

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor, Cond], Tensor]


@dataclass
class ObjectiveConfig:
    """Which loss, and its hyper-parameters. Defaults: Diffusion-KTO appendix A.1."""

    objective: str = "kto"  # kto | dpo | sft | csft | bce | nft (DiffusionNFT: flow-matching models only)
    utility: str = "kto"  # a name in objectives.UTILITIES (sec. 4.2; "kto" = sigmoid is best, D.4)
    # sec. A.1 (D.3: rising from 2000 to 5000, flat after). Each objective reads it on its own scale: DPO's
    # beta_dpo; DiffusionNFT's mixing strength (its paper and NVlabs' configs: 0.1-1).
    beta: float = 5000.0
    reference_point: str = "unrelated"  # unrelated (the paper, sec. 4.1) | batch | none
    # Share of the batch that forms unrelated pairs for z_ref (rounded, at least one pair): 1.0 = every
    # sample, as the paper (sec. 4.1); less saves forwards for a noisier z_ref (benchmarks/reference_point.py).
    reference_point_fraction: float = 1.0
    lambda_desirable: float = 1.0  # KTO's class weights lambda_D, lambda_U (eq. 5)
    lambda_undesirable: float = 1.0  # lambda_U; raise it to weigh undesirable samples more
    # Flow-matching models only: the per-sample error every objective sees, velocity | epsilon | x0
    # (kto_lab.schedule.FlowMatchingSchedule.error); null = kto_lab.schedule.DEFAULT_FLOW_ERROR.
    flow_error: Optional[str] = None

    def validate(self) -> "ObjectiveConfig":
        O.check_objective(self.objective)
        if self.flow_error is not None:
            check_choice("flow_error", self.flow_error, FLOW_ERRORS)
        O.get_utility(self.utility)
        check_positive("beta", self.beta)
        check_choice("reference_point", self.reference_point, REFERENCE_POINTS)
        check_range("reference_point_fraction", self.reference_point_fraction, low=0.0, high=1.0, low_open=True)
        if self.reference_point_fraction != 1.0 and self.reference_point != "unrelated":
            raise ConfigError(f"reference_point_fraction={self.reference_point_fraction} applies only to "
                              f"reference_point='unrelated', not {self.reference_point!r}")
        check_range("lambda_desirable", self.lambda_desirable, low=0.0, low_open=True)
        check_range("lambda_undesirable", self.lambda_undesirable, low=0.0, low_open=True)
        return self


@dataclass
class StepOutput:
    loss: Tensor
    metrics: Dict[str, Tensor] = field(default_factory=dict)  # 0-dim tensors: O.metrics_to_floats
    err_policy: Optional[Tensor] = None  # detached, per sample (for accuracy, logging)
    err_ref: Optional[Tensor] = None


def flow_only_message(objective: str) -> str:
    """The one line that refuses a flow-only objective (DiffusionNFT) on a DDPM model."""
    return (f"objective={objective!r} (DiffusionNFT) mixes velocity predictions and is defined for flow-matching "
            "models only (its paper gives no epsilon form); this model has a DDPM schedule: use a flow-matching "
            "model (SD3, the toy's --family flow) or another objective")


def _randn_like(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def objective_step(
    cfg: ObjectiveConfig,
    schedule: NoiseSchedule,
    policy: Denoiser,
    x0: Tensor,
    labels: Tensor,
    cond: Cond = None,
    *,
    reference: Optional[Denoiser] = None,
    x0_loser: Optional[Tensor] = None,
    cond_loser: Cond = None,
    generator: Optional[torch.Generator] = None,
    reduce_mean: Optional[Callable[[Tensor], Tensor]] = None,
    cond_unrelated: Cond = None,
) -> StepOutput:
    """Compute the loss of ``cfg.objective`` on one batch.

    ``x0``: clean samples (latents for SD), ``labels``: 1 desirable / 0 undesirable.
    For ``dpo``, ``x0`` holds the winners and ``x0_loser`` the losers of the same captions
    ``cond``; winner and loser share noise and timestep (the official Diffusion-DPO ``train.py``,
    ``train_method == "dpo"``, and the pseudo-code of its supplement S9; eq. 14 is the loss).
    ``cond_loser``: the losers' conditioning where it is not ``cond`` (SDXL: same caption, their
    own size and crop). ``reduce_mean`` averages the reference point across processes (sec. 4.1).
    ``cond_unrelated``: the unrelated batch's conditioning, if not the batch's own rolled by one
    (:func:`unrelated_cond`). Per-sample errors come from ``schedule.error`` (for flow models the
    ``cfg.flow_error`` kind). ``nft`` (DiffusionNFT, flow models only) runs the reference on the matched
    batch, mixes the two predictions into its implicit policies and measures their errors the same way.
    """
    name = cfg.objective
    if O.NEEDS_REFERENCE[name] and reference is None:
        raise ValueError(f"objective {name!r} needs a reference denoiser")
    if O.NEEDS_PAIRS[name] and x0_loser is None:
        raise ValueError(f"objective {name!r} needs pairs: pass x0_loser")
    if name in O.FLOW_ONLY and not schedule.FLOW_MATCHING:
        raise ConfigError(flow_only_message(name))

    if name == "dpo":
        x0 = torch.cat([x0, x0_loser], dim=0)
        cond = cat_cond(cond, cond if cond_loser is None else cond_loser)
    n = x0.shape[0]
    t = schedule.sample_timesteps(n if name != "dpo" else n // 2, x0.device, generator)
    noise = _randn_like(x0[: t.shape[0]], generator)
    if name == "dpo":  # shared noise and timestep within a pair
        t, noise = torch.cat([t, t]), torch.cat([noise, noise])
    x_t = schedule.add_noise(x0, noise, t)
    target = schedule.target(x0, noise, t)

    def error(prediction: Tensor, target: Tensor, t: Tensor) -> Tensor:  # the schedule's per-sample error
        return schedule.error(prediction, target, t, cfg.flow_error)

    pred_p = policy(x_t, t, cond)
    err_p = error(pred_p, target, t)
    err_r = None
    metrics: Dict[str, Tensor] = {}

    if name == "kto":
        if cfg.reference_point == "unrelated":
            m = unrelated_pair_count(n, cfg.reference_point_fraction)  # the first m samples' pairs
            x0_u = x0[:m]
            t_u = schedule.sample_timesteps(m, x0.device, generator)
            noise_u = _randn_like(x0_u, generator)
            x_u = schedule.add_noise(x0_u, noise_u, t_u)
            target_u = schedule.target(x0_u, noise_u, t_u)
            cond_u = map_cond(lambda c: c[:m], unrelated_cond(cond, cond_unrelated))
            with torch.no_grad():
                t_all = torch.cat([t, t_u])
                err_r_all = error(reference(torch.cat([x_t, x_u]), t_all, cat_cond(cond, cond_u)),
                                  torch.cat([target, target_u]), t_all)
                err_r, err_r_u = err_r_all[:n], err_r_all[n:]
                err_p_u = error(policy(x_u, t_u, cond_u), target_u, t_u)
            z_ref = reference_point(err_p_u, err_r_u, reduce_mean)
        else:
            with torch.no_grad():
                err_r = error(reference(x_t, t, cond), target, t)
            z_ref = (
                reference_point(err_p, err_r, reduce_mean)
                if cfg.reference_point == "batch"
                else torch.zeros((), device=x0.device)
            )
        out = O.kto_loss(
            err_p, err_r, labels, beta=cfg.beta, z_ref=z_ref, utility=cfg.utility,
            lambda_desirable=cfg.lambda_desirable, lambda_undesirable=cfg.lambda_undesirable,
        )
    elif name == "dpo":
        with torch.no_grad():
            err_r = error(reference(x_t, t, cond), target, t)
        h = n // 2
        out = O.dpo_loss(err_p[:h], err_r[:h], err_p[h:], err_r[h:], beta=cfg.beta)
    elif name == "nft":  # it mixes the predictions themselves, then measures errors like every other objective
        with torch.no_grad():
            pred_r = reference(x_t, t, cond)
        err_r = error(pred_r, target, t)
        v_pos, v_neg = O.nft_implicit_policies(pred_p, pred_r, cfg.beta)
        out = O.nft_loss(error(v_pos, target, t), error(v_neg, target, t), O.nft_reward(labels),
                         err_policy=err_p, err_ref=err_r, beta=cfg.beta)
    elif name == "sft":
        out = O.sft_loss(err_p, labels)
    elif name == "csft":
        out = O.csft_loss(err_p)
    else:  # bce
        out = O.bce_loss(err_p, labels)

    metrics.update(out.metrics)
    metrics["loss"] = out.loss.detach().float()
    metrics["err/policy"] = err_p.detach().float().mean()
    if err_r is not None:
        metrics["err/reference"] = err_r.float().mean()
    return StepOutput(out.loss, metrics, err_p.detach(), None if err_r is None else err_r.detach())
