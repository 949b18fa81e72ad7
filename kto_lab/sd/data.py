"""Batches for the SD trainer: images -> tensors, gamma sampling, the missing-image policy.

A *batch* is a dict of tensors (what :meth:`kto_lab.sd.trainer.Trainer.step` takes, and
:class:`kto_lab.sd.encoding.BatchEncoder` turns into the step's latents and conditioning):

    pixel_values (B,3,H,W) in [-1,1]   or  latents (B,C,h,w)  or  latent_moments (B,2C,h,w)
    input_ids (B,L)                    or  encoder_hidden_states (B,L,D)
    labels (B,)                        1 desirable / 0 undesirable
    pixel_values_l / latents_l / latent_moments_l   the losers, for objective "dpo"

plus what the model family adds (:mod:`kto_lab.sd.families`); SDXL: ``input_ids_2`` (or the cached
``text_embeds``) and each image's geometry ``original_size``, ``crop_top_left`` (B,2) (+ ``_l``).

A *source* produces batches and has ``state_dict``/``load_state_dict`` so a resumed run draws
exactly the batches of an uninterrupted one:

* :class:`RecordSource`: per-image binary feedback (:func:`kto_lab.data.records.load_records`),
  indices from :class:`~kto_lab.data.sampler.GammaSampler` (Diffusion-KTO sec. 4.2: desirable
  with probability gamma; SFT draws desirable records only, ``sampling_gamma``). For CSFT the caption gets the "good image, "/"bad image, " prefix.
* :class:`PairSource`: (winner, loser) pairs for Diffusion-DPO / SPIN
  (:func:`kto_lab.data.records.load_pairs`), drawn uniformly with replacement.
* :class:`kto_lab.sd.cache.CachedSource`: the same, read from a latent/embedding cache
  (:func:`kto_lab.sd.source.make_source` picks one).

Missing or unreadable images: ``on_missing_image="error"`` stops with the table's error naming
the file; ``"skip"`` counts the image (``source.skipped``) and draws another of the same class.

Caption dropout (``data.caption_dropout``, the official scripts' ``--proportion_empty_prompts``)
replaces a caption by the empty one, drawn from the source's generator (so a resumed run drops the
same captions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..config import ConfigError
from ..data.sampler import GammaSampler, check_classes, sampling_gamma
from ..data.tables import DataError
from ..objectives import csft_caption

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------
# Image transforms (no torchvision): resize shorter side, crop, optional flip, to [-1, 1]
# --------------------------------------------------------------------------------------


@dataclass
class CroppedImage:
    pixels: Tensor  # (3, resolution, resolution) in [-1, 1]
    original_size: Tuple[int, int]  # (height, width) before resizing: SDXL's size conditioning (its sec. 2.2)
    crop_top_left: Tuple[int, int]  # (top, left) of the window in the resized image; mirrored with a flip


def crop_image(
    image, resolution: int, *, center_crop: bool = True, flip: bool = False,
    generator: Optional[torch.Generator] = None,
) -> CroppedImage:
    """PIL image -> ``(3, resolution, resolution)`` float tensor in [-1, 1], and where it came from.

    Resize so the shorter side is ``resolution`` (bilinear, as diffusers' training scripts),
    then crop the centre (``center_crop``) or a random window drawn from ``generator``, then
    mirror horizontally if ``flip``. The crop's left edge is then counted from the mirrored
    image's left (the window's true position; diffusers' SDXL script writes ``resolution - left``).
    """
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BILINEAR)
    if center_crop:
        left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    else:
        left = int(torch.randint(0, new_w - resolution + 1, (1,), generator=generator))
        top = int(torch.randint(0, new_h - resolution + 1, (1,), generator=generator))
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    if flip:
        return CroppedImage(tensor.flip(-1), (h, w), (top, new_w - left - resolution))
    return CroppedImage(tensor, (h, w), (top, left))


def image_to_tensor(image, resolution: int, **kwargs) -> Tensor:
    """PIL image -> ``(3, resolution, resolution)`` float tensor in [-1, 1] (:func:`crop_image`'s pixels)."""
    return crop_image(image, resolution, **kwargs).pixels


def geometry(crops: Sequence[CroppedImage], keys: Sequence[str], suffix: str = "") -> Dict[str, Tensor]:
    """The per-image geometry a family conditions on (its ``image_keys``), as ``(B, 2)`` tensors."""
    return {k + suffix: torch.tensor([getattr(c, k) for c in crops], dtype=torch.long) for k in keys}


def image_batch(family, tokenizers: Sequence, crops: Sequence[CroppedImage], captions: Sequence[str],
                crops_l: Optional[Sequence[CroppedImage]] = None) -> Dict[str, Tensor]:
    """Cropped images and their captions as a batch for ``family`` (:class:`kto_lab.sd.encoding.BatchEncoder`
    reads it): ``pixel_values``, each text tower's token ids and the images' geometry; ``crops_l``: the losers
    of pairs (``pixel_values_l`` and their geometry, ``_l``)."""
    batch = {"pixel_values": torch.stack([c.pixels for c in crops]),
             **family.tokenize(tokenizers, captions), **geometry(crops, family.image_keys)}
    if crops_l is not None:
        batch["pixel_values_l"] = torch.stack([c.pixels for c in crops_l])
        batch.update(geometry(crops_l, family.image_keys, "_l"))
    return batch


def drop_caption(caption: str, p: float, generator: torch.Generator) -> str:
    """The empty caption with probability ``p`` (no random draw when ``p`` is 0)."""
    return "" if p > 0 and float(torch.rand((), generator=generator)) < p else caption


class ImageTransform:
    """The configured transform; random choices come from the source's generator."""

    def __init__(self, resolution: int, center_crop: bool = True, random_flip: bool = False):
        self.resolution, self.center_crop, self.random_flip = resolution, center_crop, random_flip

    def __call__(self, image, generator: torch.Generator) -> Tensor:
        return self.crop(image, generator).pixels

    def crop(self, image, generator: torch.Generator) -> CroppedImage:
        flip = bool(self.random_flip and torch.rand((), generator=generator) < 0.5)
        return crop_image(image, self.resolution, center_crop=self.center_crop, flip=flip, generator=generator)


# --------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------


def gamma_sampler(labels, gamma: float, seed: int, where: str) -> GammaSampler:
    """A :class:`GammaSampler` whose errors (no desirable / no undesirable record) name ``where``."""
    try:
        return GammaSampler(labels, gamma=gamma, seed=seed)
    except ValueError as e:
        raise type(e)(f"{where}: {e}") from None


class _TableSource:
    """What the table-backed sources share: the count of skipped (missing/unreadable) images, and how
    captions and images become a batch for the model family."""

    table = None

    def _setup(self, tokenizer, family, caption_dropout: float) -> None:
        """``tokenizer``: one tokenizer, or one per text tower of ``family``."""
        self.family = family
        self.tokenizers = tuple(tokenizer) if isinstance(tokenizer, (list, tuple)) else (tokenizer,)
        self.caption_dropout = caption_dropout

    def _batch(self, crops: List[CroppedImage], captions: List[str], crops_l=None) -> Dict[str, Tensor]:
        return image_batch(self.family, self.tokenizers, crops, captions, crops_l)

    @property
    def skipped(self) -> int:
        return len(getattr(self.table, "skipped", ()))


class RecordSource(_TableSource):
    """Gamma-sampled batches of per-image feedback records (KTO, SFT, CSFT, BCE)."""

    def __init__(
        self, table, tokenizer, transform: ImageTransform, *, family, batch_size: int, gamma: float = 0.8,
        seed: int = 0, csft: bool = False, caption_dropout: float = 0.0,
    ):
        self.table, self.transform = table, transform
        self._setup(tokenizer, family, caption_dropout)
        self.batch_size, self.csft = batch_size, csft
        self.labels = np.asarray(table.labels).astype(np.int64)
        self.sampler = gamma_sampler(self.labels, gamma, seed, f"record table {table!r}")
        self.generator = torch.Generator().manual_seed(seed + 1)  # crops, flips, replacements
        self._by_class = {True: self.sampler.desirable.numpy(), False: self.sampler.undesirable.numpy()}

    def _replacement(self, i: int, tries: int = 64) -> int:
        """Another record of the same class, for a skipped image: random draws until one is not known
        to be unreadable (O(1) per draw at a million records); a full scan only when draws keep failing."""
        same = self._by_class[bool(self.labels[i] > 0)]
        for _ in range(tries):
            j = int(same[int(torch.randint(len(same), (1,), generator=self.generator))])
            if not self.table.is_skipped(j):
                return j
        usable = [j for j in same if not self.table.is_skipped(int(j))]
        if not usable:
            kind = "desirable" if self.labels[i] > 0 else "undesirable"
            raise DataError(f"every {kind} image of {self.table!r} is missing or unreadable "
                            f"(e.g. {self.table.skipped[-1][1]}: {self.table.skipped[-1][2]})")
        return int(usable[int(torch.randint(len(usable), (1,), generator=self.generator))])

    def _load(self, i: int):
        image = self.table.load_image(i)  # raises ImageLoadError naming the file under "error"
        while image is None:  # "skip": counted by the table; draw another of the same class
            i = self._replacement(i)
            image = self.table.load_image(i)
        return i, image

    def next_batch(self) -> Dict[str, Tensor]:
        crops, captions, labels = [], [], []
        for i in self.sampler.sample(self.batch_size).tolist():
            i, image = self._load(i)
            label = int(self.labels[i] > 0)
            caption = self.table.captions[i]
            crops.append(self.transform.crop(image, self.generator))
            caption = csft_caption(caption, bool(label)) if self.csft else caption
            captions.append(drop_caption(caption, self.caption_dropout, self.generator))
            labels.append(label)
        return {**self._batch(crops, captions), "labels": torch.tensor(labels, dtype=torch.long)}

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.generator.set_state(state["generator"])


class PairSource(_TableSource):
    """Uniformly drawn (winner, loser) pairs sharing a caption (Diffusion-DPO, SPIN)."""

    def __init__(self, table, tokenizer, transform: ImageTransform, *, family, batch_size: int, seed: int = 0,
                 caption_dropout: float = 0.0):
        if len(table) == 0:
            raise DataError(f"pair table {table!r} is empty")
        self.table, self.transform, self.batch_size = table, transform, batch_size
        self._setup(tokenizer, family, caption_dropout)
        self.generator = torch.Generator().manual_seed(seed)

    def _draw(self) -> int:
        return int(torch.randint(len(self.table), (1,), generator=self.generator))

    def next_batch(self) -> Dict[str, Tensor]:
        winners, losers, captions = [], [], []
        for _ in range(self.batch_size):
            for _attempt in range(10 * len(self.table) + 10):
                i = self._draw()
                if self.table.is_skipped(i):
                    continue
                pair = self.table.load_pair(i)
                if pair is not None:
                    break
            else:
                raise DataError(f"no readable pair found in {self.table!r}")
            # The same flip/crop for winner and loser, as the official DPO script does.
            state = self.generator.get_state()
            winners.append(self.transform.crop(pair[0], self.generator))
            self.generator.set_state(state)
            losers.append(self.transform.crop(pair[1], self.generator))
            captions.append(drop_caption(self.table.captions[i], self.caption_dropout, self.generator))
        return {**self._batch(winners, captions, losers), "labels": torch.ones(len(captions), dtype=torch.long)}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def open_table(paths: List[str], objective: str, on_missing_image: str):
    """Record table (or pair table for DPO) from the configured file(s); a table of the other kind
    is an error naming the file and what the objective needs."""
    from ..data.records import PAIR_COLUMNS, RECORD_COLUMNS, load_pairs, load_records
    from ..data.tables import table_columns

    pairs = objective == "dpo"
    for path in paths:
        columns = table_columns(path)
        if pairs and "label" in columns and "image_w" not in columns:
            raise DataError(f"objective=dpo trains on pairs, but {path} is a record table ({', '.join(RECORD_COLUMNS)}); "
                            f"give a pair table ({', '.join(PAIR_COLUMNS)}), e.g. from `kto-lab data pairs`, or "
                            "choose a per-image objective (kto, sft, csft, bce)")
        if not pairs and "image_w" in columns and "label" not in columns:
            raise DataError(f"objective={objective} trains on per-image labels, but {path} is a pair table "
                            f"({', '.join(PAIR_COLUMNS)}); give a record table ({', '.join(RECORD_COLUMNS)}), "
                            "e.g. from `kto-lab data pickapic`, or set objective.objective=dpo")
    if not pairs:
        return load_records(paths if len(paths) > 1 else paths[0], on_missing_image=on_missing_image)
    table = load_pairs(paths if len(paths) > 1 else paths[0], on_missing_image=on_missing_image)
    table.check_distinct()  # a pair of one image teaches nothing
    return table


def open_train_table(cfg):
    """The configured table(s), checked before any model loads (what costs no image I/O):

    * the files exist, are UTF-8 (CSV/JSONL) and are of the kind the objective needs (pairs for dpo);
    * every caption, label and score is valid (:func:`kto_lab.data.records.load_records`);
    * the table has rows; every image *file* exists (``on_missing_image=error``), or the missing ones
      are skipped now (``skip``), and gamma sampling still has a desirable record, and an undesirable
      one when gamma < 1 (or, for DPO, a pair with both images).

    Image bytes and decoding are checked when an image is drawn (``error``: the run stops before
    the step, naming the image; ``skip``: it is counted and replaced). ``kto-lab data stats TABLE
    --check-images`` decodes every image up front.
    """
    from pathlib import Path

    d, objective = cfg.data, cfg.objective.objective
    if not d.train:
        raise ConfigError("data.train is empty: give a record table (or data.cache_dir with a built cache)")
    missing = [str(p) for p in d.train if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"data.train: no such table file {missing} (CSV, JSONL or Parquet)")
    table = open_table(d.train, objective, d.on_missing_image)
    if len(table) == 0:
        raise DataError(f"data.train {list(d.train)}: the table has no rows")
    table.check_files()
    usable = np.array([not table.is_skipped(i) for i in range(len(table))], dtype=bool)
    where = f"data.train {list(d.train)}" + (f" ({int((~usable).sum())} missing image(s) skipped)" if not usable.all() else "")
    if objective == "dpo":
        if not usable.any():
            raise DataError(f"{where}: no pair has both images")
    else:
        check_classes(np.asarray(table.labels)[usable], sampling_gamma(objective, d.gamma), where)
    return table
