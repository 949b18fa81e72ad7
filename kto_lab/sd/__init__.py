"""Stable Diffusion: model families SD 1.x/2.x and SDXL (``families``), models (``models``), encoding
helpers (``encoding``), the trainer's config (``config``), data sources (``data``), latent cache
(``cache``), the trainer (``trainer``).

Submodules import diffusers lazily; ``from kto_lab.sd.trainer import Trainer, train``.
"""
