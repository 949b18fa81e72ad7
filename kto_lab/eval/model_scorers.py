"""The paper's automatic metrics (Diffusion-KTO sec. 5, appendix A.2), loaded from local weights.

Nothing here downloads: every scorer takes the directories/files the user fetched
(see docs/evaluation.md). All CLIP-family scorers run through
``transformers.CLIPModel`` (no open_clip, which needs torchvision):

- ``PickScoreScorer``: PickScore_v1 (a fine-tuned CLIP ViT-H-14) + the laion ViT-H-14 processor;
  score = ``logit_scale.exp() * cos(image, text)`` (Kirstain et al., the reference inference code).
- ``CLIPScoreScorer``: any CLIP; score = ``100 * cos(image, text)`` (not clamped at 0, so no
  artificial ties; torchmetrics' CLIPScore is ``max(100 cos, 0)``).
- ``AestheticScorer``: the LAION improved aesthetic predictor, an MLP
  768-1024-128-64-16-1 on L2-normalised CLIP ViT-L/14 image embeddings
  (``sac+logos+ava1-l14-linearMSE.pth``); prompt-free.
- ``HPSv2Scorer``: HPS v2 / v2.1 (an open_clip ViT-H-14 checkpoint, ``HPS_v2_compressed.pt``)
  converted into a ``CLIPModel`` by renaming its state dict keys (:func:`openclip_to_hf`);
  score = ``cos(image, text)`` exactly as HPSv2's ``img_score`` (no logit scale).
- ``ImageRewardScorer``: the optional ``image-reward`` package (it pins old dependencies).

transformers 5 changed ``get_image_features``/``get_text_features`` to return a model output
whose ``pooler_output`` holds the projected features; :func:`features` handles both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from kto_lab.data.tables import DataError
from kto_lab.eval.scorers import ImageBatch, to_pil_list

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


# --- path checks: a missing or wrong directory names the path and what was expected -------


def require_clip_dir(path, what: str) -> Path:
    """``path`` must be a transformers CLIP model directory (config.json of model_type clip + weights)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{what}: {str(p)!r} is not a directory; expected a transformers CLIP model "
                                f"directory (config.json + model.safetensors)")
    cfg = p / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{what}: {str(p)!r} has no config.json; expected a transformers CLIP model directory")
    model_type = json.loads(cfg.read_text()).get("model_type")
    if model_type != "clip":
        raise DataError(f"{what}: {str(cfg)!r} has model_type={model_type!r}; expected a CLIP model ('clip')")
    if not any((p / f).is_file() for f in WEIGHT_FILES):
        raise FileNotFoundError(f"{what}: {str(p)!r} has no weights; expected one of {list(WEIGHT_FILES)}")
    return p


def require_processor_dir(path, what: str) -> Path:
    """``path`` must hold a CLIP processor: preprocessor_config.json and a tokenizer."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{what}: {str(p)!r} is not a directory; expected a CLIP processor directory "
                                f"(preprocessor_config.json + tokenizer files)")
    if not (p / "preprocessor_config.json").is_file():
        raise FileNotFoundError(f"{what}: {str(p)!r} has no preprocessor_config.json; expected a CLIP processor directory")
    if not ((p / "tokenizer.json").is_file() or ((p / "vocab.json").is_file() and (p / "merges.txt").is_file())):
        raise FileNotFoundError(f"{what}: {str(p)!r} has no tokenizer (tokenizer.json or vocab.json + merges.txt)")
    return p


def require_file(path, what: str, expected: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what}: {str(p)!r} does not exist or is not a file; expected {expected}")
    return p


def features(out) -> torch.Tensor:
    """Projected CLIP features from ``get_*_features`` (a tensor in transformers 4, a model output in 5)."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"cannot find projected features in {type(out).__name__}")
    return pooled


def load_processor(path, what: str):
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    p = require_processor_dir(path, what)
    try:
        return CLIPProcessor.from_pretrained(p)
    except Exception:  # e.g. a fast image processor that needs torchvision: use the PIL backend
        return CLIPProcessor(image_processor=CLIPImageProcessor.from_pretrained(p), tokenizer=CLIPTokenizer.from_pretrained(p))


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def _check_prompts(name: str, n: int, prompts) -> List[str]:
    if prompts is None:
        raise ValueError(f"{name} scores an image against its prompt: pass prompts (one per image)")
    prompts = list(prompts)
    if len(prompts) != n:
        raise ValueError(f"{name}: got {n} images but {len(prompts)} prompts")
    return prompts


class CLIPPairScorer:
    """Base for scorers of the form ``scale * cos(image_features, text_features)`` on a CLIPModel."""

    name = "clip_pair"

    def __init__(self, model, processor, *, device="cpu", dtype: Optional[torch.dtype] = None, batch_size: int = 16):
        self.device = torch.device(device)
        self.model = model.to(self.device, dtype=dtype).eval()
        self.processor = processor
        self.batch_size = batch_size
        self.max_length = min(int(getattr(processor.tokenizer, "model_max_length", 77)),
                              int(model.config.text_config.max_position_embeddings))

    def scale(self) -> float:
        return 1.0

    @torch.no_grad()
    def embed_images(self, images: ImageBatch) -> torch.Tensor:
        pil = to_pil_list(images)
        out = []
        for s in _batches(len(pil), self.batch_size):
            px = self.processor(images=pil[s], return_tensors="pt")["pixel_values"]
            px = px.to(self.device, dtype=next(self.model.parameters()).dtype)
            out.append(torch.nn.functional.normalize(features(self.model.get_image_features(pixel_values=px)).float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        out = []
        for s in _batches(len(prompts), self.batch_size):
            tok = self.processor.tokenizer(list(prompts[s]), padding=True, truncation=True,
                                           max_length=self.max_length, return_tensors="pt").to(self.device)
            feats = self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
            out.append(torch.nn.functional.normalize(features(feats).float(), dim=-1))
        return torch.cat(out)

    def score(self, images: ImageBatch, prompts: Optional[Sequence[str]] = None) -> np.ndarray:
        pil = to_pil_list(images)
        prompts = _check_prompts(self.name, len(pil), prompts)
        if not pil:
            return np.zeros(0)
        cos = (self.embed_images(pil) * self.embed_texts(prompts)).sum(-1)
        return (self.scale() * cos).double().cpu().numpy()


def load_clip(path, what: str, dtype: Optional[torch.dtype] = None):
    from transformers import CLIPModel

    p = require_clip_dir(path, what)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    return CLIPModel.from_pretrained(p, **kwargs)


class CLIPDirScorer(CLIPPairScorer):
    """A :class:`CLIPPairScorer` loaded from a CLIP model directory (``path``) and its processor
    (``processor_path``, default ``path``); ``what`` names them in errors."""

    what = "CLIP"

    def __init__(self, path, processor_path=None, *, device="cpu", dtype=None, batch_size: int = 16):
        model = load_clip(path, f"{self.what} model", dtype)
        processor = load_processor(processor_path or path, f"{self.what} processor")
        super().__init__(model, processor, device=device, dtype=dtype, batch_size=batch_size)


class PickScoreScorer(CLIPDirScorer):
    """PickScore (Kirstain et al. 2023): ``path`` = a ``yuvalkirstain/PickScore_v1`` download,
    ``processor_path`` = a ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` download (processor files)."""

    name = "pickscore"
    what = "PickScore"

    def scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())


class CLIPScoreScorer(CLIPDirScorer):
    """CLIP score ``100 * cos(image, text)`` with any CLIP directory (e.g. ``openai/clip-vit-large-patch14``)."""

    name = "clip"
    what = "CLIP"

    def scale(self) -> float:
        return 100.0


# --- LAION aesthetic predictor -------------------------------------------------------------


class AestheticMLP(torch.nn.Module):
    """improved-aesthetic-predictor's head: Linear(d,1024) Drop(.2) Linear(1024,128) Drop(.2)
    Linear(128,64) Drop(.1) Linear(64,16) Linear(16,1). Keys ``layers.{0,2,4,6,7}.*`` as released."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_size, 1024), torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16), torch.nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_state_dict_file(path: Path, what: str) -> Dict[str, torch.Tensor]:
    """safetensors, or ``torch.load(weights_only=True)`` (never unpickles code). A file that is neither
    (truncated, or not a checkpoint) is one :class:`~kto_lab.data.tables.DataError` naming it."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError (header or size) has no common base with OSError
            raise DataError(f"{what}: {str(path)!r} is not a readable safetensors file ({type(e).__name__}: "
                            f"{e}); download it again") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"{what}: could not read {str(path)!r} as a weights-only torch checkpoint "
                        f"({type(e).__name__}: {e}); is it the right, complete file?") from None
    if not isinstance(sd, dict):
        raise DataError(f"{what}: {str(path)!r} holds a {type(sd).__name__}, expected a state dict")
    return sd


class AestheticScorer:
    """LAION aesthetic score (0-10 scale): MLP on the L2-normalised CLIP ViT-L/14 image embedding.
    ``path`` = ``sac+logos+ava1-l14-linearMSE.pth``; ``clip_path`` = an ``openai/clip-vit-large-patch14``
    download (model + processor)."""

    name = "aesthetic"

    def __init__(self, path, clip_path, *, device="cpu", dtype=None, batch_size: int = 16):
        weights = require_file(path, "aesthetic predictor", "the MLP weights sac+logos+ava1-l14-linearMSE.pth")
        sd = load_state_dict_file(weights, "aesthetic predictor")
        if "layers.0.weight" not in sd:
            raise DataError(f"aesthetic predictor: {str(weights)!r} lacks 'layers.0.weight'; expected the "
                             f"improved-aesthetic-predictor MLP state dict, got keys {sorted(sd)[:6]}")
        self.mlp = AestheticMLP(sd["layers.0.weight"].shape[1])
        self.mlp.load_state_dict(sd)
        self.clip = CLIPPairScorer(load_clip(clip_path, "aesthetic CLIP (ViT-L/14)", dtype),
                                   load_processor(clip_path, "aesthetic CLIP processor"),
                                   device=device, dtype=dtype, batch_size=batch_size)
        proj = self.clip.model.config.projection_dim
        if proj != self.mlp.layers[0].in_features:
            raise ValueError(f"aesthetic predictor expects {self.mlp.layers[0].in_features}-d embeddings but the CLIP at "
                             f"{str(clip_path)!r} gives {proj}-d (use openai/clip-vit-large-patch14)")
        self.mlp.to(self.clip.device).eval()

    @torch.no_grad()
    def score(self, images: ImageBatch, prompts: Optional[Sequence[str]] = None) -> np.ndarray:
        pil = to_pil_list(images)
        if prompts is not None and len(prompts) != len(pil):
            raise ValueError(f"aesthetic: got {len(pil)} images but {len(prompts)} prompts")
        if not pil:
            return np.zeros(0)
        return self.mlp(self.clip.embed_images(pil)).squeeze(-1).double().cpu().numpy()


# --- HPS v2: open_clip ViT-H-14 checkpoint -> transformers CLIPModel ------------------------

_OC_BLOCK = {  # open_clip resblock suffix -> HF layer suffix (q/k/v are split from in_proj)
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}
_OC_SIMPLE = {  # open_clip key -> HF key, outside the transformer blocks (copied as they are)
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}


def openclip_to_hf(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename an open_clip CLIP state dict (ViT-H-14 etc., non-custom text tower) to
    ``transformers.CLIPModel`` keys. Projections are transposed (open_clip: ``x @ proj``),
    fused ``in_proj`` attention weights are split into q, k, v."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    out: Dict[str, torch.Tensor] = {}
    towers = (("", "text_model.", "transformer.resblocks."), ("visual.", "vision_model.", "visual.transformer.resblocks."))
    for key, v in sd.items():
        for oc_prefix, hf_prefix, blocks in towers:
            if key.startswith(blocks):
                i, rest = key[len(blocks):].split(".", 1)
                layer = f"{hf_prefix}encoder.layers.{i}."
                if rest.startswith("attn.in_proj_"):
                    kind = rest.rsplit("_", 1)[1]  # weight | bias
                    for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                        out[f"{layer}self_attn.{name}.{kind}"] = part.clone()
                else:
                    mod, kind = rest.rsplit(".", 1)
                    out[f"{layer}{_OC_BLOCK[mod]}.{kind}"] = v
                break
        else:
            if key in _OC_SIMPLE:
                out[_OC_SIMPLE[key]] = v
            elif key == "text_projection":
                out["text_projection.weight"] = v.t().contiguous()
            elif key == "visual.proj":
                out["visual_projection.weight"] = v.t().contiguous()
            elif key == "attn_mask":  # open_clip's causal-mask buffer
                continue
            else:
                raise KeyError(f"unexpected open_clip key {key!r} (is this an open_clip CLIP checkpoint?)")
    return out


def hf_to_openclip(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Inverse of :func:`openclip_to_hf` (used by tests to write open_clip-format checkpoints)."""
    out: Dict[str, torch.Tensor] = {}
    inverse_block = {v: k for k, v in _OC_BLOCK.items()}
    towers = (("text_model.encoder.layers.", "transformer.resblocks."), ("vision_model.encoder.layers.", "visual.transformer.resblocks."))
    simple = {hf: oc for oc, hf in _OC_SIMPLE.items()}
    for key, v in sd.items():
        if key.endswith("position_ids"):
            continue
        if key in simple:
            out[simple[key]] = v
        elif key == "text_projection.weight":
            out["text_projection"] = v.t().contiguous()
        elif key == "visual_projection.weight":
            out["visual.proj"] = v.t().contiguous()
        else:
            for hf_prefix, oc_prefix in towers:
                if key.startswith(hf_prefix):
                    i, rest = key[len(hf_prefix):].split(".", 1)
                    mod, kind = rest.rsplit(".", 1)
                    if mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                        if mod == "self_attn.q_proj":
                            parts = [sd[f"{hf_prefix}{i}.self_attn.{n}.{kind}"] for n in ("q_proj", "k_proj", "v_proj")]
                            out[f"{oc_prefix}{i}.attn.in_proj_{kind}"] = torch.cat(parts, 0)
                    else:
                        out[f"{oc_prefix}{i}.{inverse_block[mod]}.{kind}"] = v
                    break
            else:
                raise KeyError(f"unexpected transformers CLIP key {key!r}")
    return out


def clip_from_state_dict(config, sd: Dict[str, torch.Tensor], dtype: Optional[torch.dtype] = None):
    """A ``CLIPModel(config)`` holding ``sd`` (built on the meta device: no random init of 1B params)."""
    from transformers import CLIPModel

    with torch.device("meta"):
        model = CLIPModel(config)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the CLIP config: missing {missing[:8]}, unexpected {unexpected[:8]}")
    for module in model.modules():  # non-persistent buffers stayed on meta: rebuild them
        ids = getattr(module, "position_ids", None)
        if isinstance(ids, torch.Tensor) and ids.is_meta:
            module.register_buffer("position_ids", torch.arange(ids.shape[-1]).expand((1, -1)), persistent=False)
    return model.to(dtype) if dtype is not None else model.float()


class HPSv2Scorer(CLIPPairScorer):
    """HPS v2 / v2.1 (Wu et al. 2023). ``path`` = ``HPS_v2_compressed.pt`` or ``HPS_v2.1_compressed.pt``
    (an open_clip ViT-H-14 state dict under ``state_dict``); ``clip_path`` = a
    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` download, used for its config.json and processor only
    (224 px bicubic resize + centre crop, OpenAI mean/std: approximately HPSv2's eval transform, which
    does the same steps with torchvision; resampling and rounding may differ slightly per pixel)."""

    name = "hpsv2"

    def __init__(self, path, clip_path, *, device="cpu", dtype=None, batch_size: int = 16):
        from transformers import CLIPConfig

        ckpt = require_file(path, "HPS v2 checkpoint", "HPS_v2_compressed.pt (an open_clip ViT-H-14 state dict)")
        clip_dir = Path(clip_path).expanduser()
        if not (clip_dir / "config.json").is_file():
            raise FileNotFoundError(f"HPS v2 CLIP config: {str(clip_dir)!r} has no config.json; expected a "
                                    f"laion/CLIP-ViT-H-14-laion2B-s32B-b79K directory")
        processor = load_processor(clip_dir, "HPS v2 processor")
        raw = load_state_dict_file(ckpt, "HPS v2 checkpoint")
        sd = raw.get("state_dict", raw)
        try:
            model = clip_from_state_dict(CLIPConfig.from_pretrained(clip_dir), openclip_to_hf(sd), dtype)
        except (KeyError, ValueError) as e:  # another checkpoint than an open_clip ViT-H-14
            raise DataError(f"HPS v2 checkpoint: {str(ckpt)!r} is not an open_clip ViT-H-14 state dict matching "
                            f"{str(clip_dir / 'config.json')!r}: {e}") from None
        super().__init__(model, processor, device=device, dtype=dtype, batch_size=batch_size)


# --- ImageReward (optional extra) ----------------------------------------------------------

IMAGEREWARD_INSTALL = (
    "ImageReward is an optional extra: its package pins old dependencies, so install it in a separate "
    "environment or with `pip install image-reward --no-deps` (plus `pip install fairscale timm`), then pass "
    "path=<ImageReward.pt> and med_config=<med_config.json> (both from the THUDM/ImageReward hub repo)."
)


class ImageRewardScorer:
    """ImageReward (Xu et al. 2023) through its own package, from local files only."""

    name = "imagereward"

    def __init__(self, path, med_config=None, *, device="cpu", batch_size: int = 16, **_):
        try:
            import ImageReward as RM  # noqa: N814
        except Exception as e:  # ImportError, or its pinned deps failing to import
            raise ImportError(f"cannot import ImageReward ({type(e).__name__}: {e}). {IMAGEREWARD_INSTALL}") from None
        ckpt = require_file(path, "ImageReward checkpoint", "ImageReward.pt")
        med = require_file(med_config or ckpt.parent / "med_config.json", "ImageReward med_config", "med_config.json")
        self.model = RM.load(str(ckpt), device=str(device), med_config=str(med), download_root=str(ckpt.parent))
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, images: ImageBatch, prompts: Optional[Sequence[str]] = None) -> np.ndarray:
        pil = to_pil_list(images)
        prompts = _check_prompts(self.name, len(pil), prompts)
        return np.array([float(self.model.score(p, [im])) for p, im in zip(prompts, pil)], dtype=np.float64)
