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

A cache is keyed on what it was built from: the model (pipeline, VAE), family, resolution, crop,
objective kind, storage dtype, and the fingerprint of each table of ``data.train`` (its resolved path
and a hash of its rows, :meth:`~kto_lab.data.tables.TableFile.fingerprint`). A run whose config or data
differ from a cache's is refused in one line before any model loads (:func:`check_cache_dir`): a
cache directory may be the user's, so it is never rebuilt in silence. ``data.cache_dir=auto`` names
the directory after that key, ``<output_dir's parent>/latent_cache/<family>-<resolution>px-<key>``:
runs on the same data and model share one cache, and other data gets another.

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

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..config import ConfigError, resolved_paths
from ..data.tables import DataError, fingerprint_changes
from ..objectives import csft_caption
from .checkpoints import raise_if_disk_full
from .data import ImageTransform, gamma_sampler, geometry, open_table

Tensor = torch.Tensor
CACHE_VERSION = 3  # 3: records the data's fingerprint
AUTO = "auto"  # data.cache_dir=auto: a directory named after the cache's key (auto_cache_dir)
EMPTY_CAPTION = "empty_caption.safetensors"
STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# what a manifest written before a key existed meant by it
LEGACY_MANIFEST = {"family": "sd", "vae": None, "vae_dtype": "auto"}


def cache_kind(objective: str) -> str:
    return "pairs" if objective == "dpo" else ("records_csft" if objective == "csft" else "records")


def _expected_manifest(cfg, family) -> Dict[str, object]:
    """The settings a cache depends on (beside its data), as its manifest records them."""
    return {
        "kind": cache_kind(cfg.objective.objective),
        "family": family.name,
        "pretrained": _model_path(cfg.model.pretrained),
        "vae": _model_path(cfg.model.vae),
        "vae_dtype": cfg.model.vae_dtype,
        "dtype": str(STORAGE_DTYPES[cfg.data.cache_dtype]).replace("torch.", ""),
        "resolution": cfg.data.resolution,
        "center_crop": cfg.data.center_crop,
    }


def _model_path(path: Optional[str]) -> Optional[str]:
    """A local model directory as its resolved path (so a relative and an absolute path are one model); a hub id as given."""
    return resolved_paths(str(path)) if path is not None and os.path.exists(path) else path


def cache_key(cfg, family, data: List[dict]) -> str:
    """SHA-256 of what a cache is built from: :func:`_expected_manifest` and the tables' row hashes."""
    what = {**_expected_manifest(cfg, family), "data": [f["sha256"] for f in data]}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def auto_cache_dir(cfg, family, data: List[dict]) -> Path:
    """Where ``data.cache_dir=auto`` puts the cache: beside the run directory (so on its disk), named
    after :func:`cache_key`, so that other data or another model never find this cache."""
    name = f"{family.name}-{cfg.data.resolution}px-{cache_key(cfg, family, data)[:16]}"
    return Path(cfg.output_dir).parent / "latent_cache" / name


def check_cache_dir(cfg, family, data: Optional[List[dict]]) -> Optional[str]:
    """``data.cache_dir`` as the run will use it (``auto`` resolved), checked before any model loads:
    a built cache must match the config and ``data`` (the fingerprint of ``data.train``; None: not
    compared); a directory that is not a cache must be empty, so the cache can be built there at the end
    of encoding. Returns the directory (None: no cache)."""
    d = cfg.data
    if not d.cache_dir:
        return None
    if d.cache_dir == AUTO:
        if data is None:
            raise ConfigError("data.cache_dir=auto names the cache after data.train's content, but data.train is "
                              "empty: give data.train, or the directory of a built cache")
        out = auto_cache_dir(cfg, family, data)
    else:
        out = Path(d.cache_dir)
    if (out / "cache.json").is_file():
        check_manifest(read_manifest(out), cfg, out, family, data)
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"data.cache_dir={str(out)!r} is {'a file' if not out.is_dir() else 'a folder that is not a latent cache'} "
                          f"(no cache.json); give a new or empty directory, where the cache is built, or data.cache_dir=auto")
    elif not d.train:
        raise ConfigError(f"data.cache_dir={str(out)!r} holds no cache and data.train is empty")
    return str(out)


@torch.no_grad()
def build_cache(cfg, components, *, batch_size: int = 8, progress: bool = True) -> Path:
    """Encode ``cfg.data.train`` into ``cfg.data.cache_dir`` (see the module docstring) with the VAE and
    text towers of ``components`` (:class:`~kto_lab.sd.components.Components`, its family's encoding).
    A full disk removes the partial directory and stops in one line."""
    out = Path(cfg.data.cache_dir)
    batch_size = min(batch_size, cfg.data.cache_shard_size)
    if (out / "cache.json").is_file():
        return out
    if not cfg.data.train:
        raise ConfigError(f"data.cache_dir={str(out)!r} holds no cache and data.train is empty")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"data.cache_dir={str(out)!r} is not empty and not a latent cache; give a new or empty directory")
    objective = cfg.objective.objective
    table = open_table(cfg.data.train, objective, cfg.data.on_missing_image)
    partial = out.with_name(out.name + ".partial")
    try:
        _encode(cfg, components, table, partial, batch_size, progress)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise_if_disk_full(exc, partial, "free some space, or set data.cache_dir on another disk")
        raise
    os.replace(partial, out)  # onto a missing or an empty directory
    return out


def _encode(cfg, components, table, partial: Path, batch_size: int, progress: bool) -> None:
    """Write every shard, the empty caption and the manifest into ``partial`` (see :func:`build_cache`)."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from .encoding import latent_scale

    family, vae = components.family, components.vae
    dtype = STORAGE_DTYPES[cfg.data.cache_dtype]
    objective = cfg.objective.objective
    transform = ImageTransform(cfg.data.resolution, cfg.data.center_crop, random_flip=False)
    pairs = objective == "dpo"
    labels_all = np.ones(len(table), dtype=np.int64) if pairs else np.asarray(table.labels, dtype=np.int64)

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
                    shards=shards, sources=[str(p) for p in cfg.data.train], data=table.fingerprint(),
                    text_keys=list(family.text_keys), scaling_factor=float(vae.config.scaling_factor),
                    shift_factor=latent_scale(vae.config)[0], skipped=[list(s) for s in getattr(table, "skipped", [])])
    (partial / "cache.json").write_text(json.dumps(manifest, indent=1))


def read_manifest(cache_dir: str | Path) -> Dict[str, object]:
    path = Path(cache_dir) / "cache.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(cache_dir)!r} is not a latent cache (no cache.json); build it with build_cache")
    return json.loads(path.read_text())


def check_manifest(manifest: Dict[str, object], cfg, cache_dir, family, data: Optional[List[dict]] = None) -> None:
    """The cache must have been made for this model family, model, VAE, precision, resolution and objective
    kind, and, given ``data`` (the fingerprint of ``data.train``), from the same tables with the same rows."""
    fix = "use another data.cache_dir (data.cache_dir=auto: one per dataset and model), or delete this one to rebuild it"
    for key, want in _expected_manifest(cfg, family).items():
        found = manifest.get(key, LEGACY_MANIFEST.get(key))
        if key in ("pretrained", "vae"):
            found = _model_path(found)
        if found != want:
            raise ConfigError(f"latent cache {str(cache_dir)!r} was built with {key}={found!r}, but the config "
                              f"has {want!r}; {fix}")
    if data is None:
        return
    if "data" not in manifest:
        raise ConfigError(f"latent cache {str(cache_dir)!r} was built by an older kto_lab, which did not record its data's "
                          f"content, so it cannot be checked against data.train: delete it to rebuild it, or set "
                          f"data.train=[] to train on it as it is")
    changes = fingerprint_changes(manifest["data"], data)
    if changes:
        raise ConfigError(f"latent cache {str(cache_dir)!r} was built from other data than data.train: "
                          f"{'; '.join(changes)}; {fix}")


def _open_shard(path: Path, cache_dir: Path):
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as exc:
        raise DataError(f"latent cache shard {path} cannot be read ({exc}): it is truncated or corrupt; delete "
                        f"{cache_dir} to rebuild the cache") from None


class CachedSource:
    """Batches from a cache: ``latent_moments`` (+ ``_l``), the family's text conditioning and image
    geometry, ``labels``; captions dropped (``data.caption_dropout``) become the cached empty caption."""

    def __init__(self, cache_dir: str | Path, cfg, *, family, batch_size: int, seed: int = 0):
        from safetensors.torch import load_file

        from ..data.sampler import sampling_gamma

        self.dir = Path(cache_dir)
        self.manifest = read_manifest(self.dir)
        check_manifest(self.manifest, cfg, self.dir, family)
        self.batch_size = batch_size
        self.pairs = self.manifest["kind"] == "pairs"
        self.files = [_open_shard(self.dir / s["file"], self.dir) for s in self.manifest["shards"]]
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
