"""Encode VAE latents and text embeddings once, so a training step runs only the UNets.

:func:`build_cache` reads a record table (or a pair table for DPO) once, encodes every image
with the VAE and every caption with the text encoder, and writes safetensors shards:

    cache_dir/cache.json                  manifest: model, resolution, objective kind, shards, skipped
    cache_dir/shard-00000.safetensors     latent_moments (n,2C,h,w), encoder_hidden_states (n,L,D),
                                          labels (n,), index (n,)  [+ latent_moments_l for pairs]

It stores the VAE posterior's *moments* (mean and log-variance), not one latent, so training
still draws a fresh latent per step (``data.latent_mode="sample"``, as diffusers' scripts do) or
takes the mode: identical in distribution to encoding on the fly. CSFT embeddings are of the
prefixed captions. The directory appears atomically (written as ``<dir>.partial``, then renamed).

:class:`CachedSource` streams rows back: shards are memory-mapped with ``safe_open`` and only
the sampled rows are read.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..config import ConfigError
from ..objectives import csft_caption

Tensor = torch.Tensor
CACHE_VERSION = 1


def cache_kind(objective: str) -> str:
    return "pairs" if objective == "dpo" else ("records_csft" if objective == "csft" else "records")


def _expected_manifest(cfg) -> Dict[str, object]:
    return {
        "kind": cache_kind(cfg.objective.objective),
        "pretrained": str(cfg.model.pretrained),
        "resolution": cfg.data.resolution,
        "center_crop": cfg.data.center_crop,
    }


@torch.no_grad()
def build_cache(
    cfg, vae, text_encoder, tokenizer, *, batch_size: int = 8, dtype: torch.dtype = torch.float16,
    progress: bool = True,
) -> Path:
    """Encode ``cfg.data.train`` into ``cfg.data.cache_dir`` (see the module docstring)."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from .data import ImageTransform, open_table
    from .encoding import embed_input_ids, tokenize

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

    def moments(pixels: List[Tensor]) -> Tensor:
        x = torch.stack(pixels).to(device=vae.device, dtype=vae.dtype)
        return vae.encode(x).latent_dist.parameters.to("cpu", dtype)

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
                pix.append(transform(pair[0], g))
                pix_l.append(transform(pair[1], g))
                caps.append(table.captions[i])
            else:
                image = table.load_image(i)
                if image is None:  # skipped and counted by the table
                    continue
                pix.append(transform(image, g))
                caps.append(csft_caption(table.captions[i], bool(labels_all[i] > 0)) if objective == "csft"
                            else table.captions[i])
            idx.append(i)
        bar.update(len(rows[start:start + batch_size]))
        if not idx:
            continue
        batch = {
            "latent_moments": moments(pix),
            "encoder_hidden_states": embed_input_ids(text_encoder, tokenize(tokenizer, caps)).to("cpu", dtype),
            "labels": torch.from_numpy(labels_all[idx]),
            "index": torch.tensor(idx, dtype=torch.long),
        }
        if pairs:
            batch["latent_moments_l"] = moments(pix_l)
        for k, v in batch.items():
            buffer.setdefault(k, []).append(v)
        if sum(t.shape[0] for t in buffer["index"]) >= cfg.data.cache_shard_size:
            flush()
    flush()
    bar.close()
    manifest = dict(_expected_manifest(cfg), version=CACHE_VERSION, count=sum(s["count"] for s in shards),
                    shards=shards, sources=[str(p) for p in cfg.data.train],
                    scaling_factor=float(vae.config.scaling_factor), dtype=str(dtype).replace("torch.", ""),
                    skipped=[list(s) for s in getattr(table, "skipped", [])])
    (partial / "cache.json").write_text(json.dumps(manifest, indent=1))
    os.replace(partial, out)
    return out


def read_manifest(cache_dir: str | Path) -> Dict[str, object]:
    path = Path(cache_dir) / "cache.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(cache_dir)!r} is not a latent cache (no cache.json); build it with build_cache")
    return json.loads(path.read_text())


def check_manifest(manifest: Dict[str, object], cfg, cache_dir) -> None:
    """The cache must have been made for this model, resolution and objective kind."""
    for key, want in _expected_manifest(cfg).items():
        if manifest.get(key) != want:
            raise ConfigError(
                f"latent cache {str(cache_dir)!r} was built with {key}={manifest.get(key)!r}, but the config "
                f"has {want!r}; use another data.cache_dir or delete this one"
            )


class CachedSource:
    """Batches from a cache: ``latent_moments`` (+ ``_l``), ``encoder_hidden_states``, ``labels``."""

    def __init__(self, cache_dir: str | Path, cfg, *, batch_size: int, seed: int = 0):
        from safetensors import safe_open

        from ..data.sampler import sampling_gamma
        from .data import gamma_sampler

        self.dir = Path(cache_dir)
        self.manifest = read_manifest(self.dir)
        check_manifest(self.manifest, cfg, self.dir)
        self.batch_size = batch_size
        self.pairs = self.manifest["kind"] == "pairs"
        self.files = [safe_open(str(self.dir / s["file"]), framework="pt") for s in self.manifest["shards"]]
        counts = [s["count"] for s in self.manifest["shards"]]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if self.offsets[-1] == 0:
            raise ValueError(f"latent cache {str(self.dir)!r} holds no records")
        self.labels = torch.cat([f.get_tensor("labels") for f in self.files]).numpy()
        self.keys = ["latent_moments", "encoder_hidden_states"] + (["latent_moments_l"] if self.pairs else [])
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


def sample_latents(moments: Tensor, scaling_factor: float, mode: str = "sample",
                   generator: Optional[torch.Generator] = None) -> Tensor:
    """VAE posterior moments (mean, logvar along channels) -> scaled latents (diffusers'
    ``DiagonalGaussianDistribution``: logvar clamped to [-30, 20])."""
    mean, logvar = torch.chunk(moments.float(), 2, dim=1)
    if mode == "mode":
        return mean * scaling_factor
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return (mean + std * noise) * scaling_factor
