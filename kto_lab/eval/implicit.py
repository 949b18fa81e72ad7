"""Implicit reward accuracy on held-out binary labels (Diffusion-DPO paper, Table 2).

A trained model's implicit reward of an image (Diffusion-KTO eq. 7, DESIGN.md):

    g(x)   = E_{t, eps} [ err_ref(x_t, t, c) - err_policy(x_t, t, c) ]     (> 0: the policy prefers x)
    reward = beta * g(x)

estimated with ``n_draws`` (t, eps) draws per image, the SAME draws for policy and reference
(a fixed seed). Accuracy is the share of images whose reward has the sign of their label
(desirable -> positive, undesirable -> negative); a reward of exactly 0 counts half.
``beta`` scales the rewards but never changes their sign, so the accuracy does not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
import torch

from kto_lab.objectives import denoising_error, implicit_reward
from kto_lab.schedule import FlowMatchingSchedule, NoiseSchedule


@dataclass
class ImplicitAccuracy:
    accuracy: float
    accuracy_desirable: float
    accuracy_undesirable: float
    n: int
    n_skipped: int = 0
    rewards: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def to_dict(self) -> Dict[str, float]:
        return {"accuracy": self.accuracy, "accuracy_desirable": self.accuracy_desirable,
                "accuracy_undesirable": self.accuracy_undesirable, "n": self.n, "n_skipped": self.n_skipped}


def sign_accuracy(rewards, labels) -> ImplicitAccuracy:
    """Share of rewards whose sign matches the label (1 desirable -> reward > 0); 0 counts half."""
    r, y = np.asarray(rewards, dtype=np.float64), np.asarray(labels).astype(int)
    if r.shape != y.shape:
        raise ValueError(f"rewards {r.shape} and labels {y.shape} differ in shape")
    hit = np.where(r == 0, 0.5, ((r > 0) == (y > 0)).astype(float))

    def mean(x):
        return float(x.mean()) if x.size else float("nan")

    return ImplicitAccuracy(mean(hit), mean(hit[y > 0]), mean(hit[y <= 0]), int(r.size), rewards=r, labels=y)


@torch.no_grad()
def implicit_rewards(policy, reference, schedule: NoiseSchedule | FlowMatchingSchedule, latents: torch.Tensor,
                     cond, *, beta: float = 5000.0, n_draws: int = 4,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``beta * mean_draws(err_ref - err_policy)`` per sample; policy and reference see the same x_t, t."""
    total = torch.zeros(latents.shape[0], dtype=torch.float32)
    for _ in range(n_draws):
        t = schedule.sample_timesteps(latents.shape[0], generator=generator).to(latents.device)
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
        x_t = schedule.add_noise(latents, noise, t)
        target = schedule.target(latents, noise, t)
        err_p = denoising_error(policy(x_t, t, cond), target)
        err_r = denoising_error(reference(x_t, t, cond), target)
        total += implicit_reward(err_p, err_r, beta).float().cpu()
    return total / n_draws


def evaluate_implicit_accuracy(
    pipeline_path,
    records_path,
    *,
    unet_path=None,
    lora_path=None,
    beta: float = 5000.0,
    n_draws: int = 4,
    seed: int = 0,
    batch_size: int = 8,
    resolution: Optional[int] = None,
    device: str = "cpu",
    limit: Optional[int] = None,
    progress: bool = True,
) -> ImplicitAccuracy:
    """Implicit reward accuracy of a fine-tuned model (``unet_path`` or ``lora_path``) against the base
    pipeline at ``pipeline_path`` on the held-out records at ``records_path`` (image, caption, label).

    With a LoRA the reference is the same UNet with its adapters disabled (exact); with a full UNet
    the reference is the base pipeline's UNet. SD3: its transformer, and its flow schedule (velocity errors,
    SD3's logit-normal timesteps). Unreadable images are skipped and counted.
    """
    from tqdm.auto import tqdm

    from kto_lab.config import ConfigError, check_positive, check_range
    from kto_lab.data.records import load_records
    from kto_lab.sd.components import load_unet
    from kto_lab.sd.data import crop_image, geometry
    from kto_lab.sd.encoding import encode_images
    from kto_lab.sd.families import family_of_pipeline
    from kto_lab.sd.models import check_model_paths, load_pipeline

    # every check before any model loads
    if (unet_path is None) == (lora_path is None):
        raise ConfigError("implicit reward accuracy compares a fine-tuned model with its base: give exactly one of "
                          "unet (a fine-tuned UNet directory) or lora (LoRA weights)")
    check_range("draws", n_draws, low=1)
    check_range("batch_size", batch_size, low=1)
    check_positive("beta", beta)
    if limit is not None:
        check_range("limit", limit, low=1)
    check_model_paths(pipeline_path, unet_path, lora_path)
    table = load_records(records_path, on_missing_image="skip")
    pipe = load_pipeline(pipeline_path, lora_path=lora_path)
    family = family_of_pipeline(pipe)  # SD 1.x/2.x, SDXL or SD3: its text towers, conditioning, denoiser, schedule
    base = family.denoiser_of(pipe).to(device).eval()
    if unet_path is not None:
        reference = family.denoiser(base)
        policy_unet = load_unet(unet_path, family).to(device).eval()
        family.check_unet(policy_unet.config, f"unet_path={str(unet_path)!r}")
        policy = family.denoiser(policy_unet)
    else:
        policy = family.denoiser(base)
        reference = family.adapters_disabled_denoiser(base)
    pipe.vae.to(device).eval()
    for encoder in family.text_encoders(pipe):
        encoder.to(device).eval()
    schedule = family.schedule(pipe.scheduler)
    res = resolution or base.config.sample_size * pipe.vae_scale_factor
    generator = torch.Generator().manual_seed(seed)
    n = len(table) if limit is None else min(limit, len(table))
    rewards, labels, skipped = [], [], 0
    for start in tqdm(range(0, n, batch_size), desc="implicit reward", disable=not progress):
        idx = [i for i in range(start, min(n, start + batch_size))]
        images = [(i, table.load_image(i)) for i in idx]
        good = [(i, im) for i, im in images if im is not None]
        skipped += len(images) - len(good)
        if not good:
            continue
        crops = [crop_image(im, res) for _, im in good]
        pixels = torch.stack([c.pixels for c in crops]).to(device)
        latents = encode_images(pipe.vae, pixels, mode="mode").float()
        text = {k: v.to(device) for k, v in family.encode_captions(pipe, [table.captions[i] for i, _ in good]).items()}
        cond = family.cond(text, {k: v.to(device) for k, v in geometry(crops, family.image_keys).items()}, res)
        rewards.append(implicit_rewards(policy, reference, schedule, latents, cond, beta=beta, n_draws=n_draws,
                                        generator=generator).numpy())
        labels.append(np.asarray([table.labels[i] for i, _ in good]))
    if not rewards:
        from kto_lab.data.tables import DataError

        raise DataError(f"no readable images in {str(records_path)!r} ({skipped} skipped)")
    out = sign_accuracy(np.concatenate(rewards), np.concatenate(labels))
    out.n_skipped = skipped
    return out
