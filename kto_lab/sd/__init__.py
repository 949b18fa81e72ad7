"""Stable Diffusion: model families SD 1.x/2.x, SDXL and SD3, one file each behind one protocol (``families``),
models (``models``, ``components``, ``hub``, ``tiny``), a batch into a step's inputs (``encoding``), the trainer's
config (``config``), data sources (``data``), latent cache (``cache``), the trainer (``trainer``).

Submodules import diffusers lazily; ``from kto_lab.sd.trainer import Trainer, train``.
"""
