"""Stable Diffusion models: load any SD 1.x/2.x, SDXL or SD3 pipeline, and build tiny ones locally.

Real weights load with ``from_pretrained(local_dir_or_hub_id)`` exactly as diffusers does;
nothing here downloads unless the user passes a hub id and is online. Tests and demos use
:func:`build_tiny_sd`, :func:`build_tiny_sdxl` and :func:`build_tiny_sd3`, which write a complete,
randomly initialised pipeline (UNet or SD3 transformer, VAE, text encoder(s), tokenizer(s) with a
locally made vocabulary, scheduler) to a directory, so that it loads back through the same code path
as SD 1.5 / SDXL / SD3.
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


def write_t5_tokenizer(directory: str | Path, words: Iterable[str] = ()) -> Path:
    """Write a T5 tokenizer (``tokenizer.json``: a Unigram vocabulary, what ``T5TokenizerFast`` reads; no
    sentencepiece file) with a vocabulary made here: T5's ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, then every
    printable ASCII character (alone and as a word start ``▁c``) and each word of ``words`` as one piece.
    Characters outside it become ``<unk>``; the post-processor appends ``</s>``, as T5's does."""
    from transformers import T5TokenizerFast

    chars = [chr(c) for c in range(33, 127)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -1.0) for w in sorted({w for w in words if w})]
    pieces += [("▁" + c, -8.0) for c in chars] + [(c, -9.0) for c in chars]
    tokenizer = T5TokenizerFast(vocab=list(dict(pieces).items()), extra_ids=0)
    tokenizer.save_pretrained(str(directory))
    return Path(directory)


def _tiny_text_encoder(tokenizer, hidden_size: int, layers: int, max_length: int, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        projection_dim=hidden_size,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _tiny_vae(image_size: int, channels: int, latent_channels: int, groups: int, **config):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(channels,) * 2,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=groups, sample_size=image_size, **config,
    )


def _save_pipeline(pipe, path: Path, tok_dir: Path) -> Path:
    import shutil

    pipe.save_pretrained(path, safe_serialization=True)
    shutil.rmtree(tok_dir)
    return path


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
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    path = Path(path)
    torch.manual_seed(seed)
    tok_dir = write_clip_tokenizer(path / "_tokenizer_src", words, model_max_length=max_text_length)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    text_encoder = _tiny_text_encoder(tokenizer, text_hidden_size, text_layers, max_text_length)
    groups = min(8, block_out_channels[0])
    unet = UNet2DConditionModel(
        sample_size=image_size // 2, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=tuple(block_out_channels), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (len(block_out_channels) - 1),
        up_block_types=("UpBlock2D",) * (len(block_out_channels) - 1) + ("CrossAttnUpBlock2D",),
        cross_attention_dim=text_hidden_size, attention_head_dim=8, norm_num_groups=groups,
    )
    vae = _tiny_vae(image_size, block_out_channels[0], latent_channels, groups)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type=prediction_type, clip_sample=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return _save_pipeline(pipe, path, tok_dir)


def build_tiny_sdxl(
    path: str | Path,
    *,
    image_size: int = 32,
    words: Sequence[str] = (),
    block_out_channels: Sequence[int] = (32, 64),
    text_hidden_size: int = 32,
    text_layers: int = 2,
    max_text_length: int = 16,
    time_embed_dim: int = 8,
    seed: int = 0,
) -> Path:
    """Build a tiny SDXL pipeline from config and ``save_pretrained`` it to ``path``.

    SDXL's architecture in miniature: a ``UNet2DConditionModel`` with ``addition_embed_type="text_time"``
    (pooled text + size/crop time ids), no attention in its first block and two transformer layers in
    its last (SDXL: 0, 2, 10), linear attention projections; two text towers, the second a
    ``CLIPTextModelWithProjection`` whose pooled projection feeds the UNet, their hidden states
    concatenated for cross-attention; a VAE that asks to be upcast from fp16 (``force_upcast``) with
    SDXL's ``scaling_factor`` 0.13025; SDXL's Euler scheduler config. Random weights; load it back with
    :func:`load_pipeline` or ``StableDiffusionXLPipeline.from_pretrained``.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    path = Path(path)
    torch.manual_seed(seed)
    tok_dir = write_clip_tokenizer(path / "_tokenizer_src", words, model_max_length=max_text_length)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    tokenizer_2 = CLIPTokenizer.from_pretrained(tok_dir)
    text_encoder = _tiny_text_encoder(tokenizer, text_hidden_size, text_layers, max_text_length)
    text_encoder_2 = _tiny_text_encoder(tokenizer_2, text_hidden_size, text_layers, max_text_length, with_projection=True)
    groups = min(8, block_out_channels[0])
    n = len(block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=image_size // 2, in_channels=4, out_channels=4, block_out_channels=tuple(block_out_channels),
        layers_per_block=1, down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        transformer_layers_per_block=(1,) * (n - 1) + (2,), attention_head_dim=tuple(c // 8 for c in block_out_channels),
        cross_attention_dim=2 * text_hidden_size, use_linear_projection=True, norm_num_groups=groups,
        addition_embed_type="text_time", addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=text_hidden_size + 6 * time_embed_dim,
    )
    vae = _tiny_vae(image_size, block_out_channels[0], 4, groups, scaling_factor=0.13025, force_upcast=True)
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type="epsilon", timestep_spacing="leading", steps_offset=1,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
        unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False,
    )
    return _save_pipeline(pipe, path, tok_dir)


def build_tiny_sd3(
    path: str | Path,
    *,
    image_size: int = 32,
    words: Sequence[str] = (),
    hidden_size: int = 32,
    layers: int = 2,
    text_hidden_size: int = 32,
    text_layers: int = 2,
    max_text_length: int = 16,
    seed: int = 0,
) -> Path:
    """Build a tiny Stable Diffusion 3 pipeline from config and ``save_pretrained`` it to ``path``.

    SD3's architecture in miniature (SD3 paper sec. 4; SD3-medium's configs): an ``SD3Transformer2DModel``
    (MMDiT: joint attention over 2x2 latent patches and the text tokens, the last block context-pre-only) fed
    ``joint_attention_dim``-wide text states and a pooled projection of both CLIP towers; two
    ``CLIPTextModelWithProjection`` towers and a ``T5EncoderModel`` whose width is both CLIPs' together (SD3:
    768 + 1280 padded to T5's 4096); a VAE with 16 latent channels, no quant convs and SD3's
    ``shift_factor``/``scaling_factor``; ``FlowMatchEulerDiscreteScheduler(shift=3.0)``. The CLIP tokenizers
    and the T5 tokenizer (a Unigram ``tokenizer.json``, what ``T5TokenizerFast`` reads) get vocabularies made
    here. Random weights; load it back with :func:`load_pipeline` or ``StableDiffusion3Pipeline.from_pretrained``.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    path = Path(path)
    torch.manual_seed(seed)
    tok_dir = write_clip_tokenizer(path / "_tokenizer_src", words, model_max_length=max_text_length)
    tokenizer, tokenizer_2 = CLIPTokenizer.from_pretrained(tok_dir), CLIPTokenizer.from_pretrained(tok_dir)
    t5_dir = write_t5_tokenizer(path / "_tokenizer_src" / "t5", words)
    tokenizer_3 = T5TokenizerFast.from_pretrained(t5_dir)
    text_encoder = _tiny_text_encoder(tokenizer, text_hidden_size, text_layers, max_text_length, with_projection=True)
    text_encoder_2 = _tiny_text_encoder(tokenizer_2, text_hidden_size, text_layers, max_text_length, with_projection=True)
    joint = 2 * text_hidden_size  # T5's width: the CLIP states are zero-padded to it (SD3: 2048 -> 4096)
    text_encoder_3 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_3), d_model=joint, d_kv=8, d_ff=2 * joint, num_layers=text_layers, num_heads=4,
        feed_forward_proj="gated-gelu", pad_token_id=tokenizer_3.pad_token_id, eos_token_id=tokenizer_3.eos_token_id,
    ))
    latent_size = image_size // 2
    transformer = SD3Transformer2DModel(
        sample_size=latent_size, patch_size=2, in_channels=16, out_channels=16, num_layers=layers,
        attention_head_dim=8, num_attention_heads=hidden_size // 8, joint_attention_dim=joint,
        caption_projection_dim=hidden_size, pooled_projection_dim=2 * text_hidden_size,
        pos_embed_max_size=latent_size // 2,
    )
    groups = min(8, hidden_size)
    vae = _tiny_vae(image_size, hidden_size, 16, groups, shift_factor=0.0609, scaling_factor=1.5305,
                    use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )
    return _save_pipeline(pipe, path, tok_dir)


def check_model_paths(pipeline, unet=None, lora=None, prefix: str = "") -> None:
    """Before anything loads: ``pipeline`` is a pipeline directory (or a hub id), ``unet`` a local UNet
    directory (or a pipeline with unet/), ``lora`` an existing file or directory, and none of their weights
    files is truncated. Errors name ``prefix + field`` (``"--"`` for the command line, ``"models[0]."`` for a
    config)."""
    from .components import LORA_WEIGHTS, check_pipeline_dir, check_unet_dir, check_weight_files

    check_pipeline_dir(pipeline, prefix + "pipeline")
    if unet is not None:
        check_unet_dir(unet, prefix + "unet", local=True)
    if lora is not None and not Path(lora).exists():
        raise FileNotFoundError(f"{prefix}lora={str(lora)!r}: no such LoRA weights file or directory")
    check_weight_files(pipeline, prefix + "pipeline")
    if unet is not None:
        check_weight_files(unet, prefix + "unet")
    if lora is not None:
        lora_file = Path(lora) / LORA_WEIGHTS if Path(lora).is_dir() else Path(lora)
        if lora_file.is_file():
            check_weight_files(lora_file, prefix + "lora")


def load_pipeline(
    path_or_id: str | Path,
    *,
    torch_dtype: Optional[torch.dtype] = None,
    unet_path: Optional[str | Path] = None,
    lora_path: Optional[str | Path] = None,
    local_files_only: Optional[bool] = None,
    family: str = "auto",
):
    """Load an SD 1.x/2.x, SDXL or SD3 pipeline (local dir or hub id; the family from its ``model_index.json``),
    optionally with a fine-tuned UNet (SD3: transformer; diffusers format) or LoRA weights
    (``pytorch_lora_weights.safetensors``).

    A missing local directory gives an error naming it, before anything loads; a UNet or LoRA of another
    family (an SDXL LoRA for an SD 1.5 pipeline, an SD3 LoRA for SDXL, ...) a one-line
    :class:`~kto_lab.config.ConfigError`. Hub ids are resolved by diffusers, offline when ``HF_HUB_OFFLINE=1``
    (``local_files_only`` defaults to that).
    """
    from .components import load_unet, local_only, read_lora_state
    from .families import resolve_family

    check_model_paths(path_or_id, unet_path, lora_path)
    fam = resolve_family(path_or_id, family, field="pipeline")
    if local_files_only is None:
        local_files_only = local_only()
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    pipe = fam.pipeline_class().from_pretrained(str(path_or_id), local_files_only=local_files_only,
                                                **fam.pipeline_kwargs(), **kwargs)
    if unet_path is not None:
        unet = load_unet(unet_path, fam, **kwargs)
        fam.check_unet(unet.config, f"UNet {str(unet_path)!r}")
        setattr(pipe, fam.denoiser_subfolder, unet)
    if lora_path is not None:
        lora = Path(lora_path)
        directory, name = (lora, None) if lora.is_dir() else (lora.parent, lora.name)
        state = read_lora_state(fam, directory, name)
        check_lora_fits(fam.denoiser_of(pipe), state, f"LoRA {str(lora)!r}", fam)
        # into the denoiser, which is all it holds (the pipeline's load_lora_weights would also look for
        # text-encoder keys and log that it found none)
        fam.denoiser_of(pipe).load_lora_adapter(state, prefix=fam.denoiser_subfolder)
    return pipe


def check_lora_fits(unet, state: dict, what: str, family) -> None:
    """Every LoRA matrix of ``state`` for the family's denoiser (keys ``unet.*``; SD3 ``transformer.*``) must
    name a module of ``unet`` with matching features, and none may be for another denoiser: a LoRA trained
    for another model family (SD 1.5 vs SDXL vs SD3) fails here in one line, not deep inside peft."""
    from ..config import ConfigError
    from .families import FAMILIES

    prefix = family.denoiser_subfolder + "."
    denoiser = "UNet" if prefix == "unet." else family.denoiser_class_name
    others = tuple({f.denoiser_subfolder + "." for f in FAMILIES.values()} - {prefix})
    modules = dict(unet.named_modules())
    for key, weight in state.items():
        if ".lora" not in key:
            continue
        if key.startswith(others):
            raise ConfigError(f"{what} does not fit this {family.pipeline_class_name}'s {denoiser} (it holds LoRA "
                              f"weights of a {key.split('.')[0]}): was it trained for another model family?")
        if not key.startswith(prefix):
            continue
        name, _, kind = key[len(prefix):].partition(".lora")
        module = modules.get(name)
        width = None if module is None else (
            getattr(module, "in_features", None) if kind.startswith(("_A", ".down")) else getattr(module, "out_features", None))
        axis = 1 if kind.startswith(("_A", ".down")) else 0
        if module is None or (width is not None and weight.shape[axis] != width):
            found = "has no module" if module is None else f"has {width} features at"
            raise ConfigError(f"{what} does not fit this {family.pipeline_class_name}'s {denoiser} ({found} {name!r}): "
                              f"was it trained for another model family?")
