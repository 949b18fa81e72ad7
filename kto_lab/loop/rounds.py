"""Rounds of generate -> label -> train -> evaluate, each round a run directory of its own.

    from kto_lab.loop import Rounds
    rounds = Rounds("my_rounds.yaml")           # or a RoundsConfig / dict; checked before any model loads
    rounds.run()                                # every round not done yet; or kto_lab.rounds(config)

Round ``k`` (``OUT/round-KK/``):

1. **generate** (``generated/``): N images of each of the round's prompts from the current model (the base
   in round 1, round k-1's weights after), with the evaluation harness's generator
   (:func:`kto_lab.eval.generate.generate_images`: seeded per image, resumable); ``queue.csv`` lists them;
2. **label** (``decisions.jsonl``, ``labels.json``): the labeler decides each image
   (:mod:`kto_lab.loop.labelers`; a person: the command serves the page and waits); for Diffusion-DPO,
   ``pairs.csv``: a liked and a disliked image of one prompt (:func:`kto_lab.data.converters.pairs_from_labels`);
3. **train** (``train/``): :class:`kto_lab.sd.trainer.Trainer` on every round's labels so far, from round
   k-1's weights, against the reference the config names (``previous``: the weights the round starts from;
   ``base``); a LoRA round's adapters are fused into ``model/`` for the next round to start from;
4. **evaluate** (``eval/``): the held-out prompts, N' images each with the same seeds in every round, scored
   (the harness's :func:`~kto_lab.eval.protocol.score_model`); the distance from the base is the RMS pixel
   change from round 0's image of the same prompt and seed;
5. ``round.json``, and the round log of every round: ``OUT/round_log.jsonl``, ``.csv`` and ``.png``.

Every stage is idempotent: generated images and labels are kept, a training run resumes from its latest
checkpoint (``checkpoint.resume=latest``), evaluation images and scores are reused; so an interrupted round
resumes where it stopped. ``OUT/rounds.yaml`` keeps the config: a rerun with other settings (beyond those
of :data:`~kto_lab.loop.config.MAY_CHANGE`, e.g. more rounds) is refused in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..config import ConfigError
from ..data.decisions import DecisionLog
from ..label import LabelSession, Queue
from ..paths import write_text_atomic
from .config import MAY_CHANGE, RoundsConfig, load_rounds_config
from .labelers import LabelsPending, make_labeler

__all__ = ["Rounds", "rounds", "LabelsPending", "ROUND_LOG"]

ROUND_LOG = "round_log"  # OUT/round_log.jsonl, .csv, .png
STORED_CONFIG = "rounds.yaml"
EVAL_MODEL = "eval"  # a round's evaluation images: OUT/round-KK/eval (the harness's model-directory layout)


@contextmanager
def quiet_loading(quiet: bool = True):
    """diffusers' and transformers' loading bars off while models load (``progress_bar: false``), then as before."""
    if not quiet:
        yield
        return
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    before = (dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled())
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if before[0]:
            dlog.enable_progress_bar()
        if before[1]:
            tlog.enable_progress_bar()


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, default=float))


class Rounds:
    """The rounds of one config in ``cfg.out_dir``; :meth:`run` does every round, the stage methods one step.

    ``labeler``: a Python function ``fn(images, captions)`` (``labeler.kind=callable``) or an object with
    ``label(session, round_index, queue_table=, rounds=)`` (:mod:`kto_lab.loop.labelers`), instead of the
    config's. ``scorers``: scorer objects by name (anything with ``score(images, prompts)``), usable as the
    labeler's scorer and in ``eval.reward`` / ``eval.fidelity`` beside the registry's.
    """

    def __init__(self, config: Any, overrides=(), *, labeler: Any = None, scorers: Optional[Dict[str, Any]] = None,
                 log: Callable[[str], None] = print):
        if callable(labeler) and not hasattr(labeler, "label"):
            overrides = _with(overrides, {"labeler": {"kind": "callable"}})
        self.cfg: RoundsConfig = load_rounds_config(config, overrides)
        self.log = log
        self.out = Path(self.cfg.out_dir)
        self.extra_scorers = dict(scorers or {})
        self.cfg.eval.check_names(list(self.extra_scorers) + self.cfg.labeler_scorers())
        from ..eval.prompts import load_prompts

        self.prompts = load_prompts(self.cfg.prompts, self.cfg.prompt_format)
        self.eval_prompts = load_prompts(self.cfg.eval_prompts, self.cfg.prompt_format) if self.cfg.eval_prompts else []
        per = self.cfg.prompts_per_round
        if per is not None and per > len(self.prompts):
            raise ConfigError(f"prompts_per_round={per} is more than the {len(self.prompts)} prompts in {self.cfg.prompts}")
        self.scorers = self._build_scorers()
        if labeler is not None and hasattr(labeler, "label"):
            self.labeler = labeler
        else:
            self.labeler = make_labeler(self.cfg, function=labeler, scorers=self.scorers, log=log)
        self._check_same_rounds()
        self._sessions: Dict[int, LabelSession] = {}
        self._pipe = None  # (model key, pipeline): the last one loaded, reused by the next stage

    # --- the directory --------------------------------------------------------------------------

    def round_dir(self, k: int) -> Path:
        return self.out / f"round-{k:02d}"

    def _check_same_rounds(self) -> None:
        import yaml

        from ..sd.run_dir import flatten

        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / STORED_CONFIG
        now = self.cfg.stored()
        if path.is_file():
            old = flatten(yaml.safe_load(path.read_text()) or {})
            diffs = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in flatten(now).items()
                     if old.get(k) != v and not any(k == m or k.startswith(m + ".") for m in MAY_CHANGE)]
            if diffs:
                raise ConfigError(f"{self.out} holds rounds made with other settings ({'; '.join(diffs)}); "
                                  "use those settings to continue them, or another out_dir")
        write_text_atomic(path, yaml.safe_dump(now, sort_keys=False))

    def _build_scorers(self) -> Dict[str, Any]:
        """Every scorer the rounds use, built once: the labeler's, ``eval.scorers``, and those given in Python."""
        from ..eval.run import build_scorers, resolve_device

        specs = list(self.cfg.eval.scorers)
        lab = self.cfg.labeler
        if lab.kind == "scorer":
            specs.insert(0, lab.scorer)
        out = dict(self.extra_scorers)
        names = self.cfg.labeler_scorers() if lab.kind == "user" else []
        from ..eval.run import ScorerSpec

        specs += [ScorerSpec(name) for name in names]
        todo = [s for s in dict((s.name, s) for s in specs).values() if s.name not in out]
        out.update(build_scorers(todo, resolve_device(self.cfg.generate.device), self.cfg.eval.batch_size))
        return out

    # --- models -----------------------------------------------------------------------------------

    def model_of(self, k: int) -> Optional[Path]:
        """Round ``k``'s weights (its denoiser directory; None for the base, round 0)."""
        if k == 0:
            return None
        fused = self.round_dir(k) / "model"
        if fused.is_dir():
            return next(p for p in fused.iterdir() if (p / "config.json").is_file())
        from ..sd.run_dir import final_weights

        weights = final_weights(self.round_dir(k) / "train")
        if weights is None or not weights.is_dir():
            raise FileNotFoundError(f"round {k} has no trained weights yet ({self.round_dir(k) / 'train'})")
        return weights

    def pipeline(self, k: int):
        """The pipeline of round ``k``'s model (k = 0: the base), with ``generate.sampler``, on the device."""
        key = str(self.model_of(k))
        if self._pipe is not None and self._pipe[0] == key:
            return self._pipe[1]
        import torch

        from ..eval.run import resolve_device
        from ..sd.models import load_pipeline

        g = self.cfg.generate
        self._pipe = None
        dtype = None if g.dtype == "float32" else getattr(torch, g.dtype)
        model = self.model_of(k)
        with quiet_loading(not self.cfg.progress_bar):
            pipe = load_pipeline(self.cfg.base, torch_dtype=dtype, denoiser_path=model)
        if g.sampler is not None:
            import diffusers

            pipe.scheduler = getattr(diffusers, g.sampler).from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        self._pipe = (key, pipe.to(resolve_device(g.device)))
        return self._pipe[1]

    def _generate(self, k: int, prompts, directory: Path, n: int, base_seed: int) -> None:
        from ..eval.generate import generate_images

        g = self.cfg.generate
        counts = generate_images(self.pipeline(k), prompts, directory, model_name=directory.name, n_per_prompt=n,
                                 base_seed=base_seed, batch_size=g.batch_size, num_inference_steps=g.num_inference_steps,
                                 guidance_scale=g.guidance_scale, height=g.height, width=g.width,
                                 progress=self.cfg.progress_bar,
                                 weights={"pipeline": self.cfg.base, "denoiser": self.model_of(k), "lora": None})
        if counts["failed"]:
            raise RuntimeError(f"{counts['failed']} image(s) failed to generate in {directory} (see its manifest.jsonl)")

    # --- 1. generate --------------------------------------------------------------------------------

    def round_prompts(self, k: int):
        """Round ``k``'s prompts: all of them, or the next ``prompts_per_round`` of the list (wrapping around)."""
        per = self.cfg.prompts_per_round
        if per is None:
            return list(self.prompts)
        start = ((k - 1) * per) % len(self.prompts)
        return [self.prompts[(start + i) % len(self.prompts)] for i in range(per)]

    def generate(self, k: int) -> Path:
        """Round ``k``'s images for labeling (from round k-1's model) and their queue table; returns the table."""
        d = self.round_dir(k)
        prompts = self.round_prompts(k)
        n = self.cfg.images_per_prompt
        t = time.time()
        self._generate(k - 1, prompts, d / "generated", n, self.cfg.seed + (k - 1) * len(prompts) * n)
        from ..eval.generate import read_manifest

        rows = sorted(read_manifest(d / "generated"), key=lambda r: ([p.id for p in prompts].index(r["prompt_id"]), r["k"]))
        from ..data.tables import write_table

        table = d / "queue.csv"
        tmp = d / "queue.tmp.csv"
        write_table(({"image": f"generated/{r['file']}", "caption": r["prompt"],
                      "source_id": f"round{k}/{r['prompt_id']}/{r['k']}"} for r in rows), tmp, image_columns=("image",))
        os.replace(tmp, table)
        self._timing(k, "generate", t)
        return table

    # --- 2. label -----------------------------------------------------------------------------------

    def queue(self, k: int) -> Queue:
        """Round ``k``'s labeling queue (its generated images, in prompt order)."""
        table = self.round_dir(k) / "queue.csv"
        if not table.is_file():
            self.generate(k)
        return Queue.from_table(table)

    def decisions(self, k: int) -> Path:
        return self.round_dir(k) / "decisions.jsonl"

    def session(self, k: int) -> LabelSession:
        """A :class:`LabelSession` on round ``k``'s queue and decision log (what the widget or a page shows)."""
        if k not in self._sessions:
            self._sessions[k] = LabelSession(self.queue(k), self.decisions(k), getattr(self.labeler, "name", None))
        return self._sessions[k]

    def label(self, k: int, *, wait: bool = True) -> Dict[str, Any]:
        """Round ``k``'s labels: the labeler decides every image without a decision (a person: the command waits,
        unless ``wait=False``, which raises :class:`LabelsPending` while some are missing). Writes
        ``labels.json`` (and ``pairs.csv`` for DPO); returns the counts."""
        session = self.session(k)
        t = time.time()
        info: Dict[str, Any] = {}
        if not session.complete:
            if not wait and not getattr(self.labeler, "automatic", False):
                raise LabelsPending(f"round {k}: {session.progress()}; label the rest (widget or page) first")
            info = self.labeler.label(session, k, queue_table=self.round_dir(k) / "queue.csv", rounds=self) or {}
        progress = session.progress()
        if not progress.complete:
            raise LabelsPending(f"round {k}: {progress}")
        saved = self.round_dir(k) / "labels.json"
        if not info and saved.is_file():
            info = {key: v for key, v in json.loads(saved.read_text()).items() if key in ("threshold", "rule")}
        counts = progress.as_dict()
        labelled = progress.liked + progress.disliked
        summary = {**counts, "labels": progress.liked + progress.disliked + progress.skipped,
                   "like_rate": progress.liked / labelled if labelled else float("nan"), **info,
                   "labelers": sorted({d.labeler for d in session.log.active.values()})}
        if self._objective() == "dpo":
            summary["pairs"] = self._write_pairs(k)
        _write_json(saved, summary)
        self._timing(k, "label", t)
        return summary

    def _write_pairs(self, k: int) -> int:
        """``pairs.csv``: round ``k``'s (liked, disliked) images of one prompt, each image in at most one pair."""
        from ..data.converters import pairs_from_labels
        from ..data.records import write_pairs

        records = DecisionLog(self.decisions(k)).records()
        pairs = pairs_from_labels([r["caption"] for r in records], [r["label"] for r in records])
        rows = [{"caption": records[w]["caption"], "image_w": records[w]["image"], "image_l": records[l]["image"]}
                for w, l in pairs]
        path = self.round_dir(k) / "pairs.csv"
        tmp = self.round_dir(k) / "pairs.tmp.csv"
        if rows:
            write_pairs(rows, tmp)
            os.replace(tmp, path)
        else:
            path.unlink(missing_ok=True)
        return len(rows)

    # --- 3. train -----------------------------------------------------------------------------------

    def _objective(self) -> str:
        return self.cfg.train_config_for(self.round_dir(1) / "train", []).objective.objective

    def train_config(self, k: int):
        """Round ``k``'s :class:`~kto_lab.sd.config.TrainConfig`: every round's labels so far (DPO: their pairs),
        from round k-1's weights, against the configured reference."""
        dpo = self._objective() == "dpo"
        tables = [self.round_dir(j) / ("pairs.csv" if dpo else "decisions.jsonl") for j in range(1, k + 1)]
        tables = [t for t in tables if t.is_file()]
        if not tables:
            raise ConfigError(f"round {k}: no {'pair' if dpo else 'label'} to train on yet "
                              f"({'DPO needs a liked and a disliked image of one prompt' if dpo else 'label first'})")
        start = self.model_of(k - 1) if k > 1 else None
        reference = self.cfg.base if (self.cfg.reference == "base" and k > 1) else None
        return self.cfg.train_config_for(self.round_dir(k) / "train", tables, start, reference)

    def train(self, k: int) -> Path:
        """Round ``k``'s training (resumed from its latest checkpoint if interrupted); returns its weights."""
        from ..sd.run_dir import final_weights

        tcfg = self.train_config(k)
        out = self.round_dir(k) / "train"
        t = time.time()
        if final_weights(out) is None:
            from ..sd.trainer import Trainer

            self._pipe = None  # free the generator's memory for training
            self.log(f"round {k}: training {tcfg.objective.objective} for {tcfg.optim.max_steps} steps on "
                     f"{', '.join(p.parent.name + '/' + p.name for p in map(Path, tcfg.data.train))}")
            with quiet_loading(not self.cfg.progress_bar):
                trainer = Trainer(tcfg)
            trainer.fit()
        if tcfg.lora.enabled:
            self._fuse_lora(k, final_weights(out))
        self._timing(k, "train", t)
        return self.model_of(k)

    def _fuse_lora(self, k: int, lora: Path) -> None:
        """A LoRA round's model: its adapters fused into the denoiser it started from (``model/``), the start of round k+1."""
        target = self.round_dir(k) / "model"
        if target.is_dir():
            return
        from ..sd.families import family_of_pipeline
        from ..sd.models import load_pipeline

        self._pipe = None
        with quiet_loading(not self.cfg.progress_bar):
            pipe = load_pipeline(self.cfg.base, denoiser_path=self.model_of(k - 1) if k > 1 else None, lora_path=lora)
        family = family_of_pipeline(pipe)
        pipe.fuse_lora(components=[family.denoiser_subfolder])
        pipe.unload_lora_weights()
        tmp = self.round_dir(k) / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        family.denoiser_of(pipe).save_pretrained(tmp / family.denoiser_subfolder, safe_serialization=True)
        os.replace(tmp, target)

    # --- 4. evaluate --------------------------------------------------------------------------------

    def evaluate(self, k: int) -> Dict[str, Any]:
        """Round ``k``'s model (k = 0: the base) on the held-out prompts: mean scores with 95 % t intervals, the
        reward's win rate over the base (median image per prompt), and the distance from the base."""
        import pandas as pd

        from ..eval.protocol import score_model
        from ..eval.stats import mean_ci

        if not self.eval_prompts:
            return {}
        d = self.round_dir(k) / EVAL_MODEL
        t = time.time()
        self._generate(k, self.eval_prompts, d, self.cfg.eval.n_per_prompt, self.cfg.eval.seed)
        scores = score_model(d, self.scorers, batch_size=self.cfg.eval.batch_size, progress=self.cfg.progress_bar)
        keep = {p.id for p in self.eval_prompts}
        scores = scores[scores.prompt_id.isin(keep) & (scores.k < self.cfg.eval.n_per_prompt)]
        out: Dict[str, Any] = {}
        for name in self.scorers:
            ci = mean_ci(scores[name].to_numpy())
            out[name] = {"mean": ci.mean, "low": ci.low, "high": ci.high, "n": ci.n}
        if k > 0:
            base = self.round_dir(0) / EVAL_MODEL / "scores.csv"
            if not base.is_file():
                self.evaluate(0)
            base_scores = pd.read_csv(base, dtype={"prompt_id": str})
            distance = self._distance(d, scores, base_scores)
            ci = mean_ci(distance["distance"].to_numpy())
            out["distance"] = {"mean": ci.mean, "low": ci.low, "high": ci.high, "n": ci.n}
            reward = self.cfg.reward_scorer()
            if reward is not None:
                out["reward_win_rate"] = self._win_rate(scores, base_scores, reward)
        else:
            out["distance"] = {"mean": 0.0, "low": 0.0, "high": 0.0, "n": len(scores)}
        _write_json(d / "summary.json", out)
        self._timing(k, "eval", t)
        return out

    def _distance(self, d: Path, scores, base_scores):
        """Per image, the RMS pixel change from the base's image of the same prompt and seed (``distance.csv``)."""
        from PIL import Image

        from ..images import image_distance

        base_dir = self.round_dir(0) / EVAL_MODEL
        files = base_scores.set_index(["prompt_id", "k"])["file"]
        rows = []
        for _, r in scores.iterrows():
            with Image.open(d / r["file"]) as a, Image.open(base_dir / files[(r["prompt_id"], r["k"])]) as b:
                x = np.asarray(a.convert("RGB"), dtype=np.float64)[None] / 255
                y = np.asarray(b.convert("RGB"), dtype=np.float64)[None] / 255
            rows.append({"prompt_id": r["prompt_id"], "k": int(r["k"]), "distance": float(image_distance(x, y)[0])})
        import pandas as pd

        df = pd.DataFrame(rows)
        df.to_csv(d / "distance.csv", index=False)
        return df

    def _win_rate(self, scores, base_scores, metric: str) -> Dict[str, float]:
        import pandas as pd

        from ..eval.protocol import win_rates

        both = pd.concat([scores.assign(model="round"), base_scores.assign(model="base")], ignore_index=True)
        both["style"] = ""
        row = win_rates(both, "round", "base", [metric], by_style=False, seed=self.cfg.seed).iloc[0]
        return {"metric": metric, "win_rate": float(row.win_rate), "low": float(row.ci_low), "high": float(row.ci_high)}

    # --- the round, and the log ---------------------------------------------------------------------

    def _timing(self, k: int, stage: str, start: float) -> None:
        path = self.round_dir(k) / "timings.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        saved = json.loads(path.read_text()) if path.is_file() else {}
        saved[stage] = round(saved.get(stage, 0.0) + time.time() - start, 2)
        _write_json(path, saved)

    def run_round(self, k: int) -> Dict[str, Any]:
        """Every stage of round ``k`` (each skipped where done; earlier rounds first), then its row of the round
        log. Round 0 is the base's evaluation."""
        if (self.round_dir(k) / "round.json").is_file():
            return json.loads((self.round_dir(k) / "round.json").read_text())
        if k > 0 and not (self.round_dir(k - 1) / "round.json").is_file():
            self.run_round(k - 1)
        self.round_dir(k).mkdir(parents=True, exist_ok=True)
        if k == 0:
            self.log(f"round 0: evaluating the base on {len(self.eval_prompts)} held-out prompts" if self.eval_prompts
                     else "round 0: no eval_prompts, so no evaluation")
            row = self._row(0, {}, self.evaluate(0))
        else:
            self.log(f"round {k} of {self.cfg.rounds}: generating {len(self.round_prompts(k)) * self.cfg.images_per_prompt} "
                     f"images from {'the base' if k == 1 else f'round {k - 1}'}")
            self.generate(k)
            labels = self.label(k)
            self.log(f"round {k}: {labels['liked']} liked, {labels['disliked']} disliked, {labels['skipped']} skipped")
            self.train(k)
            row = self._row(k, labels, self.evaluate(k))
        _write_json(self.round_dir(k) / "round.json", row)
        self.write_log()
        return row

    def _row(self, k: int, labels: Dict[str, Any], evaluation: Dict[str, Any]) -> Dict[str, Any]:
        spent = labels.get("labels", 0)
        for j in range(1, k):
            spent += json.loads((self.round_dir(j) / "labels.json").read_text())["labels"]
        row = {"round": k, "labels": labels.get("labels", 0), "labels_spent": spent,
               "liked": labels.get("liked", 0), "disliked": labels.get("disliked", 0),
               "skipped": labels.get("skipped", 0), "like_rate": labels.get("like_rate", float("nan")),
               "threshold": labels.get("threshold"), "pairs": labels.get("pairs")}
        if k > 0:
            tcfg = self.train_config(k)
            row.update(objective=tcfg.objective.objective, train_steps=tcfg.optim.max_steps,
                       reference="base" if (self.cfg.reference == "base" or k == 1) else "previous")
        reward, fidelity = self.cfg.reward_scorer(), self.cfg.eval.fidelity
        for column, name in (("reward", reward), ("fidelity", fidelity), ("distance", "distance")):
            if name is not None and name in evaluation:
                e = evaluation[name]
                row.update({column: e["mean"], f"{column}_low": e["low"], f"{column}_high": e["high"]})
        if "reward_win_rate" in evaluation:
            w = evaluation["reward_win_rate"]
            row.update(reward_win_rate=w["win_rate"], reward_win_rate_low=w["low"], reward_win_rate_high=w["high"])
        row["scores"] = {name: evaluation[name]["mean"] for name in self.scorers if name in evaluation}
        timings = self.round_dir(k) / "timings.json"
        row["seconds"] = json.loads(timings.read_text()) if timings.is_file() else {}
        return row

    def run(self) -> List[Dict[str, Any]]:
        """The base's evaluation (round 0), then every round up to ``cfg.rounds`` not done yet; returns the log."""
        from ..sd.run_dir import RunLock

        lock = RunLock(self.out)
        lock.acquire()
        try:
            self.run_round(0)
            for k in range(1, self.cfg.rounds + 1):
                self.run_round(k)
            return self.write_log()
        finally:
            lock.release()

    def next_round(self) -> int:
        """The first round (from 1) without its row in the log: the one to generate, label and train next."""
        k = 1
        while (self.round_dir(k) / "round.json").is_file():
            k += 1
        return k

    def rows(self) -> List[Dict[str, Any]]:
        """The round log so far: one row per finished round (round 0: the base)."""
        rows = [json.loads(p.read_text()) for p in sorted(self.out.glob("round-*/round.json"))]
        return sorted(rows, key=lambda r: r["round"])

    def write_log(self) -> List[Dict[str, Any]]:
        """``round_log.jsonl`` / ``.csv`` / ``.png`` from every finished round's ``round.json``."""
        from .report import plot_round_log, write_round_log

        rows = self.rows()
        write_round_log(rows, self.out / ROUND_LOG)
        plot_round_log(rows, self.out / f"{ROUND_LOG}.png")
        return rows


def _with(overrides, extra: Dict[str, Any]):
    from ..config import _merge, parse_overrides

    base = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    return _merge(base, extra)


def rounds(config: Any, overrides=(), *, labeler: Any = None, scorers: Optional[Dict[str, Any]] = None,
           log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """``kto_lab.rounds(config)``: every round of ``config`` (a :class:`RoundsConfig`, a YAML path or a dict,
    with ``key=value`` overrides) not done yet in its ``out_dir``; returns the round log's rows. See :class:`Rounds`."""
    return Rounds(config, overrides, labeler=labeler, scorers=scorers, log=log).run()
