"""The paper's automatic-evaluation protocol (Diffusion-KTO sec. 5, appendices A.2, B, F).

1. :func:`score_model`: every generated image of a model gets one column per metric
   (``<model_dir>/scores.csv``). Scores are keyed on the image's content (``image_sha256``, the hash of
   the file's bytes): an image already scored is not scored again, a regenerated one always is.
2. :func:`median_table`: for each model, prompt and metric, the median-scoring image of its N
   (lower median for even N; :func:`kto_lab.eval.stats.median_index`).
3. :func:`win_rates`: model A vs model B per metric (and per style): per-prompt outcome from
   the two median images, ties (scores closer than the scorer's tie tolerance,
   :func:`kto_lab.eval.scorers.tie_tolerance`) count half, 95% CI (Tables 1, 3-5), and beside it always
   the paper's interval (normal approximation over all images, ``paper_ci_low``/``paper_ci_high``).
   Neither interval is computed from fewer than ``min_prompts`` prompts (``ci_note`` says so).
4. :func:`mean_scores`: mean score over all images with the t-based 95% CI (Table 2).
5. :func:`nsfw_shares`: share of images the safety checker flagged (appendix F).

Failed generations (``status="failed"`` in the manifest) are never silently dropped. An image
that failed is left out of its prompt's median (the median is over the images that exist;
``n_failed_images`` counts them). A prompt where a model has NO image is, by default
(``on_failure="loss"``), a loss for that model (a tie if both models have none); with
``on_failure="exclude"`` it is left out of the win rate. Either way the table reports
``failed_a``, ``failed_b`` (prompts with no image) and ``excluded``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd

from kto_lab.data.tables import DataError
from kto_lab.eval.generate import read_manifest
from kto_lab.eval.scorers import Scorer, tie_tolerance
from kto_lab.eval.stats import (MIN_PROMPTS, mean_ci, median_index, outcomes, paper_interval, share_ci,
                                win_rate_from_outcomes)
from kto_lab.fingerprint import file_sha256

ON_FAILURE = ("loss", "exclude")
SCORES = "scores.csv"
_META = {"model", "prompt_id", "prompt", "style", "k", "seed", "file", "status", "error", "nsfw", "generation",
         "image_sha256"}


def _load_images(model_dir: Path, files: Sequence[str]):
    from PIL import Image

    out = []
    for f in files:
        with Image.open(model_dir / f) as im:
            out.append(im.convert("RGB"))
    return out


def score_model(model_dir, scorers: Dict[str, Scorer], batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
    """Score every ``ok`` image in ``model_dir``'s manifest with every scorer; write and return scores.csv.

    One row per (prompt, k) in the manifest, failed ones included (their scores are NaN)."""
    from tqdm.auto import tqdm

    model_dir = Path(model_dir)
    rows = read_manifest(model_dir)
    if not rows:
        raise FileNotFoundError(f"no generations in {str(model_dir)!r}: expected {model_dir / 'manifest.jsonl'} "
                                f"(run `kto-lab eval generate` first)")
    df = pd.DataFrame(rows).sort_values(["prompt_id", "k"]).reset_index(drop=True)
    ok = df["status"] == "ok"
    df["image_sha256"] = [file_sha256(model_dir / f) if good else "" for f, good in zip(df["file"], ok)]
    old_path = model_dir / SCORES
    if old_path.is_file():  # keep every earlier metric; reuse the scores of the same image (bytes) and prompt
        old = pd.read_csv(old_path, dtype={"prompt_id": str, "file": str, "image_sha256": str, "prompt": str})
        metrics = [c for c in old.columns if c not in _META]
        if metrics and "image_sha256" in old:  # an older scores.csv has no hashes: everything is scored again
            key = ["image_sha256", "prompt"]
            old = old[old["image_sha256"].notna()].drop_duplicates(key)
            df = df.merge(old[key + metrics], on=key, how="left")
    for name, scorer in scorers.items():
        if name not in df:
            df[name] = np.nan
        todo = df.index[ok & df[name].isna()].tolist()
        for start in tqdm(range(0, len(todo), batch_size), desc=f"score {model_dir.name}:{name}", disable=not progress):
            idx = todo[start:start + batch_size]
            images = _load_images(model_dir, df.loc[idx, "file"].tolist())
            df.loc[idx, name] = scorer.score(images, df.loc[idx, "prompt"].tolist())
    df.loc[~ok, metrics_in(df)] = np.nan
    tmp = model_dir / (SCORES + ".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(old_path)
    return df


def load_scores(out_dir, models: Iterable[str]) -> pd.DataFrame:
    """The scores.csv of several models under ``out_dir``, concatenated."""
    frames = []
    for m in models:
        path = Path(out_dir) / m / SCORES
        if not path.is_file():
            raise FileNotFoundError(f"no scores for model {m!r}: expected {path} (run `kto-lab eval score` first)")
        frames.append(pd.read_csv(path, dtype={"prompt_id": str, "style": str}, keep_default_na=True).assign(model=m))
    df = pd.concat(frames, ignore_index=True)
    df["style"] = df["style"].fillna("")
    return df


def median_table(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (model, prompt_id): the median-scoring image's score, its k, and counts of ok/failed images."""
    if metric not in df:
        raise KeyError(f"metric {metric!r} not in the scores (have {[c for c in df.columns if c not in _META]})")
    rows = []
    for (model, pid), g in df.groupby(["model", "prompt_id"], sort=True):
        good = g[(g["status"] == "ok") & g[metric].notna()].sort_values("k")
        if len(good):
            j = median_index(good[metric].to_numpy())
            score, k = float(good[metric].iloc[j]), int(good["k"].iloc[j])
        else:
            score, k = np.nan, -1
        rows.append({"model": model, "prompt_id": pid, "style": g["style"].iloc[0], "prompt": g["prompt"].iloc[0],
                     "median": score, "k": k, "n_ok": len(good), "n_failed_images": len(g) - len(good)})
    return pd.DataFrame(rows)


def metrics_in(df: pd.DataFrame) -> List[str]:
    return [c for c in df.columns if c not in _META]


def _pair_outcomes(ma: pd.DataFrame, mb: pd.DataFrame, on_failure: str, tolerance: float = 0.0):
    both = ma.merge(mb, on="prompt_id", how="outer", suffixes=("_a", "_b"))
    a, b = both["median_a"].to_numpy(), both["median_b"].to_numpy()
    fa, fb = np.isnan(a), np.isnan(b)
    o = outcomes(np.where(fa, 0, a), np.where(fb, 0, b), tolerance)
    o = np.where(fa & fb, 0.5, np.where(fa, 0.0, np.where(fb, 1.0, o)))
    keep = ~(fa | fb) if on_failure == "exclude" else np.ones_like(fa)
    style = both["style_a"].fillna(both["style_b"]).fillna("").to_numpy()
    return o, keep.astype(bool), fa, fb, style, both["prompt_id"].to_numpy()


def check_same_prompts(df: pd.DataFrame, models: Sequence[str]) -> None:
    """Images compared under one prompt id must all come from one text: a prompt file edited between
    two generations would otherwise pair different prompts (or pool them into one median)."""
    if "prompt" not in df:
        return
    order = {m: i for i, m in enumerate(models)}
    rows = df[df["model"].isin(list(models))]
    texts = rows.groupby("prompt_id")["prompt"].nunique()
    for pid in texts.index[texts > 1]:
        g = rows[rows["prompt_id"] == pid].sort_values("model", key=lambda m: m.map(order), kind="stable")
        (text_a, models_a), (text_b, models_b) = list(g.groupby("prompt", sort=False)["model"].unique().items())[:2]
        raise DataError(f"prompt id {pid!r}: images of {sorted(models_a)} were made from {text_a!r} but images of "
                        f"{sorted(models_b)} from {text_b!r}; generate them again from one prompt file "
                        "(`kto-lab eval generate` remakes the images of changed prompts)")


def win_rates(df: pd.DataFrame, model_a: str, model_b: str, metrics: Optional[Sequence[str]] = None, *,
              method: str = "bootstrap", on_failure: str = "loss", by_style: bool = True, level: float = 0.95,
              n_bootstrap: int = 2000, seed: int = 0, tie_tolerances: Optional[Dict[str, float]] = None,
              min_prompts: int = MIN_PROMPTS) -> pd.DataFrame:
    """Win rate (%) of ``model_a`` over ``model_b`` per metric (and per style), with CI and failure counts.
    ``tie_tolerances``: metric -> tolerance, overriding :data:`kto_lab.eval.scorers.TIE_TOLERANCE`."""
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure={on_failure!r}; choose one of {list(ON_FAILURE)}")
    for m in (model_a, model_b):
        if m not in set(df["model"]):
            raise KeyError(f"model {m!r} not in the scores (have {sorted(set(df['model']))})")
    check_same_prompts(df, (model_a, model_b))
    images_per_prompt = df[df.model == model_a].groupby("prompt_id").size()  # generated, ok or failed
    rows = []
    for metric in metrics or metrics_in(df):
        med = median_table(df, metric)
        ma, mb = med[med.model == model_a], med[med.model == model_b]
        tol = tie_tolerance(metric, tie_tolerances)
        o, keep, fa, fb, style, prompt_ids = _pair_outcomes(ma, mb, on_failure, tol)
        groups = [("all", np.ones_like(keep))]
        if by_style:
            groups += [(s, style == s) for s in sorted(set(style)) if s]
        for name, sel in groups:
            n_images = int(images_per_prompt.reindex(prompt_ids[sel & keep]).fillna(0).sum())
            wr = win_rate_from_outcomes(o[sel & keep], method, level, n_bootstrap, seed, n_images=n_images,
                                        min_prompts=min_prompts)
            paper = paper_interval(wr.rate, n_images, level) if not wr.note else (np.nan, np.nan)
            rows.append({
                "metric": metric, "model_a": model_a, "model_b": model_b, "style": name,
                "win_rate": 100 * wr.rate, "ci_low": 100 * wr.low, "ci_high": 100 * wr.high, "n_prompts": wr.n,
                "wins": wr.wins, "ties": wr.ties, "losses": wr.losses,
                "failed_a": int((fa & sel).sum()), "failed_b": int((fb & sel).sum()),
                "excluded": int((sel & ~keep).sum()), "ci_method": method, "on_failure": on_failure,
                "n_images": n_images, "paper_ci_low": 100 * paper[0], "paper_ci_high": 100 * paper[1],
                "tie_tolerance": tol, "min_prompts": min_prompts, "ci_note": wr.note,
            })
    return pd.DataFrame(rows)


def mean_scores(df: pd.DataFrame, metrics: Optional[Sequence[str]] = None, by_style: bool = True,
                level: float = 0.95) -> pd.DataFrame:
    """Mean score over all generated images per model and metric (and style), t-based CI (Table 2)."""
    rows = []
    for metric in metrics or metrics_in(df):
        for model, g in df.groupby("model", sort=False):
            groups = [("all", g)] + ([(s, gs) for s, gs in g.groupby("style") if s] if by_style else [])
            for style, gs in groups:
                ok = gs[(gs["status"] == "ok")][metric]
                ci = mean_ci(ok.to_numpy(), level)
                rows.append({"metric": metric, "model": model, "style": style, "mean": ci.mean, "ci_low": ci.low,
                             "ci_high": ci.high, "std": ci.std, "n_images": ci.n,
                             "n_failed_images": int((gs["status"] != "ok").sum())})
    return pd.DataFrame(rows)


def nsfw_shares(df: pd.DataFrame) -> pd.DataFrame:
    """Share (%) of generated images flagged by the safety checker, per model (where one was run)."""
    rows = []
    for model, g in df.groupby("model", sort=False):
        if "nsfw" not in g:
            continue
        flags = g.loc[(g["status"] == "ok"), "nsfw"]
        flags = flags[flags.notna()]
        if not len(flags):
            continue
        flags = flags.map(lambda v: v if isinstance(v, (bool, np.bool_)) else str(v).lower() == "true").astype(bool)
        s = share_ci(flags.to_numpy())
        rows.append({"model": model, "nsfw_share": 100 * s.rate, "ci_low": 100 * s.low, "ci_high": 100 * s.high,
                     "flagged": s.wins, "n_images": s.n})
    return pd.DataFrame(rows, columns=["model", "nsfw_share", "ci_low", "ci_high", "flagged", "n_images"])
