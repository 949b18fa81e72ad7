"""Every alignment objective of kto_lab, as functions of per-sample denoising errors.

This module is the shared core: the 2-D toy (``toy/``) and the Stable Diffusion trainer
(``kto_lab/sd/``) call these exact functions. Nothing here knows whether the errors came
from an MLP or a UNet.

Conventions (``DESIGN.md``, "The one idea"): for a noised sample ``x_t`` of ``x_0``,

    err(m) = mean over non-batch dims of || target - m(x_t, t, c) ||^2     (per sample)
    g      = err(ref) - err(policy)        # > 0: the policy denoises this sample better
    reward = beta * g                      # implicit reward Q(a, s), Diffusion-KTO sec. 3.3

``g`` is, up to a positive constant per timestep, the per-step log-likelihood ratio
``log pi_theta(x_{t-1}|x_t) / pi_ref(x_{t-1}|x_t)`` (Diffusion-DPO eq. 9-10), so ``beta``
absorbs that constant exactly as in the official code bases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from .config import check_positive
from .reference_point import REFERENCE_POINTS, reference_point  # noqa: F401  (z_ref: kto_lab.reference_point)

Tensor = torch.Tensor

# --------------------------------------------------------------------------------------
# Utility functions U (Diffusion-KTO sec. 4.2, appendix D.4, Figure 9)
# --------------------------------------------------------------------------------------

UtilityFn = Callable[[Tensor], Tensor]
UTILITIES: Dict[str, UtilityFn] = {}


def register_utility(name: str, fn: Optional[UtilityFn] = None):
    """Register a utility ``U: R -> R`` (monotonically increasing) under ``name``.

    Usable as ``register_utility("mine", fn)`` or as a decorator ``@register_utility("mine")``.
    The objective maximises ``U`` (Diffusion-KTO eq. 8); only its gradient matters, so a
    constant offset is irrelevant (sec. 4.2).
    """

    def _register(f: UtilityFn) -> UtilityFn:
        if not callable(f):
            raise TypeError(f"utility {name!r} must be callable, got {type(f).__name__}")
        UTILITIES[name] = f
        return f

    return _register(fn) if fn is not None else _register


def get_utility(name: str) -> UtilityFn:
    """Look up a registered utility; the error lists the known names."""
    try:
        return UTILITIES[name]
    except KeyError:
        raise ValueError(
            f"unknown utility {name!r}; known utilities: {', '.join(sorted(UTILITIES))}"
        ) from None


@register_utility("kto")
def kto_utility(x: Tensor) -> Tensor:
    """Kahneman-Tversky model as adapted by KTO: ``U(x) = sigmoid(x)`` (sec. 4.2). The default."""
    return torch.sigmoid(x)


@register_utility("loss_averse")
def loss_averse_utility(x: Tensor) -> Tensor:
    """Loss-averse (concave): ``U(x) = log sigmoid(x)`` (sec. 4.2, D.4); the Diffusion-DPO form."""
    return F.logsigmoid(x)


@register_utility("risk_seeking")
def risk_seeking_utility(x: Tensor) -> Tensor:
    """Risk-seeking (convex): ``U(x) = -log sigmoid(-x)`` = softplus(x) (sec. 4.2, D.4). Unbounded above."""
    return -F.logsigmoid(-x)


def prospect_value(alpha: float = 0.88, lam: float = 2.25) -> UtilityFn:
    """The value function of prospect theory (Tversky & Kahneman 1992).

    ``v(x) = x**alpha`` for gains, ``-lam * (-x)**alpha`` for losses: concave in gains,
    convex and ``lam`` times steeper in losses. ``alpha = 0.88, lam = 2.25`` are their
    estimates. Not used by the paper (which uses the sigmoid as its stand-in); offered as
    an extra to explore. Its slope is infinite at 0, so ``|x|`` is floored at 1e-6 there.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"prospect_value: alpha must be in (0, 1], got {alpha}")
    if lam <= 0:
        raise ValueError(f"prospect_value: lam must be > 0, got {lam}")

    def value(x: Tensor) -> Tensor:
        mag = x.abs().clamp_min(1e-6) ** alpha
        return torch.where(x >= 0, mag, -lam * mag)

    return value


register_utility("prospect", prospect_value())


def centered(utility: UtilityFn) -> UtilityFn:
    """``U_centered(x) = U(x) - U(0)`` so that ``U_centered(0) = 0`` (sec. 4.2, Figure 9)."""

    def u(x: Tensor) -> Tensor:
        return utility(x) - utility(torch.zeros((), dtype=x.dtype, device=x.device))

    return u


# --------------------------------------------------------------------------------------
# Errors, implicit rewards and the reference point
# --------------------------------------------------------------------------------------


def denoising_error(prediction: Tensor, target: Tensor) -> Tensor:
    """Per-sample squared error, mean over all non-batch dims (the summand of eq. 1).

    Computed in float32 whatever the model's precision, so bf16 UNets give stable rewards.
    """
    diff = prediction.float() - target.float()
    return diff.pow(2).reshape(diff.shape[0], -1).mean(dim=1)


def implicit_reward(err_policy: Tensor, err_ref: Tensor, beta: float) -> Tensor:
    """``beta * (err_ref - err_policy)``: the implicit reward Q(a, s) (sec. 3.3, eq. 7)."""
    return beta * (err_ref - err_policy)


# --------------------------------------------------------------------------------------
# Objectives. Each returns an ObjectiveOutput: the scalar loss and detached diagnostics.
# --------------------------------------------------------------------------------------


@dataclass
class ObjectiveOutput:
    """``metrics`` are detached 0-dim float32 tensors on the loss's device: computing them never
    waits for the device. Turn them into numbers with :func:`metrics_to_floats` when logging."""

    loss: Tensor
    metrics: Dict[str, Tensor] = field(default_factory=dict)


def metrics_to_floats(metrics: Dict[str, Tensor]) -> Dict[str, float]:
    """One device-to-host copy for a whole metrics dict (NaN marks "no sample of that kind")."""
    if not metrics:
        return {}
    values = torch.stack([v.detach().float().reshape(()) for v in metrics.values()]).tolist()
    return dict(zip(metrics, values))


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` where ``mask``; NaN when the mask is empty. No host sync (unlike ``x[mask]``)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum()


def _labels_as_sign(labels: Tensor) -> Tensor:
    """Map labels (bool, {0,1} or {-1,+1}) to ``w(x0) = +1 / -1`` (eq. 8)."""
    labels = labels.float()
    return torch.where(labels > 0, 1.0, -1.0)


def _check_beta(beta: float) -> None:
    check_positive("beta", beta)


def _reward_metrics(rewards: Tensor, sign: Tensor) -> Dict[str, Tensor]:
    """TRL-style names: rewards of the desirable ('chosen') and undesirable ('rejected') samples.
    A class absent from the batch gives NaN (skipped when the trainer averages over steps)."""
    rewards = rewards.detach().float()
    m = {"rewards/desirable": _masked_mean(rewards, sign > 0),
         "rewards/undesirable": _masked_mean(rewards, sign < 0)}
    m["rewards/margin"] = m["rewards/desirable"] - m["rewards/undesirable"]
    m["rewards/accuracy"] = (torch.sign(rewards) == sign).float().mean()
    return m


# |w beta (g - z_ref)| from which a sample counts as saturated: the sigmoid utility's slope is below 0.1 there
# (40 % of its largest). When most samples are, runs become sensitive to tiny changes.
SATURATED_AT = 2.0


def kto_loss(
    err_policy: Tensor,
    err_ref: Tensor,
    labels: Tensor,
    *,
    beta: float,
    z_ref: Tensor | float = 0.0,
    utility: str | UtilityFn = "kto",
    lambda_desirable: float = 1.0,
    lambda_undesirable: float = 1.0,
) -> ObjectiveOutput:
    """Diffusion-KTO, eq. 8: ``mean( lambda_y * (1 - U( w * beta * (g - z_ref) )) )``.

    ``g = err_ref - err_policy`` per sample, ``w = +1`` for desirable and ``-1`` for
    undesirable samples, ``z_ref`` from :func:`reference_point` (0 for "none"). The paper
    maximises ``E[U(.)]``; we minimise ``lambda_y * (1 - U(.))``, which differs by a
    constant and has the same gradient.
    """
    _check_beta(beta)
    U = get_utility(utility) if isinstance(utility, str) else utility
    sign = _labels_as_sign(labels).to(err_policy.device)
    g = err_ref.float() - err_policy.float()
    z = torch.as_tensor(z_ref, dtype=g.dtype, device=g.device).detach()
    x = sign * beta * (g - z)
    utility_value = U(x)
    weight = torch.where(sign > 0, float(lambda_desirable), float(lambda_undesirable))
    loss = (weight * (1.0 - utility_value)).mean()
    metrics = _reward_metrics(beta * g, sign)
    metrics["z_ref"] = beta * z
    metrics["kl"] = z.clone()
    # Share of samples where the sigmoid utility barely sends gradient (figures/kto_vs_dpo.md, section 4).
    metrics["saturated"] = (x.detach().abs() >= SATURATED_AT).float().mean()
    return ObjectiveOutput(loss, metrics)


def dpo_loss(
    err_policy_w: Tensor,
    err_ref_w: Tensor,
    err_policy_l: Tensor,
    err_ref_l: Tensor,
    *,
    beta: float,
) -> ObjectiveOutput:
    """Diffusion-DPO, its eq. 14, with the official code's scaling (``beta/2``):

        loss = -log sigmoid( -beta/2 * ((err_p(w) - err_r(w)) - (err_p(l) - err_r(l))) )

    Winner ``w`` and loser ``l`` of a pair share the noise and the timestep (the official ``train.py``
    repeats one pair member's noise and timestep; the pseudo-code of its supplement S9). ``beta`` here is
    the official ``beta_dpo`` (2000-5000 for SD 1.5), so values are comparable with theirs.
    The per-image implicit reward reported is ``beta/2 * g``.
    """
    _check_beta(beta)
    g_w = err_ref_w.float() - err_policy_w.float()
    g_l = err_ref_l.float() - err_policy_l.float()
    inside = 0.5 * beta * (g_w - g_l)
    loss = -F.logsigmoid(inside).mean()
    rewards = torch.cat([0.5 * beta * g_w, 0.5 * beta * g_l])
    sign = torch.cat([torch.ones_like(g_w), -torch.ones_like(g_l)])
    metrics = _reward_metrics(rewards, sign)
    metrics["rewards/pair_accuracy"] = (inside > 0).float().mean()
    metrics["kl"] = -0.5 * (g_w + g_l).detach().mean()  # mean excess error of the policy
    return ObjectiveOutput(loss, metrics)


def sft_loss(err_policy: Tensor, labels: Tensor) -> ObjectiveOutput:
    """SFT baseline: the plain denoising loss (eq. 1, lambda(t)=1) on desirable samples only."""
    desirable = (_labels_as_sign(labels).to(err_policy.device) > 0).float()
    n = desirable.sum()
    # a batch without desirable samples gives a zero loss that keeps the graph (no host sync)
    loss = (err_policy.float() * desirable).sum() / n.clamp_min(1.0)
    return ObjectiveOutput(loss, {"sft/desirable_in_batch": n})


CSFT_PREFIXES = ("good image, ", "bad image, ")


def csft_caption(caption: str, desirable: bool) -> str:
    """Conditional SFT: prefix the caption by label (Diffusion-KTO sec. 5, baselines)."""
    return (CSFT_PREFIXES[0] if desirable else CSFT_PREFIXES[1]) + caption


def csft_loss(err_policy: Tensor) -> ObjectiveOutput:
    """CSFT: the plain denoising loss on *all* samples; the label enters through the caption
    prefix (:func:`csft_caption`) or, in the toy, a class input. Sample with the "good" prefix."""
    return ObjectiveOutput(err_policy.float().mean(), {})


def bce_loss(err_policy: Tensor, labels: Tensor) -> ObjectiveOutput:
    """BCE baseline of the LoRA study (its sec. 3.1.3, eq. 3): ``BCE(logit = -err_policy, y)``.

    ``y = 1`` for desirable samples, 0 otherwise. No reference model is involved. The study labels
    ``y = 1`` only for "exclusive_win" (always preferred): train on a ``win_only`` Pick-a-Pic table to
    follow it (``kto_lab.data.pickapic``); the labels are the table's, whatever it is.
    """
    y = (_labels_as_sign(labels) > 0).float().to(err_policy.device)
    logits = -err_policy.float()
    loss = F.binary_cross_entropy_with_logits(logits, y)
    acc = ((logits > 0) == (y > 0)).float().mean().detach()  # sigmoid(logit) > 0.5
    return ObjectiveOutput(loss, {"bce/accuracy": acc})


# --------------------------------------------------------------------------------------
# DiffusionNFT (Zheng et al. 2025, "DiffusionNFT: Online Diffusion Reinforcement with Forward Process",
# arXiv 2509.16117, sec. 3.2): flow models only
# --------------------------------------------------------------------------------------


def nft_implicit_policies(pred_policy: Tensor, pred_ref: Tensor, beta: float):
    """DiffusionNFT's implicit positive and negative velocity policies (sec. 3.2, the implicit parameterization):

        v+ = (1 - beta) v_ref + beta v_theta        v- = (1 + beta) v_ref - beta v_theta

    ``v_ref`` is the paper's old (sampling) policy, detached here: in kto_lab's offline setting it is the
    frozen reference model that produced the labeled images. Unlike every other objective, DiffusionNFT
    mixes the *predictions* before measuring an error, so :func:`kto_lab.step.objective_step` calls this on
    the policy's and the reference's predictions, measures the errors of ``v+`` and ``v-`` with the
    schedule's per-sample error (the same one the other objectives get), and hands them to :func:`nft_loss`.
    """
    _check_beta(beta)
    ref = pred_ref.detach()
    return (1.0 - beta) * ref + beta * pred_policy, (1.0 + beta) * ref - beta * pred_policy


def nft_loss(
    err_positive: Tensor,
    err_negative: Tensor,
    reward: Tensor,
    *,
    err_policy: Tensor,
    err_ref: Tensor,
    beta: float,
) -> ObjectiveOutput:
    """DiffusionNFT's training objective (sec. 3.2, the loss of its policy-optimization theorem):

        loss = mean( r * err(v+) + (1 - r) * err(v-) )

    with ``err(v+)``, ``err(v-)`` the per-sample errors of :func:`nft_implicit_policies` against the
    forward process's target, and ``r`` in [0, 1] the optimality probability of each image (a like is 1,
    a dislike 0). Its minimiser is ``v_theta = v_ref + (2 / beta) Delta``, Delta pointing from the
    reference's velocity towards the positive images' (the theorem), so ``beta`` is a step size: small
    beta, large step. With ``beta = 1`` a liked image's term is plain flow matching (SFT).

    This is the paper's loss. NVlabs' code (``scripts/train_nft_sd3.py``; ``tests/test_nft_crosscheck.py``
    checks it numerically against this one) differs: it measures both errors on the x0 estimates
    (``objective.flow_error=x0`` here), divides each sample's error by the detached mean absolute x0
    error of its own branch (the paper's "adaptive loss weighting"), divides the loss by beta and
    multiplies it by ``adv_clip_max`` (5), maps group-normalised rewards into r by
    ``0.5 + 0.5 clip(A / 5, -1, 1)``, adds ``1e-4 * ||v_theta - v_base||^2`` towards the base model,
    and makes ``v_ref`` an exponential moving average of the policy (online RL). None of that is here.

    ``err_policy``/``err_ref`` are the plain policy and reference errors, for the implicit-reward
    metrics every objective logs (``beta * g``).
    """
    _check_beta(beta)
    r = reward.float().to(err_positive.device)
    if not bool(((r >= 0) & (r <= 1)).all()):
        raise ValueError(f"DiffusionNFT rewards must lie in [0, 1] (optimality probabilities), got "
                         f"{r.min().item():g} .. {r.max().item():g}")
    loss_pos, loss_neg = err_positive.float(), err_negative.float()
    loss = (r * loss_pos + (1.0 - r) * loss_neg).mean()
    g = err_ref.float() - err_policy.float()
    sign = torch.where(r >= 0.5, 1.0, -1.0)
    metrics = _reward_metrics(beta * g, sign)
    metrics["kl"] = -g.detach().mean()  # mean excess error of the policy, as DPO's
    metrics["nft/positive"] = _masked_mean(loss_pos.detach(), r > 0)
    metrics["nft/negative"] = _masked_mean(loss_neg.detach(), r < 1)
    return ObjectiveOutput(loss, metrics)


def nft_reward(labels: Tensor) -> Tensor:
    """A like/dislike as DiffusionNFT's optimality probability: 1 for desirable, 0 for undesirable."""
    return (_labels_as_sign(labels) > 0).float()


OBJECTIVES = ("kto", "dpo", "sft", "csft", "bce", "nft")
# Which objectives need a reference model's errors, and which need (winner, loser) pairs.
NEEDS_REFERENCE = {"kto": True, "dpo": True, "sft": False, "csft": False, "bce": False, "nft": True}
NEEDS_PAIRS = {"kto": False, "dpo": True, "sft": False, "csft": False, "bce": False, "nft": False}
# Objectives defined for flow-matching (velocity) models only: DiffusionNFT's paper gives no epsilon form.
FLOW_ONLY = ("nft",)


def check_objective(name: str) -> str:
    """Validate an objective name; the error lists the known ones. (SPIN is DPO with
    self-generated losers: use ``dpo`` with :mod:`kto_lab.spin`.)"""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known objectives: {', '.join(OBJECTIVES)}")
    return name


def check_finite(loss: Tensor, *, where: str) -> Tensor:
    """Raise a clear error if ``loss`` is NaN/inf. ``where`` names method and step."""
    if not torch.isfinite(loss).all():
        raise FloatingPointError(f"non-finite loss ({loss.detach().float().item()}) at {where}")
    return loss
