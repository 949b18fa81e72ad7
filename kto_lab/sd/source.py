"""The source a run reads batches from: the latent/text cache once it is built, else the table(s).

Kept apart from :mod:`kto_lab.sd.data` (table sources) and :mod:`kto_lab.sd.cache` (the cache and
its source), so that the cache builds on the data module and nothing imports back.
"""

from __future__ import annotations

from pathlib import Path

from ..data.sampler import sampling_gamma
from .cache import CachedSource
from .data import ImageTransform, PairSource, RecordSource, open_table


def make_source(cfg, tokenizer, rank: int = 0, table=None, *, family):
    """The configured source: a cache if ``data.cache_dir`` holds one, else the table(s) (``table``:
    already opened by :func:`open_train_table`).

    ``tokenizer``: one per text tower of ``family`` (the run's model family). Each process gets its own
    seed (``data.seed + 1000 * rank``) so ranks draw different samples.
    """
    seed = cfg.data.seed + 1000 * rank
    d, o = cfg.data, cfg.objective.objective
    if d.cache_dir and (Path(d.cache_dir) / "cache.json").is_file():
        return CachedSource(d.cache_dir, cfg, batch_size=cfg.optim.batch_size, seed=seed, family=family)
    transform = ImageTransform(d.resolution, d.center_crop, d.random_flip)
    table = table if table is not None else open_table(d.train, o, d.on_missing_image)
    common = {"family": family, "caption_dropout": d.caption_dropout}
    if o == "dpo":
        return PairSource(table, tokenizer, transform, batch_size=cfg.optim.batch_size, seed=seed, **common)
    return RecordSource(table, tokenizer, transform, batch_size=cfg.optim.batch_size,
                        gamma=sampling_gamma(o, d.gamma), seed=seed, csft=(o == "csft"), **common)
