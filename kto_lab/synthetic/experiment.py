"""The synthetic-user experiment (Diffusion-KTO appendix C) and the LoRA study's comparison
(its Table 1) in the shapes world, every method through the same SD trainer.

    base   = build_base("runs/synthetic/base")                       # from scratch, minutes on CPU
    result = run_comparison("runs/synthetic/base", "runs/synthetic/red", AlignConfig(user="red"))

:func:`build_base` trains the base pipeline (:mod:`kto_lab.synthetic.base`) and measures its
prompt fidelity. :func:`run_comparison` labels images with a synthetic user
(:mod:`kto_lab.synthetic.users`), fine-tunes the base with every method (SFT, CSFT, BCE,
Diffusion-DPO, Diffusion-KTO with each utility, SPIN-Diffusion via :mod:`kto_lab.spin`),
records the user's score and fidelity through training (the paper's Figure 7 plot), and
evaluates the final models against the base with the evaluation harness (win rates from the
median image per prompt, mean scores with 95% intervals).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Set

import numpy as np

from ..config import check_choice, check_range
from ..objectives import CSFT_PREFIXES
from ..sd.config import LR_SCHEDULERS
from . import base as B
from .evaluate import eval_set, evaluate_models, image_distance, make_pipeline, per_image_scores, sample
from .shapes import eval_captions, make_dataset
from .users import USERS, get_user, label_pool

CSFT_SAMPLING_PREFIX = CSFT_PREFIXES[0]  # CSFT samples with "good image, " (Diffusion-KTO sec. 5)
METHODS = ("sft", "csft", "bce", "dpo", "kto", "kto_loss_averse", "kto_risk_seeking", "spin")


@dataclass
class BaseConfig:
    """The base model. Sized to train in minutes on 2 CPU cores (16x16 images)."""

    n_captions: int = 4000
    image_size: int = 16
    block_out_channels: List[int] = field(default_factory=lambda: [32, 64])
    vae_steps: int = 800
    unet_steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 1e-3  # from scratch (not the paper's fine-tuning 1e-7)
    n_eval_prompts: int = 64
    seed: int = 0

    def validate(self) -> "BaseConfig":
        for name in ("n_captions", "vae_steps", "unet_steps", "batch_size", "n_eval_prompts"):
            check_range(f"base.{name}", getattr(self, name), low=1)
        check_choice("base.image_size", self.image_size, (16, 32))
        return self


@dataclass
class AlignConfig:
    """Fine-tuning the base toward a synthetic user, every method with the same budget."""

    user: str = "red"
    methods: List[str] = field(default_factory=lambda: list(METHODS))
    n_captions: int = 1000  # feedback pool: captions x renders (+ the user's transformed copies)
    renders_per_caption: int = 2
    steps: int = 300  # optimizer steps per method (SPIN: per iteration)
    batch_size: int = 32
    learning_rate: float = 1e-4  # full fine-tune, AdamW without weight decay (Adam, as A.1)
    warmup_steps: int = 20
    lr_scheduler: str = "constant_with_warmup"  # or "cosine" (the sweeps: a settled final model), "linear"
    beta: float = 1000.0  # KTO and DPO beta (A.1 uses 5000 for SD at lr 1e-7; see docs/synthetic.md)
    gamma: float = 0.8  # share of desirable samples (sec. 4.2)
    spin_iterations: int = 3
    eval_every: int = 50  # steps between points of the through-training curve
    n_curve_prompts: int = 32
    n_eval_prompts: int = 64
    n_per_prompt: int = 4  # images per prompt for the final evaluation (A.2 uses 5)
    seed: int = 0

    def validate(self) -> "AlignConfig":
        check_choice("align.user", self.user, list(USERS))
        for m in self.methods:
            check_choice("align.methods[]", m, METHODS)
        for name in ("n_captions", "renders_per_caption", "steps", "batch_size", "spin_iterations", "eval_every",
                     "n_curve_prompts", "n_eval_prompts", "n_per_prompt"):
            check_range(f"align.{name}", getattr(self, name), low=1)
        check_range("align.learning_rate", self.learning_rate, low=0.0, low_open=True)
        check_range("align.beta", self.beta, low=0.0, low_open=True)
        check_range("align.gamma", self.gamma, low=0.0, high=1.0, low_open=True)
        check_choice("align.lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        return self


# --------------------------------------------------------------------------------------
# the base model
# --------------------------------------------------------------------------------------


def _train_config(pretrained: str, out_dir: Path, records: Path, *, resolution: int, objective: str, steps: int,
                  batch_size: int, learning_rate: float, warmup: int, seed: int, gamma: float = 0.8,
                  beta: float = 1000.0, utility: str = "kto", lr_scheduler: str = "constant_with_warmup",
                  cache: bool = True, progress: bool = False) -> Dict:
    """A ``TrainConfig`` dict for the SD trainer on the shapes pipeline (full UNet fine-tune on CPU)."""
    cfg = {
        "output_dir": str(out_dir), "seed": seed, "cpu": True,
        "model": {"pretrained": pretrained, "denoiser": None, "reference": None},
        "data": {"train": [str(records)], "resolution": resolution, "gamma": gamma, "seed": seed},
        "objective": {"objective": objective, "utility": utility, "beta": beta},
        "optim": {"max_steps": steps, "batch_size": batch_size, "learning_rate": learning_rate,
                  "warmup_steps": warmup, "lr_scheduler": lr_scheduler, "weight_decay": 0.0, "max_grad_norm": 1.0},
        "logging": {"log_every": 10, "progress_bar": progress},
        "checkpoint": {"every": 0},
    }
    if cache:
        cfg["data"]["cache_dir"] = str(out_dir / "cache")
    return cfg


def build_base(out_dir: str | Path, cfg: Optional[BaseConfig] = None, *, progress: bool = False) -> Dict:
    """Train the base shapes pipeline into ``out_dir/pipeline`` and measure it. Returns its card."""
    from kto_lab.sd.trainer import train

    cfg = (cfg or BaseConfig()).validate()
    out_dir = Path(out_dir)
    pipe_dir = out_dir / "pipeline"
    t0 = time.time()
    data = make_dataset(cfg.n_captions, image_size=cfg.image_size, seed=cfg.seed)
    B.build_skeleton(pipe_dir, image_size=cfg.image_size, block_out_channels=cfg.block_out_channels, seed=cfg.seed)
    vae = B.train_vae(pipe_dir, data, steps=cfg.vae_steps, batch_size=cfg.batch_size, seed=cfg.seed, progress=progress)
    t_vae = time.time() - t0
    records = B.write_image_records(data.images, data.captions, np.ones(len(data), dtype=int), out_dir / "data")
    train_cfg = _train_config(
        str(pipe_dir), out_dir / "train", records, resolution=cfg.image_size, objective="sft", steps=cfg.unet_steps,
        batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, warmup=min(200, cfg.unet_steps // 10),
        seed=cfg.seed, gamma=1.0, lr_scheduler="cosine", progress=progress)
    result = train(train_cfg, overwrite=True)  # the experiment owns its run directories: a re-run redoes them
    B.install_unet(result.weights, pipe_dir)
    t_total = time.time() - t0
    card = {"config": dataclasses.asdict(cfg), "vae": vae, "train_loss": result.last_metrics.get("loss"),
            "seconds": {"vae": round(t_vae, 1), "total": round(t_total, 1)}}
    card["fidelity"] = measure_base(pipe_dir, cfg.n_eval_prompts, image_size=cfg.image_size)
    B.write_card(pipe_dir, card)
    return card


def measure_base(pipe_dir: str | Path, n_prompts: int = 64, n_per_prompt: int = 4, image_size: int = 16) -> Dict:
    """Prompt fidelity of a pipeline on held-out captions, per attribute, and of a shuffled control."""
    from .fidelity import fidelity

    pipe = make_pipeline(pipe_dir)
    caps, seeds = eval_set(eval_captions(n_prompts), n_per_prompt)
    images = sample(pipe, caps, seeds, image_size=image_size)
    f = fidelity(images, caps)
    shuffled = fidelity(images, list(np.roll(caps, n_per_prompt)))  # the same images against other captions
    out = {k: float(np.nanmean(v)) for k, v in f.items()}
    out["control_wrong_captions"] = float(shuffled["score"].mean())
    out["n_images"] = len(caps)
    return out


# --------------------------------------------------------------------------------------
# alignment
# --------------------------------------------------------------------------------------


def _method_objective(method: str):
    """(objective, utility) of a method name."""
    if method.startswith("kto"):
        return "kto", (method[4:] or "kto")
    return method, "kto"


def user_feedback(cfg: AlignConfig, image_size: int = 16):
    """The user's labelled candidate pool for ``cfg`` (captions drawn with seed ``cfg.seed + 1``)."""
    data = make_dataset(cfg.n_captions, renders_per_caption=cfg.renders_per_caption, image_size=image_size,
                        seed=cfg.seed + 1)
    return label_pool(data, get_user(cfg.user))


def write_feedback(base_dir: Path, out_dir: Path, cfg: AlignConfig, image_size: int = 16) -> Dict:
    """The user's feedback: records (all images) and pairs (same caption) on disk."""
    fb = user_feedback(cfg, image_size)
    d = out_dir / "feedback"
    records = B.write_image_records(fb.images, fb.captions, fb.labels, d, scores=fb.scores)
    pairs = B.write_image_pairs(fb.images, fb.captions, fb.pairs, d)
    info = {"records": str(records), "pairs": str(pairs), "counts": fb.counts(), "threshold": fb.threshold,
            "mean_score": {"desirable": float(fb.scores[fb.labels == 1].mean()),
                           "undesirable": float(fb.scores[fb.labels == 0].mean())}}
    (d / "feedback.json").write_text(json.dumps(info, indent=2))
    return info


class CurveRecorder:
    """The user's score, fidelity and distance from the base of a model on fixed prompts and seeds
    (Figure 7's curve). ``distance``: mean RMS pixel difference from the base model's image of the
    same caption and seed. ``steps``: measure only at these steps (None: at every call).
    ``per_image[(method, step)]`` keeps each image's scores (for head-to-head win rates)."""

    def __init__(self, pipe_dir: Path, user, n_prompts: int, image_size: int, steps: Optional[Set[int]] = None):
        self.pipe = make_pipeline(pipe_dir)
        self.caps, self.seeds = eval_set(eval_captions(n_prompts, seed=99), 2)
        self.user, self.image_size, self.steps = user, image_size, steps
        self.base_images = sample(self.pipe, self.caps, self.seeds, image_size=image_size)
        self.rows: List[Dict] = []
        self.per_image: Dict[tuple, Dict[str, np.ndarray]] = {}

    def __call__(self, method: str, step: int, unet) -> Optional[Dict]:
        if self.steps is not None and step not in self.steps:
            return None
        self.pipe.unet = unet
        prompts = [CSFT_SAMPLING_PREFIX + c for c in self.caps] if method == "csft" else self.caps
        images = sample(self.pipe, prompts, self.seeds, image_size=self.image_size)
        scores = per_image_scores(images, self.caps, self.user)
        scores["distance"] = image_distance(images, self.base_images)
        self.per_image[(method, step)] = scores
        row = {"method": method, "step": step, **{k: float(v.mean()) for k, v in scores.items()}}
        self.rows.append(row)
        return row


def align_one(method: str, base_dir: Path, out_dir: Path, feedback: Dict, cfg: AlignConfig, curve: CurveRecorder,
              image_size: int = 16, progress: bool = False) -> str:
    """Fine-tune the base with one objective; record the curve every ``eval_every`` steps. Returns the UNet dir."""
    from kto_lab.sd.trainer import Trainer

    objective, utility = _method_objective(method)
    records = feedback["pairs"] if objective == "dpo" else feedback["records"]
    tcfg = _train_config(
        str(base_dir), out_dir / "runs" / method, Path(records), resolution=image_size, objective=objective,
        utility=utility, steps=cfg.steps, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
        warmup=cfg.warmup_steps, seed=cfg.seed, gamma=cfg.gamma, beta=cfg.beta,
        lr_scheduler=cfg.lr_scheduler, progress=progress)
    trainer = Trainer(tcfg, overwrite=True)  # the experiment owns its run directories: a re-run redoes them
    curve(method, 0, trainer.base_denoiser())
    step = 0
    while step < cfg.steps:
        step = min(cfg.steps, step + cfg.eval_every)
        trainer.fit(stop_at=step)
        curve(method, step, trainer.base_denoiser())
    return str(Path(tcfg["output_dir"]) / "unet")


def align_spin(base_dir: Path, out_dir: Path, feedback: Dict, cfg: AlignConfig, curve: CurveRecorder,
               image_size: int = 16, progress: bool = False) -> str:
    """SPIN-Diffusion on the user's liked images (the "real" data), ``spin_iterations`` rounds."""
    from kto_lab.sd.components import load_denoiser
    from kto_lab.spin import spin

    steps = max(1, cfg.steps // cfg.spin_iterations)  # the same total budget as the other methods
    tcfg = _train_config(
        str(base_dir), out_dir / "runs" / "spin", Path(feedback["records"]), resolution=image_size, objective="dpo",
        steps=steps, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, warmup=cfg.warmup_steps,
        seed=cfg.seed, beta=cfg.beta, lr_scheduler=cfg.lr_scheduler, cache=False, progress=progress)
    gen_pipe = make_pipeline(base_dir)
    base_unet = gen_pipe.unet

    def generate(pretrained, unet_dir, captions, seeds):
        gen_pipe.unet = base_unet if unet_dir is None else load_denoiser(unet_dir, B.FAMILY)
        return sample(gen_pipe, captions, seeds, image_size=image_size)

    curve("spin", 0, base_unet)

    def on_iteration(it):
        curve("spin", it.iteration * steps, load_denoiser(it.denoiser, B.FAMILY))

    its = spin(tcfg, feedback["records"], out_dir / "runs" / "spin", generate, iterations=cfg.spin_iterations,
               pairs_per_iteration=steps * cfg.batch_size // 2, seed=cfg.seed, on_iteration=on_iteration)
    return its[-1].denoiser


def run_comparison(base_dir: str | Path, out_dir: str | Path, cfg: Optional[AlignConfig] = None, *,
                   progress: bool = False) -> Dict:
    """Every method of ``cfg.methods`` from the same base, same feedback, same budget; then the harness.

    Writes ``out_dir/curves.csv`` (score and fidelity through training), ``out_dir/win_rates.csv``
    and ``out_dir/mean_scores.csv`` (final models vs base), ``out_dir/summary.json``.
    """
    import pandas as pd

    from kto_lab.sd.components import load_denoiser

    cfg = (cfg or AlignConfig()).validate()
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    image_size = int(json.loads((base_dir / "shapes_world.json").read_text())["config"]["image_size"]) \
        if (base_dir / "shapes_world.json").is_file() else 16
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    t0 = time.time()
    feedback = write_feedback(base_dir, out_dir, cfg, image_size)
    user = get_user(cfg.user)
    curve = CurveRecorder(base_dir, user, cfg.n_curve_prompts, image_size)
    unets: Dict[str, str] = {}
    seconds: Dict[str, float] = {}
    for method in cfg.methods:
        t = time.time()
        if method == "spin":
            unets[method] = align_spin(base_dir, out_dir, feedback, cfg, curve, image_size, progress)
        else:
            unets[method] = align_one(method, base_dir, out_dir, feedback, cfg, curve, image_size, progress)
        seconds[method] = round(time.time() - t, 1)
        pd.DataFrame(curve.rows).to_csv(out_dir / "curves.csv", index=False)

    models = {"base": make_pipeline(base_dir)}
    for method, unet_dir in unets.items():
        models[method] = make_pipeline(base_dir, load_denoiser(unet_dir, B.FAMILY))
    # CSFT samples with the "good image, " prefix: evaluate it through a prompt-prefixing wrapper
    if "csft" in models:
        models["csft"] = _PrefixedPipeline(models["csft"], CSFT_SAMPLING_PREFIX)
    wins, means = evaluate_models(models, eval_captions(cfg.n_eval_prompts), out_dir / "eval", user=user,
                                  n_per_prompt=cfg.n_per_prompt, progress=progress)
    wins.to_csv(out_dir / "win_rates.csv", index=False)
    means.to_csv(out_dir / "mean_scores.csv", index=False)
    summary = {"user": cfg.user, "feedback": feedback, "seconds": {**seconds, "total": round(time.time() - t0, 1)},
               "win_rates": wins.to_dict("records"), "mean_scores": means.to_dict("records")}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


class _PrefixedPipeline:
    """A pipeline whose prompts get a prefix (CSFT samples with "good image, ", sec. 5)."""

    def __init__(self, pipe, prefix: str):
        self._pipe, self._prefix = pipe, prefix

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, prompt, **kwargs):
        prompt = [self._prefix + p for p in ([prompt] if isinstance(prompt, str) else prompt)]
        return self._pipe(prompt=prompt, **kwargs)
