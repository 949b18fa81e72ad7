"""Encode VAE latents and text embeddings once, so a training step runs only the denoisers.

:func:`build_cache` reads a record table (or a pair table for DPO) once, encodes every image
with the VAE and every caption with the text encoder(s), and writes safetensors shards:

    cache_dir/cache.json                  manifest: model, family, resolution, objective kind, dtypes,
                                          shards, skipped
    cache_dir/shard-00000.safetensors     latent_moments (n,2C,h,w), the family's text conditioning
                                          (SD: encoder_hidden_states (n,L,D); SDXL: also text_embeds
                                          (n,P); SD3: encoder_hidden_states of the CLIP and T5 tokens
                                          and pooled_projections (n,P)) and image geometry (SDXL:
                                          original_size, crop_top_left (n,2)), labels (n,), index (n,)
                                          [+ latent_moments_l and the losers' geometry for pairs]
    cache_dir/empty_caption.safetensors   the text conditioning of "" (for data.caption_dropout)

It stores the VAE posterior's *moments* (mean and log-variance), not one latent, so training
still draws a fresh latent per step (``data.latent_mode="sample"``, as diffusers' scripts do) or
takes the mode: identical in distribution to encoding on the fly. The VAE runs in the trainer's
``model.vae_dtype`` (fp32 by default) and the moments are stored in ``data.cache_dtype`` (fp32 by
default; docs/training.md measures what fp16 storage and a bf16/fp16 VAE change). CSFT embeddings
are of the prefixed captions. The directory appears atomically (written as ``<dir>.partial``, then
renamed).

:class:`CachedSource` streams rows back: shards are memory-mapped with ``safe_open`` and only
the sampled rows are read.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from ..config import ConfigError
from ..objectives import csft_caption
from .data import ImageTransform, gamma_sampler, geometry, open_table

Tensor = torch.Tensor
CACHE_VERSION = 2
EMPTY_CAPTION = "empty_caption.safetensors"
STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# what a manifest written before a key existed meant by it
LEGACY_MANIFEST = {"family": "sd", "vae": None, "vae_dtype": "auto"}


def cache_kind(objective: str) -> str:
    return "pairs" if objective == "dpo" else ("records_csft" if objective == "csft" else "records")


def _expected_manifest(cfg, family) -> Dict[str, object]:
    return {
        "kind": cache_kind(cfg.objective.objective),
        "family": family.name,
        "pretrained": str(cfg.model.pretrained),
        "vae": cfg.model.vae,
        "vae_dtype": cfg.model.vae_dtype,
        "dtype": str(STORAGE_DTYPES[cfg.data.cache_dtype]).replace("torch.", ""),
        "resolution": cfg.data.resolution,
        "center_crop": cfg.data.center_crop,
    }


@torch.no_grad()
def build_cache(cfg, components, *, batch_size: int = 8, progress: bool = True) -> Path:
    """Encode ``cfg.data.train`` into ``cfg.data.cache_dir`` (see the module docstring) with the VAE and
    text towers of ``components`` (:class:`~kto_lab.sd.components.Components`, its family's encoding)."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from .encoding import latent_scale

    family, vae = components.family, components.vae
    dtype = STORAGE_DTYPES[cfg.data.cache_dtype]
    out = Path(cfg.data.cache_dir)
    batch_size = min(batch_size, cfg.data.cache_shard_size)
    if (out / "cache.json").is_file():
        return out
    if not cfg.data.train:
        raise ConfigError(f"data.cache_dir={str(out)!r} holds no cache and data.train is empty")
    objective = cfg.objective.objective
    table = open_table(cfg.data.train, objective, cfg.data.on_missing_image)
    transform = ImageTransform(cfg.data.resolution, cfg.data.center_crop, random_flip=False)
    pairs = objective == "dpo"
    labels_all = np.ones(len(table), dtype=np.int64) if pairs else np.asarray(table.labels, dtype=np.int64)

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)  # unused by center crops; random crops are fixed once
    shards: List[Dict[str, object]] = []
    buffer: Dict[str, List[Tensor]] = {}

    def moments(crops) -> Tensor:
        x = torch.stack([c.pixels for c in crops]).to(device=vae.device, dtype=vae.dtype)
        return vae.encode(x).latent_dist.parameters.to("cpu", dtype)

    def text(captions: List[str]) -> Dict[str, Tensor]:
        return {k: v.to("cpu", dtype) for k, v in family.encode_captions(components, captions).items()}

    def flush():
        if not buffer.get("index"):
            return
        tensors = {k: torch.cat(v).contiguous() for k, v in buffer.items()}
        name = f"shard-{len(shards):05d}.safetensors"
        save_file(tensors, str(partial / name))
        shards.append({"file": name, "count": int(tensors["index"].shape[0])})
        buffer.clear()

    rows = range(len(table))
    bar = tqdm(total=len(table), desc="caching latents", disable=not progress)
    for start in range(0, len(table), batch_size):
        idx, pix, pix_l, caps = [], [], [], []
        for i in rows[start:start + batch_size]:
            if pairs:
                pair = table.load_pair(i)
                if pair is None:
                    continue
                pix.append(transform.crop(pair[0], g))
                pix_l.append(transform.crop(pair[1], g))
                caps.append(table.captions[i])
            else:
                image = table.load_image(i)
                if image is None:  # skipped and counted by the table
                    continue
                pix.append(transform.crop(image, g))
                caps.append(csft_caption(table.captions[i], bool(labels_all[i] > 0)) if objective == "csft"
                            else table.captions[i])
            idx.append(i)
        bar.update(len(rows[start:start + batch_size]))
        if not idx:
            continue
        batch = {
            "latent_moments": moments(pix), **text(caps), **geometry(pix, family.image_keys),
            "labels": torch.from_numpy(labels_all[idx]),
            "index": torch.tensor(idx, dtype=torch.long),
        }
        if pairs:
            batch["latent_moments_l"] = moments(pix_l)
            batch.update(geometry(pix_l, family.image_keys, "_l"))
        for k, v in batch.items():
            buffer.setdefault(k, []).append(v)
        if sum(t.shape[0] for t in buffer["index"]) >= cfg.data.cache_shard_size:
            flush()
    flush()
    bar.close()
    save_file({k: v.contiguous() for k, v in text([""]).items()}, str(partial / EMPTY_CAPTION))
    manifest = dict(_expected_manifest(cfg, family), version=CACHE_VERSION, count=sum(s["count"] for s in shards),
                    shards=shards, sources=[str(p) for p in cfg.data.train], text_keys=list(family.text_keys),
                    scaling_factor=float(vae.config.scaling_factor), shift_factor=latent_scale(vae.config)[0],
                    skipped=[list(s) for s in getattr(table, "skipped", [])])
    (partial / "cache.json").write_text(json.dumps(manifest, indent=1))
    os.replace(partial, out)
    return out


def read_manifest(cache_dir: str | Path) -> Dict[str, object]:
    path = Path(cache_dir) / "cache.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(cache_dir)!r} is not a latent cache (no cache.json); build it with build_cache")
    return json.loads(path.read_text())


def check_manifest(manifest: Dict[str, object], cfg, cache_dir, family) -> None:
    """The cache must have been made for this model family, model, VAE, precision, resolution and objective kind."""
    for key, want in _expected_manifest(cfg, family).items():
        found = manifest.get(key, LEGACY_MANIFEST.get(key))
        if found != want:
            raise ConfigError(
                f"latent cache {str(cache_dir)!r} was built with {key}={found!r}, but the config "
                f"has {want!r}; use another data.cache_dir or delete this one"
            )


class CachedSource:
    """Batches from a cache: ``latent_moments`` (+ ``_l``), the family's text conditioning and image
    geometry, ``labels``; captions dropped (``data.caption_dropout``) become the cached empty caption."""

    def __init__(self, cache_dir: str | Path, cfg, *, family, batch_size: int, seed: int = 0):
        from safetensors import safe_open
        from safetensors.torch import load_file

        from ..data.sampler import sampling_gamma

        self.dir = Path(cache_dir)
        self.manifest = read_manifest(self.dir)
        check_manifest(self.manifest, cfg, self.dir, family)
        self.batch_size = batch_size
        self.pairs = self.manifest["kind"] == "pairs"
        self.files = [safe_open(str(self.dir / s["file"]), framework="pt") for s in self.manifest["shards"]]
        counts = [s["count"] for s in self.manifest["shards"]]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if self.offsets[-1] == 0:
            raise ValueError(f"latent cache {str(self.dir)!r} holds no records")
        self.labels = torch.cat([f.get_tensor("labels") for f in self.files]).numpy()
        self.keys = sorted(set(self.files[0].keys()) - {"labels", "index"})
        self.text_keys = self.manifest.get("text_keys", list(family.text_keys))  # caches older than SDXL: SD's
        self.caption_dropout = cfg.data.caption_dropout
        self.empty_caption = None
        if self.caption_dropout > 0:
            if not (self.dir / EMPTY_CAPTION).is_file():
                raise FileNotFoundError(f"latent cache {str(self.dir)!r} has no {EMPTY_CAPTION} (an older cache), which "
                                        f"data.caption_dropout needs; delete the cache to rebuild it")
            self.empty_caption = load_file(str(self.dir / EMPTY_CAPTION))
        self.skipped = len(self.manifest.get("skipped", []))
        self.generator = torch.Generator().manual_seed(seed)
        gamma = sampling_gamma(cfg.objective.objective, cfg.data.gamma)
        self.sampler = None if self.pairs else gamma_sampler(self.labels, gamma, seed, f"latent cache {str(self.dir)!r}")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _row(self, key: str, j: int) -> Tensor:
        k = int(np.searchsorted(self.offsets, j, side="right") - 1)
        return self.files[k].get_slice(key)[int(j - self.offsets[k]): int(j - self.offsets[k]) + 1]

    def next_batch(self) -> Dict[str, Tensor]:
        if self.pairs:
            rows = torch.randint(len(self), (self.batch_size,), generator=self.generator).tolist()
        else:
            rows = self.sampler.sample(self.batch_size).tolist()
        batch = {key: torch.cat([self._row(key, j) for j in rows]) for key in self.keys}
        batch["labels"] = torch.from_numpy(self.labels[rows])
        if self.empty_caption is not None:
            dropped = torch.rand(len(rows), generator=self.generator) < self.caption_dropout
            for key in self.text_keys:
                batch[key][dropped] = self.empty_caption[key]
        return batch

    def state_dict(self) -> dict:
        state = {"generator": self.generator.get_state()}
        if self.sampler is not None:
            state["sampler"] = self.sampler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
