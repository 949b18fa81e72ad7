"""How much the VAE's precision and the cache's storage dtype change the latents (docs/training.md).

    python benchmarks/vae_precision.py --vae tiny_sd              # the tiny random SD pipeline's VAE
    python benchmarks/vae_precision.py --vae tiny_sdxl
    python benchmarks/vae_precision.py --vae sd15 --resolution 128 --images 2   # SD/SDXL VAE architecture

Encodes the same images with the VAE in fp32 (the trainer's default, ``model.vae_dtype=fp32``), bf16
and fp16 (what ``vae_dtype=auto`` gives under mixed precision) and compares the posterior means, scaled
as the UNet sees them, with the fp32 ones; then rounds the fp32 moments to fp16 (``data.cache_dtype=fp16``)
and compares the means and the posterior standard deviations. Errors are RMS over all latent elements,
relative to the RMS of the fp32 scaled latents, and compared with the posterior's own noise (its mean
standard deviation). Images: smooth random colour fields (seeded). Weights are random (no pretrained
VAE can be downloaded here): the figures say how the arithmetic behaves at these sizes, not how a
trained VAE does (a trained SDXL VAE overflows in fp16; a random one need not).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def smooth_images(n: int, resolution: int, seed: int = 0) -> torch.Tensor:
    """``(n, 3, R, R)`` in [-1, 1]: bilinear upsampling of a coarse random field."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(resolution, resolution), mode="bilinear", align_corners=False)


def build_vae(name: str):
    import sd_step

    if name == "sd15":
        return sd_step.build_vae(sd_step.MODEL_SETS["sd15"])
    from diffusers import AutoencoderKL

    from kto_lab.sd.families import FAMILIES

    family = FAMILIES[name.removeprefix("tiny_")]  # tiny_<family>: that family's tiny pipeline
    with tempfile.TemporaryDirectory() as tmp:
        return AutoencoderKL.from_pretrained(family.build_tiny(Path(tmp) / name), subfolder="vae")


@torch.no_grad()
def moments(vae, pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    vae = vae.to(dtype)
    return vae.encode(pixels.to(dtype)).latent_dist.parameters.float()


def compare(vae, pixels: torch.Tensor) -> Dict[str, float]:
    scale = float(vae.config.scaling_factor)
    ref = moments(vae, pixels, torch.float32)
    mean, logvar = torch.chunk(ref, 2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * scale
    rms = lambda x: float(x.pow(2).mean().sqrt())  # noqa: E731
    latent_rms = rms(mean * scale)
    out = {"scaling_factor": scale, "latent_rms": latent_rms, "posterior_std_mean": float(std.mean())}
    for name, dtype in DTYPES.items():
        m = torch.chunk(moments(vae, pixels, dtype), 2, dim=1)[0]
        err = (m - mean) * scale
        out[f"vae_{name}_mean_rel_rms_err"] = rms(err) / latent_rms
        out[f"vae_{name}_mean_max_abs_err"] = float(err.abs().max())
        out[f"vae_{name}_err_over_posterior_std"] = rms(err) / float(std.mean())
    stored = ref.half().float()
    m16, logvar16 = torch.chunk(stored, 2, dim=1)
    err = (m16 - mean) * scale
    out["cache_fp16_mean_rel_rms_err"] = rms(err) / latent_rms
    out["cache_fp16_mean_max_abs_err"] = float(err.abs().max())
    out["cache_fp16_err_over_posterior_std"] = rms(err) / float(std.mean())
    out["cache_fp16_std_rel_rms_err"] = rms(torch.exp(0.5 * logvar16.clamp(-30.0, 20.0)) * scale - std) / float(std.mean())
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vae", choices=("tiny_sd", "tiny_sdxl", "sd15"), default="tiny_sd")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    vae = build_vae(args.vae).eval()
    result = {"vae": args.vae, "resolution": args.resolution, "images": args.images, "torch": torch.__version__,
              **compare(vae, smooth_images(args.images, args.resolution, args.seed))}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
