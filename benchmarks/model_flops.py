"""Parameter counts, model FLOPs and a weights-and-optimizer memory estimate of SD 1.5's, SDXL's and SD3's
networks, on the meta device (shapes only, no memory, no GPU): where the FLOP arithmetic and the memory
tables of ``benchmarks/README.md`` and ``docs/training.md`` come from.

    python benchmarks/model_flops.py --config sdxl            # 1024 px
    python benchmarks/model_flops.py --config sd3             # 1024 px, SD3 medium's transformer
    python benchmarks/model_flops.py --config sd15            # 512 px

Per image (or caption): UNet (SD3: transformer) forward, forward + backward (a full fine-tune's policy
pass), VAE encoder, each text encoder; ``torch.utils.flop_counter.FlopCounterMode`` counts matmul, convolution and
attention FLOPs. Memory (GiB, an ESTIMATE: tensors that persist through a step, no activations, no
allocator overhead): fp32 trainable weights, their gradients and optimizer state (AdamW: two moments;
Adafactor as transformers implements it without a first moment: factored second moments of every
tensor with two or more dims), the bf16/fp16 frozen weights. The architectures are those of
``benchmarks/sd_step.py``'s model sets.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sd_step  # noqa: E402  (the model sets and builders)

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the trainer's default lora.target_modules


def lora_params(unet, rank: int = 8, targets: Sequence[str] = LORA_TARGETS) -> int:
    """Parameters of rank-``rank`` LoRA adapters on the attention projections ``targets`` (A: r x in, B: out x r)."""
    return sum(rank * (m.in_features + m.out_features) for name, m in unet.named_modules()
               if isinstance(m, torch.nn.Linear) and name.endswith(tuple(targets)))


def adafactor_state_numel(shape: torch.Size) -> int:
    """Elements of transformers' Adafactor state of one tensor (no first moment): row and column second
    moments when it has two or more dims, a full one otherwise."""
    if len(shape) < 2:
        return shape.numel()
    return torch.Size(shape[:-1]).numel() + torch.Size(shape[:-2] + shape[-1:]).numel()


def memory_estimate_gib(unet, encoders_and_vae_params: int, vae_params: int, lora: int) -> Dict[str, float]:
    """What persists through a step, per configuration (GiB); activations not included."""
    gib = 2 ** 30
    n = sum(p.numel() for p in unet.parameters())
    adafactor = sum(adafactor_state_numel(p.shape) for p in unet.parameters())
    half_copy = 2 * n
    return {
        "full_adamw_gib": (4 * n + 4 * n + 8 * n + half_copy) / gib,  # fp32 weights, grads, 2 moments; bf16 reference
        "full_adafactor_gib": (4 * n + 4 * n + 4 * adafactor + half_copy) / gib,
        "lora_disabled_adapters_gib": (half_copy + 16 * lora) / gib,  # bf16 base; fp32 LoRA, grads, 2 moments
        "lora_frozen_copy_gib": (2 * half_copy + 16 * lora) / gib,
        "encoders_uncached_gib": (2 * (encoders_and_vae_params - vae_params) + 4 * vae_params) / gib,  # bf16 text, fp32 VAE
    }


def count(models: sd_step.ModelSet, resolution: int) -> Dict[str, float]:
    fam = sd_step.family(models)
    targets = models.lora_targets or LORA_TARGETS
    with torch.device("meta"):
        unet = sd_step.build_denoiser(models)
        vae = sd_step.build_vae(models)
        encoders = sd_step.build_text_encoders(models)
        base = {"unet": unet, "vae": vae, **encoders}
        batch = sd_step.make_batch(base, models, cached=True, pairs=False, batch_size=1, resolution=resolution)
        text = {k: batch[k].float() for k in fam.text_keys}
        cond = fam.cond(text, {k: batch[k] for k in fam.image_keys}, resolution)
        latents = torch.chunk(batch["latent_moments"].float(), 2, dim=1)[0]
        t = torch.tensor([500])
        pixels = torch.zeros(1, 3, resolution, resolution)
        ids = {tw.ids_key: torch.zeros(1, tw.max_length or encoders[tw.encoder].config.max_position_embeddings,
                                       dtype=torch.long) for tw in fam.towers}
        denoise = fam.denoiser(unet)
        out = {"unet_params_m": sum(p.numel() for p in unet.parameters()) / 1e6,
               "vae_params_m": sum(p.numel() for p in vae.parameters()) / 1e6,
               "lora_rank8_params_m": lora_params(unet, targets=targets) / 1e6}
        for name, enc in encoders.items():
            out[f"{name}_params_m"] = sum(p.numel() for p in enc.parameters()) / 1e6
        with torch.no_grad():
            out["unet_forward_tflop"] = sd_step.count_flops(lambda: denoise(latents, t, cond)) / 1e12
            out["vae_encoder_tflop"] = sd_step.count_flops(lambda: vae.encode(pixels)) / 1e12
            for tw in fam.towers:
                enc = encoders[tw.encoder]
                out[f"{tw.encoder}_tflop"] = sd_step.count_flops(lambda: enc(ids[tw.ids_key])) / 1e12
        out["unet_forward_backward_tflop"] = sd_step.count_flops(lambda: denoise(latents, t, cond).sum().backward()) / 1e12
        vae_params = sum(p.numel() for p in vae.parameters())
        frozen = vae_params + sum(p.numel() for e in encoders.values() for p in e.parameters())
        out.update(memory_estimate_gib(unet, frozen, vae_params, lora_params(unet, targets=targets)))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(sd_step.MODEL_SETS), default="sdxl")
    p.add_argument("--resolution", type=int, default=None, help="pixels (default: the model set's, 512 / 1024)")
    args = p.parse_args(argv)
    models = sd_step.MODEL_SETS[args.config]
    resolution = args.resolution or models.resolution
    result = {"config": args.config, "resolution": resolution, "torch": torch.__version__, **count(models, resolution)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
