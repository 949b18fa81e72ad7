"""Do rounds pay? One offline round against rounds of labeling, at equal label budgets, in the shapes world.

    kto-lab synthetic rounds --base figures/synthetic/base/pipeline --out runs/rounds_study
    kto-lab synthetic rounds-report --run runs/rounds_study --out figures/rounds

A *cell* is one :func:`kto_lab.rounds` run (:mod:`kto_lab.loop`): (objective, label budget, number of
rounds, seed). Every cell

* draws its prompt pool, ``budget / images_per_prompt`` held-in captions of the shapes grammar (the cell's
  seed; none of them held out), and labels ``budget`` images of it in all: one round of every prompt (the
  offline setting: labels on the base model's images, trained against the base), or R rounds of
  ``budget / R`` images, round k drawn from round k-1's model (reference: the previous round, or the base);
* is labelled by the synthetic user (:mod:`kto_lab.synthetic.users`), whose bar is fixed once for the whole
  study: the median of the user's score on the base model's own images of calibration captions, so a like
  means the same in every cell and round;
* trains ``steps`` optimizer steps in all (``steps / R`` per round: equal compute), full fine-tune, cosine
  schedule per round; Diffusion-DPO on the same labels' (liked, disliked) pairs within a caption;
* is evaluated after each round on 64 held-out captions x 2 images (the sweeps' set, same seeds in every
  round and cell): the user's score (the reward), prompt fidelity, and the distance from the base.

Each cell's result is ``OUT/cells/<cell>.json`` (its round log and the last round's per-image scores),
written when the cell ends; a rerun skips finished cells and resumes a cell in progress (its rounds are
resumable; a lock per cell lets two processes share OUT).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np

from ..config import ConfigError, check_choice, check_range
from ..paths import write_text_atomic
from .users import USERS, get_user

OBJECTIVES = ("kto", "dpo", "bce", "sft", "nft")
REFERENCES = ("previous", "base")


@dataclass
class RoundsStudyConfig:
    """The study's world and plan. Sized to finish in a few hours on 2 shared CPU cores."""

    user: str = "red"
    objectives: List[str] = field(default_factory=lambda: ["kto", "dpo", "bce"])  # nft: the flow world only
    budgets: List[int] = field(default_factory=lambda: [500, 1000, 2000])  # labels in all, per cell
    round_counts: List[int] = field(default_factory=lambda: [1, 4])  # 1 = offline; R = R rounds of budget / R
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    images_per_prompt: int = 5  # N images of each prompt per round (DPO's pairs form within a prompt's N)
    steps: int = 120  # optimizer steps per cell in all (steps / R per round), as the sweeps' 120
    batch_size: int = 32
    warmup_steps: int = 10  # per round (at most a third of its steps)
    gamma: float = 0.8  # share of desirable samples (Diffusion-KTO sec. 4.2)
    # Per objective: learning rate and beta. KTO 1e-4 / 1000, DPO 3e-6 / 1000 (the rate that matched KTO's
    # fidelity in figures/kto_vs_dpo.md), BCE 1e-4; DiffusionNFT beta 1 (its paper's scale).
    learning_rates: Dict[str, float] = field(default_factory=lambda: {"kto": 1e-4, "dpo": 3e-6, "bce": 1e-4,
                                                                      "sft": 1e-4, "nft": 1e-4})
    betas: Dict[str, float] = field(default_factory=lambda: {"kto": 1000.0, "dpo": 1000.0, "nft": 1.0})
    reference: str = "previous"  # the reference of rounds 2..R: the previous round (online) or the base
    n_eval_prompts: int = 64  # held-out captions (the sweeps' set), eval_images_per_prompt images each
    eval_images_per_prompt: int = 2
    n_calibration_prompts: int = 200  # captions whose base images set the user's bar (median score)
    inference_steps: int = 20  # steps of the world's sampler (DDIM; the flow world: flow Euler; synthetic.evaluate)

    def validate(self) -> "RoundsStudyConfig":
        check_choice("study.user", self.user, list(USERS))
        if not self.objectives or not self.budgets or not self.round_counts or not self.seeds:
            raise ConfigError("study.objectives, budgets, round_counts and seeds must each list at least one value")
        for o in self.objectives:
            check_choice("study.objectives[]", o, OBJECTIVES)
            if o not in self.learning_rates:
                raise ConfigError(f"study.learning_rates has no rate for {o!r}")
        for name in ("images_per_prompt", "steps", "batch_size", "n_eval_prompts", "eval_images_per_prompt",
                     "n_calibration_prompts", "inference_steps"):
            check_range(f"study.{name}", getattr(self, name), low=1)
        check_range("study.warmup_steps", self.warmup_steps, low=0)
        check_range("study.gamma", self.gamma, low=0.0, high=1.0, low_open=True)
        check_choice("study.reference", self.reference, REFERENCES)
        for b in self.budgets:
            for r in self.round_counts:
                check_range("study.round_counts[]", r, low=1)
                if b % (r * self.images_per_prompt) or self.steps % r:
                    raise ConfigError(f"study: budget {b} in {r} round(s) of {self.images_per_prompt} images per prompt "
                                      f"(and {self.steps} steps) does not divide evenly; choose budgets that do")
        return self


@dataclass(frozen=True)
class Cell:
    objective: str
    budget: int
    rounds: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.objective}_b{self.budget}_r{self.rounds}_s{self.seed}"


def plan_cells(cfg: RoundsStudyConfig) -> List[Cell]:
    """Seed by seed, smallest budget first (a partial study already covers every objective and schedule)."""
    return [Cell(o, b, r, s) for s in cfg.seeds for b in sorted(cfg.budgets) for o in cfg.objectives
            for r in cfg.round_counts]


def held_out_captions(cfg: RoundsStudyConfig) -> List[str]:
    from .shapes import eval_captions

    return eval_captions(cfg.n_eval_prompts, seed=99)  # the sweeps' evaluation captions


def prompt_pool(n: int, seed: int, exclude) -> List[str]:
    """``n`` distinct captions for labeling, none of ``exclude`` (the held-out ones)."""
    from .shapes import eval_captions

    out = [c for c in eval_captions(n + len(exclude), seed=10_000 + seed) if c not in set(exclude)]
    return out[:n]


def _write_prompts(path: Path, captions: List[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(c + "\n" for c in captions))
    return path


def calibrate_user(base_dir: Path, out: Path, cfg: RoundsStudyConfig) -> Dict:
    """``OUT/user.json``: the user's bar, the median of its score on the base model's images of
    ``n_calibration_prompts`` captions (``images_per_prompt`` each, their own seeds), written once."""
    path = out / "user.json"
    if path.is_file():
        return json.loads(path.read_text())
    from .evaluate import eval_set, make_pipeline, sample

    user = get_user(cfg.user)
    captions = prompt_pool(cfg.n_calibration_prompts, seed=777, exclude=held_out_captions(cfg))
    caps, seeds = eval_set(captions, cfg.images_per_prompt, base_seed=5_000_000)
    images = sample(make_pipeline(base_dir), caps, seeds, steps=cfg.inference_steps)
    scores = user.score(np.round(images * 255) / 255)  # as the PNG files the labeler reads
    info = {"user": user.name, "scorer": user.scorer, "threshold": float(np.median(scores)),
            "rule": "like when the score is >= the median score of the base model's calibration images",
            "n_images": int(len(scores)), "base_mean_score": float(scores.mean())}
    path.write_text(json.dumps(info, indent=1))
    return info


def rounds_config(cell: Cell, cfg: RoundsStudyConfig, base_dir: Path, work: Path, threshold: float) -> Dict:
    """The :class:`~kto_lab.loop.config.RoundsConfig` (as a dict) of one cell: its images drawn with the world's
    sampler (:func:`~kto_lab.synthetic.evaluate.world_sampler`), as the calibration's are."""
    from .evaluate import world_sampler

    held_out = held_out_captions(cfg)
    n_prompts = cell.budget // cfg.images_per_prompt
    prompts = _write_prompts(work / "prompts.txt", prompt_pool(n_prompts, cell.seed, held_out))
    eval_prompts = _write_prompts(work / "eval_prompts.txt", held_out)
    steps = cfg.steps // cell.rounds
    train = {"cpu": True, "seed": cell.seed,
             "data": {"resolution": 16, "gamma": cfg.gamma, "seed": cell.seed},
             "objective": {"objective": cell.objective, "beta": cfg.betas.get(cell.objective, 1000.0)},
             "optim": {"max_steps": steps, "batch_size": cfg.batch_size, "learning_rate": cfg.learning_rates[cell.objective],
                       "warmup_steps": min(cfg.warmup_steps, steps // 3), "lr_scheduler": "cosine", "weight_decay": 0.0,
                       "max_grad_norm": 1.0},
             "logging": {"log_every": 10, "progress_bar": False}, "checkpoint": {"every": 0}}
    return {
        "out_dir": str(work / "rounds"), "base": str(base_dir), "prompts": str(prompts), "eval_prompts": str(eval_prompts),
        "rounds": cell.rounds, "images_per_prompt": cfg.images_per_prompt,
        "prompts_per_round": n_prompts // cell.rounds, "reference": cfg.reference, "seed": 1_000_000 + cell.seed * 100_000,
        "labeler": {"kind": "user", "user": cfg.user, "threshold": threshold},
        "generate": {"num_inference_steps": cfg.inference_steps, "guidance_scale": 1.0, "height": 16, "width": 16,
                     "sampler": world_sampler(base_dir), "batch_size": 64, "device": "cpu"},
        "train": train,
        "eval": {"n_per_prompt": cfg.eval_images_per_prompt, "seed": 0, "reward": get_user(cfg.user).scorer,
                 "fidelity": "fidelity", "batch_size": 256},
        "progress_bar": False,
    }


def run_cell(cell: Cell, cfg: RoundsStudyConfig, base_dir: Path, out: Path, threshold: float, log=print) -> Dict:
    """Run (or resume) one cell; write ``OUT/cells/<cell>.json``; return it."""
    import pandas as pd

    from ..eval.scorers import get_scorer
    from ..loop import Rounds
    from .evaluate import FidelityScorer

    t0 = time.time()
    work = out / "work" / cell.name
    user = get_user(cfg.user)
    scorers = {user.scorer: get_scorer(user.scorer), "fidelity": FidelityScorer()}
    r = Rounds(rounds_config(cell, cfg, base_dir, work, threshold), scorers=scorers, log=lambda s: None)
    rows = r.run()
    per_image = {}
    for k in range(cell.rounds + 1):  # every round's per-image scores, for head-to-head win rates
        d = r.round_dir(k) / "eval"
        s = pd.read_csv(d / "scores.csv", dtype={"prompt_id": str}).sort_values(["prompt_id", "k"])
        if k > 0:
            dist = pd.read_csv(d / "distance.csv", dtype={"prompt_id": str})
            s = s.merge(dist, on=["prompt_id", "k"])
        else:
            s["distance"] = 0.0
        per_image[str(k)] = {"score": s[user.scorer].tolist(), "fidelity": s["fidelity"].tolist(),
                             "distance": s["distance"].tolist()}
    result = {"cell": dataclasses.asdict(cell), "name": cell.name, "rows": rows, "per_image": per_image,
              "seconds": round(time.time() - t0, 1)}
    path = out / "cells" / f"{cell.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(result, default=float), tmp=path.with_suffix(".json.partial"))
    for k in range(1, cell.rounds + 1):  # the weights (3 MB a round) are not needed once measured; images and labels stay
        shutil.rmtree(r.round_dir(k) / "train", ignore_errors=True)
    return result


_WORLD_FIELDS = ("user", "images_per_prompt", "steps", "batch_size", "warmup_steps", "gamma", "reference",
                 "n_eval_prompts", "eval_images_per_prompt", "n_calibration_prompts", "inference_steps")


def _check_same_world(out: Path, cfg: RoundsStudyConfig, base_dir: Path) -> None:
    """``OUT/world.json``: the study's world (its base's pipeline class and sampler too, so that a flow base's cells
    never join a DDPM base's, nor read its user's bar); another world in the same OUT is refused."""
    from ..sd.hub import pipeline_class_name
    from .evaluate import world_sampler

    world = {k: getattr(cfg, k) for k in _WORLD_FIELDS}
    world.update({"pipeline": pipeline_class_name(base_dir), "sampler": world_sampler(base_dir)})
    path = out / "world.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        diff = [f"{k}: {saved.get(k)!r} there, {v!r} here" for k, v in world.items() if saved.get(k) != v]
        if diff:
            raise ConfigError(f"{out} holds cells of another study ({'; '.join(diff)}); use another --out")
    else:
        path.write_text(json.dumps(world, indent=1))


def run_study(base_dir: str | Path, out: str | Path, cfg: Optional[RoundsStudyConfig] = None, *, log=print) -> List[Path]:
    """Every cell of the plan not finished in ``out`` (skipping cells another process is running)."""
    from .sweep import _claim, _lock  # one lock-per-cell rule for the sweeps and this study

    cfg = (cfg or RoundsStudyConfig()).validate()
    base_dir, out = Path(base_dir), Path(out)
    if not (base_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"--base {str(base_dir)!r} is not a pipeline directory (no model_index.json)")
    out.mkdir(parents=True, exist_ok=True)
    _check_same_world(out, cfg, base_dir)
    threshold = calibrate_user(base_dir, out, cfg)["threshold"]
    cells = plan_cells(cfg)
    (out / "plan.json").write_text(json.dumps({"config": dataclasses.asdict(cfg),
                                               "cells": [dataclasses.asdict(c) for c in cells]}, indent=1))
    for n, cell in enumerate(cells):
        path = out / "cells" / f"{cell.name}.json"
        if path.is_file():
            continue
        if not _claim(out, cell):
            log(f"[{n + 1}/{len(cells)}] {cell.name}: another process is running it; skipped")
            continue
        try:
            result = run_cell(cell, cfg, base_dir, out, threshold, log)
        finally:
            _lock(out, cell).unlink(missing_ok=True)
        last = result["rows"][-1]
        log(f"[{n + 1}/{len(cells)}] {cell.name}: reward {last['reward']:.3f} fidelity {last['fidelity']:.3f} "
            f"distance {last['distance']:.3f} like rate (last round) {last['like_rate']:.2f} ({result['seconds']:.0f} s)")
    return [out / "cells" / f"{c.name}.json" for c in cells]


def load_cells(out: str | Path) -> Iterator[Dict]:
    for path in sorted((Path(out) / "cells").glob("*.json")):
        yield json.loads(path.read_text())
