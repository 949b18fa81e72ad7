"""Tiny, randomly initialised scorer weights in the released formats, for tests and demos.

Each builder writes files laid out like the real download, so that the scorer loads them
through exactly the same code path: a transformers CLIP directory (model + processor), the
aesthetic MLP ``.pth``, an open_clip-format HPS v2 checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from kto_lab.sd.tiny import write_clip_tokenizer

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def build_tiny_clip(path, *, words: Sequence[str] = (), image_size: int = 32, hidden: int = 32,
                    projection_dim: int = 16, hidden_act: str = "gelu", seed: int = 0, max_length: int = 16) -> Path:
    """A tiny ``CLIPModel`` + ``CLIPProcessor`` saved with ``save_pretrained`` (PickScore/CLIP layout)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    path = Path(path)
    write_clip_tokenizer(path, words, model_max_length=max_length)
    tokenizer = CLIPTokenizer.from_pretrained(path)
    torch.manual_seed(seed)
    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                  hidden_act=hidden_act, projection_dim=projection_dim)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=max_length, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **common),
        vision_config=dict(image_size=image_size, patch_size=8, **common),
        projection_dim=projection_dim,
    )
    CLIPModel(config).save_pretrained(path, safe_serialization=True)
    (path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
        "do_resize": True, "size": {"shortest_edge": image_size}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": OPENAI_MEAN, "image_std": OPENAI_STD, "do_convert_rgb": True,
    }))
    return path


def build_tiny_aesthetic(path, input_size: int = 16, seed: int = 0) -> Path:
    """An improved-aesthetic-predictor MLP state dict (random) saved with ``torch.save``."""
    from kto_lab.eval.model_scorers import AestheticMLP

    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(AestheticMLP(input_size).state_dict(), path)
    return path


def build_tiny_hps(path, clip_dir) -> Path:
    """An open_clip-format checkpoint ``{"state_dict": ...}`` made from the CLIP at ``clip_dir``
    by the inverse key mapping (what HPS_v2_compressed.pt looks like, at tiny size)."""
    from transformers import CLIPModel

    from kto_lab.eval.model_scorers import hf_to_openclip

    sd = hf_to_openclip(CLIPModel.from_pretrained(clip_dir).state_dict())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd}, path)
    return path
