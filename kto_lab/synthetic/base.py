"""The base text-to-image model of the shapes world, trained from scratch on CPU.

Three steps, each a plain function:

1. :func:`build_skeleton`: a tiny SD pipeline from config (SD's :meth:`~kto_lab.sd.families.sd.SDFamily.build_tiny`:
   ``UNet2DConditionModel`` with cross-attention, ``AutoencoderKL`` with one 2x down-sampling,
   a 2-layer ``CLIPTextModel``, a CLIP tokenizer built here in which every word of the shapes
   grammar is one token, a DDPM scheduler).
2. :func:`train_vae`: random VAE weights do not reconstruct, so the VAE is trained here first on
   shapes images (L2 reconstruction + a 1e-6 KL term, as SD's VAE). Its ``scaling_factor`` is
   then set to 1 / std of the latents, as SD does, so the UNet sees unit-variance latents.
3. :func:`train_unet`: the UNet learns to draw captions with the project's own SD trainer
   (``kto_lab.train``, objective ``sft`` on every render, ``gamma = 1``: plain denoising
   pretraining, Diffusion-KTO eq. 1), and is copied into the pipeline, which then loads like
   any SD model (:func:`kto_lab.sd.models.load_pipeline`).

The text encoder keeps its random initial weights and stays frozen: a fixed random feature map
of the caption tokens, from which the UNet's cross-attention learns to read the caption
(measured by :mod:`kto_lab.synthetic.fidelity`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from ..images import to_pil
from ..sd.families.sd import SDFamily
from .shapes import MAX_TOKENS, VOCABULARY, ShapesDataset

FAMILY = SDFamily()  # the shapes world's pipeline is an SD 1.x one (a UNet, one CLIP tower, DDPM)
KL_WEIGHT = 1e-6  # SD's VAE weighs its KL term by 1e-6 against the reconstruction


def build_skeleton(
    path: str | Path, *, image_size: int = 16, block_out_channels: Sequence[int] = (32, 64), seed: int = 0,
) -> Path:
    """The pipeline to train: SD's tiny pipeline (``SDFamily.build_tiny``) with the shapes vocabulary, and a
    smaller VAE (16 channels, no attention; 4 latent channels at half resolution) that trains in a minute."""
    from diffusers import AutoencoderKL

    path = FAMILY.build_tiny(
        path, image_size=image_size, words=VOCABULARY, block_out_channels=tuple(block_out_channels),
        text_hidden_size=32, text_layers=2, max_text_length=MAX_TOKENS, latent_channels=4, seed=seed,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=image_size, mid_block_add_attention=False,
    )
    shutil.rmtree(path / "vae")
    vae.save_pretrained(path / "vae", safe_serialization=True)
    return path


def train_vae(
    pipeline_dir: str | Path, dataset: ShapesDataset, *, steps: int = 600, batch_size: int = 64,
    learning_rate: float = 2e-3, seed: int = 0, progress: bool = True,
) -> Dict[str, float]:
    """Train ``pipeline_dir/vae`` on ``dataset`` images and save it back (with its scaling factor).

    Returns ``{"recon_mse": ..., "scaling_factor": ...}`` (MSE in [-1, 1] pixel units, on the
    posterior mean of the whole dataset).
    """
    from diffusers import AutoencoderKL
    from tqdm.auto import tqdm

    vae_dir = Path(pipeline_dir) / "vae"
    vae = AutoencoderKL.from_pretrained(vae_dir)
    vae.train()
    x_all = torch.from_numpy(dataset.images) * 2 - 1
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=learning_rate, total_steps=steps, pct_start=0.1)
    for _ in tqdm(range(steps), desc="vae", disable=not progress):
        x = x_all[torch.randint(len(x_all), (batch_size,), generator=g)]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        loss = (rec - x).pow(2).mean() + KL_WEIGHT * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
    vae.eval()
    with torch.no_grad():
        lat, err = [], []
        for chunk in x_all.split(256):
            z = vae.encode(chunk).latent_dist.mode()
            lat.append(z)
            err.append((vae.decode(z).sample.clamp(-1, 1) - chunk).pow(2).flatten(1).mean(1))
        scaling = float(1.0 / torch.cat(lat).std())
        mse = float(torch.cat(err).mean())
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(vae_dir, safe_serialization=True)
    return {"recon_mse": mse, "scaling_factor": scaling}


def write_image_records(
    images: np.ndarray, captions: Sequence[str], labels: Sequence[int], out_dir: str | Path, *,
    scores: Optional[Sequence[float]] = None, name: str = "records.csv", prefix: str = "img",
) -> Path:
    """Save images as PNGs under ``out_dir/images`` and a binary-feedback record table beside them."""
    from kto_lab.data.records import write_records

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, cap, lab) in enumerate(zip(images, captions, labels)):
        rel = f"images/{prefix}{i:06d}.png"
        to_pil(img).save(out_dir / rel)
        row = {"image": rel, "caption": cap, "label": int(lab), "source_id": f"{prefix}{i:06d}"}
        if scores is not None:
            row["score"] = float(scores[i])
        rows.append(row)
    return write_records(rows, out_dir / name)


def write_image_pairs(
    images: np.ndarray, captions: Sequence[str], pairs: Sequence[tuple], out_dir: str | Path, *,
    name: str = "pairs.csv", prefix: str = "img",
) -> Path:
    """A Diffusion-DPO pair table over images saved by :func:`write_image_records` (same prefix)."""
    from kto_lab.data.records import write_pairs

    out_dir = Path(out_dir)
    for i in sorted({i for p in pairs for i in p}):
        f = out_dir / f"images/{prefix}{i:06d}.png"
        if not f.exists():
            f.parent.mkdir(parents=True, exist_ok=True)
            to_pil(images[i]).save(f)
    rows = [{"caption": captions[w], "image_w": f"images/{prefix}{w:06d}.png", "image_l": f"images/{prefix}{l:06d}.png"}
            for w, l in pairs]
    return write_pairs(rows, out_dir / name)


def install_unet(unet_dir: str | Path, pipeline_dir: str | Path) -> Path:
    """Copy a trained diffusers UNet directory into a pipeline (replacing its ``unet/``)."""
    unet_dir, dst = Path(unet_dir), Path(pipeline_dir) / "unet"
    if not (unet_dir / "config.json").is_file():
        raise FileNotFoundError(f"{str(unet_dir)!r} is not a diffusers UNet directory (expected config.json)")
    tmp = dst.with_name("unet.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(unet_dir, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return dst


def write_card(pipeline_dir: str | Path, info: dict) -> None:
    (Path(pipeline_dir) / "shapes_world.json").write_text(json.dumps(info, indent=2))
