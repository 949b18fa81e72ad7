"""Implicit reward accuracy of a fine-tuned model against its base, two metrics.

A trained model's implicit reward of an image (Diffusion-KTO eq. 7, DESIGN.md):

    g(x)   = E_{t, eps} [ err_ref(x_t, t, c) - err_policy(x_t, t, c) ]     (> 0: the policy prefers x)
    reward = beta * g(x)

estimated with ``n_draws`` (t, eps) draws per image, the SAME draws for policy and reference
(a fixed seed). ``beta`` scales the rewards but never changes an order or a sign, so neither
accuracy depends on it.

* **Implicit reward accuracy** (pairwise; Diffusion-DPO Table 2, supplement S4.1 eq. 48-49), on a
  held-out PAIR table (caption, winner, loser): the share of pairs whose winner gets a higher
  reward than its loser. Within a pair, winner and loser see the same t and noise in every draw
  (eq. 48 holds for a shared c, t and q_t); the reward difference is averaged over the draws
  (the paper: 10 draws of t). A tie counts half. This is the number to compare with Table 2.
* **Sign accuracy** (per image; ours, for per-image binary labels), on a held-out RECORD table
  (image, caption, label): the share of images whose reward has the sign of their label
  (desirable -> positive, undesirable -> negative); a reward of exactly 0 counts half. It
  needs no pairs, but it is not the papers' metric: a model can rank every pair right while
  every reward is positive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from kto_lab.objectives import denoising_error, implicit_reward
from kto_lab.schedule import FlowMatchingSchedule, NoiseSchedule


@dataclass
class SignAccuracy:
    """Per-image sign accuracy on held-out binary labels (not the papers' metric; see the module)."""

    accuracy: float
    accuracy_desirable: float
    accuracy_undesirable: float
    n: int
    n_skipped: int = 0
    rewards: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def to_dict(self) -> Dict[str, float]:
        return {"metric": "sign_accuracy", "accuracy": self.accuracy, "accuracy_desirable": self.accuracy_desirable,
                "accuracy_undesirable": self.accuracy_undesirable, "n": self.n, "n_skipped": self.n_skipped}


@dataclass
class PairwiseAccuracy:
    """Implicit reward accuracy on held-out pairs (Diffusion-DPO Table 2)."""

    accuracy: float
    n: int
    n_skipped: int = 0
    rewards_winner: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    rewards_loser: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def to_dict(self) -> Dict[str, float]:
        margin = float(np.mean(self.rewards_winner - self.rewards_loser)) if self.n else float("nan")
        return {"metric": "pairwise_accuracy", "accuracy": self.accuracy, "mean_reward_margin": margin, "n": self.n,
                "n_skipped": self.n_skipped}


def sign_accuracy(rewards, labels) -> SignAccuracy:
    """Share of rewards whose sign matches the label (1 desirable -> reward > 0); 0 counts half."""
    r, y = np.asarray(rewards, dtype=np.float64), np.asarray(labels).astype(int)
    if r.shape != y.shape:
        raise ValueError(f"rewards {r.shape} and labels {y.shape} differ in shape")
    hit = np.where(r == 0, 0.5, ((r > 0) == (y > 0)).astype(float))

    def mean(x):
        return float(x.mean()) if x.size else float("nan")

    return SignAccuracy(mean(hit), mean(hit[y > 0]), mean(hit[y <= 0]), int(r.size), rewards=r, labels=y)


def pairwise_accuracy(rewards_winner, rewards_loser) -> PairwiseAccuracy:
    """Share of pairs whose winner's reward exceeds its loser's (Diffusion-DPO Table 2); a tie counts half."""
    w, l = np.asarray(rewards_winner, dtype=np.float64), np.asarray(rewards_loser, dtype=np.float64)
    if w.shape != l.shape or w.ndim != 1:
        raise ValueError(f"winner rewards {w.shape} and loser rewards {l.shape} must be aligned 1-D arrays")
    hit = np.where(w == l, 0.5, (w > l).astype(float))
    return PairwiseAccuracy(float(hit.mean()) if hit.size else float("nan"), int(w.size), rewards_winner=w,
                            rewards_loser=l)


def _draws(schedule: NoiseSchedule | FlowMatchingSchedule, latents: torch.Tensor, n_draws: int,
           generator: Optional[torch.Generator]) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """``n_draws`` (t, noise) draws for a batch of latents, from ``generator`` (CPU, so a seed fixes them)."""
    for _ in range(n_draws):
        t = schedule.sample_timesteps(latents.shape[0], generator=generator).to(latents.device)
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
        yield t, noise


def _reward(policy, reference, schedule: NoiseSchedule | FlowMatchingSchedule, latents, cond, t, noise, beta: float) -> torch.Tensor:
    x_t = schedule.add_noise(latents, noise, t)
    target = schedule.target(latents, noise, t)
    err_p = denoising_error(policy(x_t, t, cond), target)
    err_r = denoising_error(reference(x_t, t, cond), target)
    return implicit_reward(err_p, err_r, beta).float().cpu()


@torch.no_grad()
def implicit_rewards(policy, reference, schedule: NoiseSchedule | FlowMatchingSchedule, latents: torch.Tensor,
                     cond, *, beta: float = 5000.0, n_draws: int = 4,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``beta * mean_draws(err_ref - err_policy)`` per sample; policy and reference see the same x_t, t."""
    total = torch.zeros(latents.shape[0], dtype=torch.float32)
    for t, noise in _draws(schedule, latents, n_draws, generator):
        total += _reward(policy, reference, schedule, latents, cond, t, noise, beta)
    return total / n_draws


@torch.no_grad()
def implicit_reward_pairs(policy, reference, schedule: NoiseSchedule | FlowMatchingSchedule,
                          latents_winner: torch.Tensor, latents_loser: torch.Tensor, cond, *, cond_loser=None,
                          beta: float = 5000.0, n_draws: int = 4, generator: Optional[torch.Generator] = None):
    """Rewards of the winners and of the losers of pairs of one caption each; in every draw the loser
    of a pair sees its winner's t and noise (Diffusion-DPO S4.1, eq. 48-49). ``cond_loser``: the
    losers' conditioning where it is not ``cond`` (SDXL: the same caption, their own size and crop)."""
    if latents_winner.shape != latents_loser.shape:
        raise ValueError(f"winner latents {tuple(latents_winner.shape)} and loser latents "
                         f"{tuple(latents_loser.shape)} differ in shape")
    total_w = torch.zeros(latents_winner.shape[0], dtype=torch.float32)
    total_l = torch.zeros_like(total_w)
    for t, noise in _draws(schedule, latents_winner, n_draws, generator):
        total_w += _reward(policy, reference, schedule, latents_winner, cond, t, noise, beta)
        total_l += _reward(policy, reference, schedule, latents_loser, cond if cond_loser is None else cond_loser,
                           t, noise, beta)
    return total_w / n_draws, total_l / n_draws


def evaluate_implicit_accuracy(
    pipeline_path,
    records_path=None,
    *,
    pairs_path=None,
    denoiser_path=None,
    lora_path=None,
    beta: float = 5000.0,
    n_draws: int = 4,
    seed: int = 0,
    batch_size: int = 8,
    resolution: Optional[int] = None,
    device: str = "cpu",
    limit: Optional[int] = None,
    progress: bool = True,
):
    """Implicit reward accuracy of a fine-tuned model (``denoiser_path`` or ``lora_path``) against the base
    pipeline at ``pipeline_path``: on held-out pairs at ``pairs_path`` (caption, image_w, image_l) the
    pairwise accuracy of Diffusion-DPO Table 2 (:class:`PairwiseAccuracy`); on held-out records at
    ``records_path`` (image, caption, label) the per-image sign accuracy (:class:`SignAccuracy`).

    With a LoRA the reference is the same denoiser with its adapters disabled (exact); with a full fine-tune
    the reference is the base pipeline's denoiser. The family of the pipeline gives the rest: its conditioning,
    denoiser call and training schedule (SD3: velocity errors under its logit-normal timesteps); images and
    captions become latents and conditioning as in training (:class:`kto_lab.sd.encoding.BatchEncoder`, the
    VAE posterior's mode). Unreadable images are skipped and counted.
    """
    from tqdm.auto import tqdm

    from kto_lab.config import ConfigError, check_positive, check_range
    from kto_lab.data.records import load_pairs, load_records
    from kto_lab.sd.components import load_denoiser
    from kto_lab.sd.data import crop_image, image_batch
    from kto_lab.sd.encoding import BatchEncoder
    from kto_lab.sd.families import family_of_pipeline
    from kto_lab.sd.models import check_model_paths, load_pipeline

    # every check before any model loads
    if (denoiser_path is None) == (lora_path is None):
        raise ConfigError("implicit reward accuracy compares a fine-tuned model with its base: give exactly one of "
                          "denoiser (a fine-tuned denoiser directory, e.g. a run's unet/) or lora (LoRA weights)")
    if (records_path is None) == (pairs_path is None):
        raise ConfigError("implicit reward accuracy needs exactly one of pairs_path (held-out pairs: the pairwise "
                          "accuracy of Diffusion-DPO Table 2) or records_path (per-image labels: sign accuracy)")
    check_range("draws", n_draws, low=1)
    check_range("batch_size", batch_size, low=1)
    check_positive("beta", beta)
    if limit is not None:
        check_range("limit", limit, low=1)
    check_model_paths(pipeline_path, denoiser_path, lora_path)
    pairs = pairs_path is not None
    table = load_pairs(pairs_path, on_missing_image="skip") if pairs else load_records(records_path, on_missing_image="skip")
    pipe = load_pipeline(pipeline_path, lora_path=lora_path)
    family = family_of_pipeline(pipe)  # its text towers, conditioning, denoiser and schedule
    base = family.denoiser_of(pipe).to(device).eval()
    if denoiser_path is not None:
        reference = family.denoiser(base)
        tuned = load_denoiser(denoiser_path, family).to(device).eval()
        family.check_denoiser(tuned.config, f"denoiser_path={str(denoiser_path)!r}")
        policy = family.denoiser(tuned)
    else:
        policy = family.denoiser(base)
        reference = family.adapters_disabled_denoiser(base)
    pipe.vae.to(device).eval()
    for encoder in family.text_encoders(pipe):
        encoder.to(device).eval()
    res = resolution or base.config.sample_size * pipe.vae_scale_factor
    schedule = family.schedule(pipe.scheduler, res)
    encode = BatchEncoder(family, device=device, resolution=res, latent_mode="mode", vae=pipe.vae,
                          text_encoders=family.text_encoders(pipe))
    tokenizers = family.tokenizers(pipe)
    generator = torch.Generator().manual_seed(seed)
    n = len(table) if limit is None else min(limit, len(table))

    rewards, labels, skipped = [], [], 0  # pairs: rewards of the winners, "labels" those of the losers
    for start in tqdm(range(0, n, batch_size), desc="implicit reward", disable=not progress):
        idx = [i for i in range(start, min(n, start + batch_size))]
        images = [(i, table.load_pair(i) if pairs else table.load_image(i)) for i in idx]
        good = [(i, im) for i, im in images if im is not None]
        skipped += len(images) - len(good)
        if not good:
            continue
        captions = [table.captions[i] for i, _ in good]
        if pairs:
            crops, crops_l = ([crop_image(p[k], res) for _, p in good] for k in (0, 1))
            inputs = encode(image_batch(family, tokenizers, crops, captions, crops_l))
            r_w, r_l = implicit_reward_pairs(policy, reference, schedule, inputs.x0, inputs.x0_loser, inputs.cond,
                                             cond_loser=inputs.cond_loser, beta=beta, n_draws=n_draws,
                                             generator=generator)
            rewards.append(r_w.numpy())
            labels.append(r_l.numpy())
            continue
        inputs = encode(image_batch(family, tokenizers, [crop_image(im, res) for _, im in good], captions))
        rewards.append(implicit_rewards(policy, reference, schedule, inputs.x0, inputs.cond, beta=beta,
                                        n_draws=n_draws, generator=generator).numpy())
        labels.append(np.asarray([table.labels[i] for i, _ in good]))
    if not rewards:
        from kto_lab.data.tables import DataError

        raise DataError(f"no readable images in {str(pairs_path if pairs else records_path)!r} ({skipped} skipped)")
    out = (pairwise_accuracy if pairs else sign_accuracy)(np.concatenate(rewards), np.concatenate(labels))
    out.n_skipped = skipped
    return out
