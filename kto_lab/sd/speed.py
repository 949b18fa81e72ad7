"""The trainer's compilation switch: ``torch.compile`` of a denoiser, whole or block by block, in place.

* ``full``: the whole denoiser is one compiled module (the largest graphs: slow to compile).
* ``regional``: each block the denoiser repeats (its family's ``compile_blocks``: a UNet's ResNet and
  transformer blocks, SD3's joint blocks) is compiled on its own; blocks of the same class and shapes share
  one compiled graph, so SD 1.5's 38 blocks compile as a few dozen small graphs (the PyTorch "regional
  compilation" recipe; diffusers' ``compile_repeated_blocks`` does the same for the classes in
  ``_repeated_blocks``, which for ``UNet2DConditionModel`` names only the transformer block).

Both use ``nn.Module.compile``, which compiles the module where it is: parameter names, the
denoisers, the LoRA adapters switch and checkpoints keep seeing the same modules.
"""

from __future__ import annotations

from typing import Sequence

import torch

COMPILE_CHOICES = ("none", "regional", "full")
COMPILE_ALIASES = {"true": "full", "false": "none"}  # model.compile was a bool (true = the whole denoiser)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
REPEATED_BLOCKS = ("ResnetBlock2D", "BasicTransformerBlock")  # SD 1.x/2.x UNets: 22 and 16 of them
# Compiled graphs a regional block may need per block instance: its shapes with grad (policy), without
# grad (unrelated pairs), in the reference's batch and dtype, and with LoRA adapters disabled.
GRAPHS_PER_BLOCK = 4


def compile_denoiser(model: torch.nn.Module, how: str, *, mode: str = "default",
                     blocks: Sequence[str] = REPEATED_BLOCKS, backend: str = "inductor") -> int:
    """Compile the denoiser ``model`` in place as ``how`` says (none | regional | full); returns how many
    modules were compiled. Shapes are static (``dynamic=False``): every block shape gets its own
    kernels, as CUDA graphs (``mode="reduce-overhead"``) need. ``blocks``: class names of the
    regions; ``backend``: torch.compile's (``aot_eager`` traces without generating code: quick
    checks on CPU)."""
    if how not in COMPILE_CHOICES:
        raise ValueError(f"compile={how!r}; choose one of {COMPILE_CHOICES}")
    options = {"dynamic": False, "backend": backend, "mode": mode}
    if how == "none":
        return 0
    if how == "full":
        model.compile(**options)
        return 1
    regions = [m for m in model.modules() if type(m).__name__ in blocks]
    if not regions:
        raise ValueError(f"model.compile_blocks={list(blocks)} matched no module of {type(model).__name__}")
    # one code object (a block class's forward) serves every instance: dynamo's per-code-object limit
    # of 8 graphs would send SD 1.5's 14 ResNet shapes back to eager without this
    limit = GRAPHS_PER_BLOCK * len(regions)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, limit)
    for module in regions:
        module.compile(**options)
    return len(regions)
