"""Stable Diffusion models: load any SD 1.x/2.x pipeline, and build a tiny one locally.

Real weights load with ``from_pretrained(local_dir_or_hub_id)`` exactly as diffusers does;
nothing here downloads unless the user passes a hub id and is online. Tests and demos use
:func:`build_tiny_sd`, which writes a complete, randomly initialised pipeline (UNet, VAE,
CLIP text encoder, a CLIP tokenizer with a locally made vocabulary, scheduler) to a
directory, so that it loads back through the same code path as SD 1.5.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def _bytes_to_unicode() -> dict:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_tokenizer(directory: str | Path, words: Iterable[str] = (), model_max_length: int = 77) -> Path:
    """Write a CLIP BPE tokenizer (vocab.json + merges.txt) with a vocabulary made here.

    Every byte is a token (alone and as a word end ``</w>``), so any text tokenizes; each
    word of ``words`` also gets the merges that make it a single token, which lets a small
    text encoder learn from short captions quickly.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    seen = set(vocab_list)
    # longest words first: a short word's first merge (e.g. "r i" of "right") must not pre-empt
    # the chain of a longer word that contains the pair ("triangle" needs "t r" first)
    for word in sorted({w.lower() for w in words if w}, key=lambda w: (-len(w), w)):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            a, b = symbols[0], symbols[1]
            merged = a + b
            if f"{a} {b}" not in merges:
                merges.append(f"{a} {b}")
            if merged not in seen:
                seen.add(merged)
                vocab_list.append(merged)
            symbols = [merged] + symbols[2:]
    vocab_list += list(SPECIAL_TOKENS)
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + ("\n" if merges else ""))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[1], "pad_token": SPECIAL_TOKENS[1], "unk_token": SPECIAL_TOKENS[1]}
    ))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, "do_lower_case": True,
        "bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[1], "pad_token": SPECIAL_TOKENS[1],
        "unk_token": SPECIAL_TOKENS[1],
    }))
    return directory


def build_tiny_sd(
    path: str | Path,
    *,
    image_size: int = 32,
    words: Sequence[str] = (),
    block_out_channels: Sequence[int] = (32, 64),
    text_hidden_size: int = 32,
    text_layers: int = 2,
    max_text_length: int = 16,
    latent_channels: int = 4,
    seed: int = 0,
    prediction_type: str = "epsilon",
) -> Path:
    """Build a tiny Stable Diffusion pipeline from config and ``save_pretrained`` it to ``path``.

    Same architecture families as SD 1.5 (``UNet2DConditionModel`` with cross-attention,
    ``AutoencoderKL`` with a 2x down-sampling, ``CLIPTextModel``), a few hundred thousand
    parameters, random weights. Load it back with :func:`load_pipeline` or any diffusers
    ``from_pretrained``.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    torch.manual_seed(seed)
    tok_dir = write_clip_tokenizer(path / "_tokenizer_src", words, model_max_length=max_text_length)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_hidden_size, intermediate_size=2 * text_hidden_size,
        num_hidden_layers=text_layers, num_attention_heads=4, max_position_embeddings=max_text_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        projection_dim=text_hidden_size,
    ))
    groups = min(8, block_out_channels[0])
    unet = UNet2DConditionModel(
        sample_size=image_size // 2, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=tuple(block_out_channels), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (len(block_out_channels) - 1),
        up_block_types=("UpBlock2D",) * (len(block_out_channels) - 1) + ("CrossAttnUpBlock2D",),
        cross_attention_dim=text_hidden_size, attention_head_dim=8, norm_num_groups=groups,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(block_out_channels[0],) * 2,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=groups, sample_size=image_size,
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type=prediction_type, clip_sample=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    return path


def check_model_paths(pipeline, unet=None, lora=None, prefix: str = "") -> None:
    """Before anything loads: ``pipeline`` is a pipeline directory (or a hub id), ``unet`` a local UNet
    directory (or a pipeline with unet/), ``lora`` an existing file or directory. Errors name
    ``prefix + field`` (``"--"`` for the command line, ``"models[0]."`` for a config)."""
    from .components import check_pipeline_dir, check_unet_dir

    check_pipeline_dir(pipeline, prefix + "pipeline")
    if unet is not None:
        check_unet_dir(unet, prefix + "unet", local=True)
    if lora is not None and not Path(lora).exists():
        raise FileNotFoundError(f"{prefix}lora={str(lora)!r}: no such LoRA weights file or directory")


def load_pipeline(
    path_or_id: str | Path,
    *,
    torch_dtype: Optional[torch.dtype] = None,
    unet_path: Optional[str | Path] = None,
    lora_path: Optional[str | Path] = None,
    local_files_only: Optional[bool] = None,
):
    """Load a Stable Diffusion 1.x/2.x pipeline (local dir or hub id), optionally with a
    fine-tuned UNet (diffusers format) or LoRA weights (``pytorch_lora_weights.safetensors``).

    A missing local directory gives an error naming it, before anything loads. Hub ids are resolved
    by diffusers, offline when ``HF_HUB_OFFLINE=1`` (``local_files_only`` defaults to that).
    """
    from diffusers import StableDiffusionPipeline

    from .components import load_unet, local_only

    check_model_paths(path_or_id, unet_path, lora_path)
    if local_files_only is None:
        local_files_only = local_only()
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    pipe = StableDiffusionPipeline.from_pretrained(
        str(path_or_id), safety_checker=None, requires_safety_checker=False,
        local_files_only=local_files_only, **kwargs,
    )
    if unet_path is not None:
        pipe.unet = load_unet(unet_path, **kwargs)
    if lora_path is not None:
        lora = Path(lora_path)
        if lora.is_dir():
            pipe.load_lora_weights(str(lora))
        else:
            pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
    return pipe
