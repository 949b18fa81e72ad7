"""DiffusionNFT: kto_lab's loss against NVlabs' training code, numerically, on the same random tensors.

NVlabs' loss lives inside the training loop of ``scripts/train_nft_sd3.py`` (github.com/NVlabs/DiffusionNFT, commit
24af555, lines 908-960), not in an importable function, and that script imports its whole training stack; so
:func:`nvlabs_policy_loss` below writes out the formula as read there (written here from the reading, not copied):

* lines 910-929: advantages clipped to [-adv_clip_max, adv_clip_max] (adv_clip_max = 5, config/base.py), then
  r = clamp(A / adv_clip_max / 2 + 1/2, 0, 1);
* lines 934-937: positive velocity beta v_theta + (1 - beta) v_old, negative (1 + beta) v_old - beta v_theta;
* lines 940-956: both turned into x0 estimates x_t - t v; each sample's squared x0 error (mean over its elements)
  divided by the detached mean absolute x0 error of the same branch, floored at 1e-5 ("adaptive weighting");
* lines 959-960: (r * positive / beta + (1 - r) * negative / beta) * adv_clip_max, averaged over the batch.
  (Lines 966-970 add train.beta * ||v_theta - v_base||^2 towards the base model; kto_lab has no such term.)

kto_lab implements the paper's loss (``kto_lab.objectives.nft_loss``). The two agree once NVlabs' extras are put
back: objective.flow_error=x0, their per-sample adaptive weights, the factor adv_clip_max / beta. The test checks
the per-sample branch errors, the loss and its gradient. ``python tests/test_nft_crosscheck.py`` prints the largest
absolute differences.
"""

from __future__ import annotations

import torch

from kto_lab import objectives as O
from kto_lab.schedule import FlowMatchingSchedule

ADV_CLIP_MAX = 5.0  # NVlabs' config/base.py: train.adv_clip_max


def nvlabs_policy_loss(v_theta, v_old, x0, noise, sigma, advantages, beta, adv_clip_max=ADV_CLIP_MAX):
    """NVlabs' DiffusionNFT policy loss, from ``scripts/train_nft_sd3.py`` lines 908-960 as read (see above).
    Returns the loss, the per-sample branch losses and the adaptive weights, all in float64."""
    dims = tuple(range(1, x0.ndim))
    s = sigma.view(-1, *([1] * (x0.ndim - 1)))
    x_t = (1 - s) * x0 + s * noise
    r = (advantages.clamp(-adv_clip_max, adv_clip_max) / adv_clip_max / 2 + 0.5).clamp(0, 1)
    old = v_old.detach()
    branches = {"positive": beta * v_theta + (1 - beta) * old, "negative": (1 + beta) * old - beta * v_theta}
    losses, weights = {}, {}
    for name, v in branches.items():
        x0_hat = x_t - s * v
        with torch.no_grad():
            weights[name] = (x0_hat - x0).abs().mean(dim=dims).clamp_min(1e-5)
        losses[name] = ((x0_hat - x0) ** 2).mean(dim=dims) / weights[name]
    per_sample = (r * losses["positive"] + (1 - r) * losses["negative"]) / beta
    return (per_sample * adv_clip_max).mean(), losses, weights


def _tensors(seed=0, n=6, shape=(4, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    rand = lambda: torch.randn(n, *shape, generator=g, dtype=torch.float64)
    x0, noise, v_old = rand(), rand(), rand()
    v_theta = (v_old + 0.3 * rand()).requires_grad_(True)
    sigma = torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    labels = torch.tensor([1, 0] * (n // 2))
    return x0, noise, v_old, v_theta, sigma, labels


def crosscheck(seed=0, beta=1.0, binary=True):
    """Max abs differences (per-sample branch errors, loss, gradient) between kto_lab's and NVlabs' loss.
    ``binary``: likes and dislikes (advantages +-adv_clip_max, so r = 1 / 0, kto_lab's ``nft_reward``); else
    continuous advantages, r by the paper's 0.5 + 0.5 clip(A / Z, -1, 1) with Z = adv_clip_max."""
    x0, noise, v_old, v_theta, sigma, labels = _tensors(seed)
    schedule = FlowMatchingSchedule(num_train_timesteps=1000)
    t = sigma * 1000  # the denoiser's units; schedule.error maps them back to the noise level
    target = schedule.target(x0, noise, t)
    err = lambda v: schedule.error(v, target, t, "x0")
    v_pos, v_neg = O.nft_implicit_policies(v_theta, v_old, beta)
    err_pos, err_neg = err(v_pos), err(v_neg)
    if binary:  # NVlabs' adv_mode="binary" (sign of A) would give r = 0.5 +- 0.1: a like must be A = adv_clip_max
        advantages, r = torch.where(labels > 0, ADV_CLIP_MAX, -ADV_CLIP_MAX).double(), O.nft_reward(labels)
    else:
        advantages = 3 * torch.randn(len(labels), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        r = 0.5 + 0.5 * (advantages / ADV_CLIP_MAX).clamp(-1, 1)
    theirs, branch, weights = nvlabs_policy_loss(v_theta, v_old, x0, noise, sigma, advantages, beta)
    diff = {"positive_error": (err_pos - branch["positive"] * weights["positive"]).abs().max().item(),
            "negative_error": (err_neg - branch["negative"] * weights["negative"]).abs().max().item()}
    # kto_lab's loss with NVlabs' extras put back: their adaptive weights, times adv_clip_max / beta
    ours = O.nft_loss(err_pos / weights["positive"], err_neg / weights["negative"], r,
                      err_policy=err(v_theta), err_ref=err(v_old), beta=beta).loss * ADV_CLIP_MAX / beta
    grad_ours, = torch.autograd.grad(ours, v_theta, retain_graph=True)
    grad_theirs, = torch.autograd.grad(theirs, v_theta)
    diff["loss"] = abs(ours.item() - theirs.item())
    diff["gradient"] = (grad_ours - grad_theirs).abs().max().item()
    diff["loss_value"] = theirs.item()
    return diff


CASES = [(seed, beta, binary) for seed, beta in ((0, 1.0), (1, 0.1), (2, 0.5)) for binary in (True, False)]


def test_nft_loss_equals_nvlabs_formula_with_their_extras_put_back():
    for seed, beta, binary in CASES:
        d = crosscheck(seed, beta, binary)
        assert d["loss_value"] > 0.1  # a loss of real size, not two zeros agreeing
        for key in ("positive_error", "negative_error", "loss", "gradient"):  # kto_lab's errors are float32
            assert d[key] < 1e-5 * max(1.0, d["loss_value"]), (seed, beta, binary, key, d)


def test_nvlabs_weights_are_what_separates_the_two_losses():
    """Without their adaptive weights the losses differ: the comparison above is not vacuous."""
    x0, noise, v_old, v_theta, sigma, labels = _tensors(3)
    schedule = FlowMatchingSchedule(num_train_timesteps=1000)
    t, target = sigma * 1000, schedule.target(x0, noise, sigma * 1000)
    err = lambda v: schedule.error(v, target, t, "x0")
    v_pos, v_neg = O.nft_implicit_policies(v_theta, v_old, 1.0)
    plain = O.nft_loss(err(v_pos), err(v_neg), O.nft_reward(labels), err_policy=err(v_theta), err_ref=err(v_old),
                       beta=1.0).loss * ADV_CLIP_MAX
    likes = torch.where(labels > 0, ADV_CLIP_MAX, -ADV_CLIP_MAX).double()
    theirs = nvlabs_policy_loss(v_theta, v_old, x0, noise, sigma, likes, 1.0)[0]
    assert abs(plain.item() - theirs.item()) > 0.1


if __name__ == "__main__":
    worst = {}
    for seed, beta, binary in CASES:
        for k, v in crosscheck(seed, beta, binary).items():
            if k != "loss_value":
                worst[k] = max(worst.get(k, 0.0), v)
    print(f"max abs difference, kto_lab vs NVlabs' formula ({len(CASES)} cases: beta 1, 0.1, 0.5; binary and "
          f"continuous rewards; float64 inputs, kto_lab's errors in float32): {worst}")
