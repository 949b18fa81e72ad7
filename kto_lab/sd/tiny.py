"""Parts of tiny random Stable Diffusion models, built from config for tests and demos (no weights downloaded).

* :func:`write_clip_tokenizer` / :func:`write_t5_tokenizer`: CLIP BPE and T5 Unigram tokenizers with a vocabulary
  made here (every byte or character, plus each given word as one token);
* :func:`tiny_text_encoder`, :func:`tiny_vae`: a CLIP text tower and an ``AutoencoderKL`` of a few thousand
  parameters; :func:`save_pipeline` writes a pipeline built from them.

Each model family's ``build_tiny`` (:mod:`kto_lab.sd.families`) assembles its pipeline from these parts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

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


def tiny_text_encoder(tokenizer, hidden_size: int, layers: int, max_length: int, with_projection: bool = False):
    """A randomly initialised CLIP text tower for ``tokenizer`` (``with_projection``: SDXL's and SD3's pooled kind)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        projection_dim=hidden_size,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def tiny_vae(image_size: int, channels: int, latent_channels: int, groups: int, **config):
    """A randomly initialised ``AutoencoderKL`` with one 2x down-sampling (``config``: e.g. the family's scaling)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(channels,) * 2,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=groups, sample_size=image_size, **config,
    )


def save_pipeline(pipe, path: Path, tok_dir: Path) -> Path:
    """``pipe.save_pretrained(path)``, then remove the tokenizer sources it was built from (``tok_dir``)."""
    import shutil

    pipe.save_pretrained(path, safe_serialization=True)
    shutil.rmtree(tok_dir)
    return path
