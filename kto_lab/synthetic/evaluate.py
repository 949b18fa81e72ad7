"""Generate from a shapes pipeline and measure it: the user's score and prompt fidelity.

Two paths, one sampler setting:

* :func:`sample` draws images in memory (fixed per-image seeds, the evaluation harness's
  ``image_seed`` convention) for curves through training;
* :func:`evaluate_models` runs the evaluation harness (:mod:`kto_lab.eval.generate` and
  :mod:`kto_lab.eval.protocol`): N images per prompt per model with shared seeds, scored by the
  user's scorer and by :class:`FidelityScorer`, win rates against the base model from the
  median image per prompt, and mean scores with 95% intervals.

Sampling: DDIM, 20 steps (the flow-matching world, SD3's architecture: the pipeline's own flow Euler
sampler, 20 steps), no classifier-free guidance (``guidance_scale = 1``: the base model is trained without
caption dropout, so it has no unconditional branch to guide with).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from ..images import image_distance  # noqa: F401  (re-exported)
from .fidelity import fidelity

INFERENCE_STEPS = 20
GUIDANCE_SCALE = 1.0


class FidelityScorer:
    """The harness's scorer interface over :func:`kto_lab.synthetic.fidelity.fidelity`:
    per image, the fraction of the attributes its caption names that the image shows."""

    name = "fidelity"

    def score(self, images, prompts: Optional[Sequence[str]] = None) -> np.ndarray:
        from kto_lab.eval.scorers import to_float_array

        if prompts is None:
            raise ValueError("fidelity needs the prompts of the images")
        arr = to_float_array(images).transpose(0, 3, 1, 2)
        return fidelity(arr, list(prompts))["score"].astype(np.float64)


def world_sampler(pipeline_dir: str | Path) -> str:
    """The diffusers scheduler class the shapes world samples with, by name: its family's ODE sampler
    (:meth:`~kto_lab.sd.families.base.ModelFamily.ode_sampler_class`: DDIM for the DDPM world, the flow Euler
    sampler for the flow-matching one). Reads ``model_index.json`` only."""
    from kto_lab.sd.families import resolve_family

    return resolve_family(pipeline_dir, field="pipeline").ode_sampler_class().__name__


def make_pipeline(pipeline_dir: str | Path, unet=None, *, device: str = "cpu"):
    """The shapes pipeline (optionally with another denoiser, e.g. one being trained) with the world's sampler
    (:func:`world_sampler`)."""
    from kto_lab.sd.models import load_pipeline

    pipe = load_pipeline(pipeline_dir)
    if unet is not None:
        set_denoiser(pipe, unet)
    pipe.scheduler = _family(pipe).ode_sampler_class().from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _family(pipe):
    """The model family of a pipeline, or of the pipeline a wrapper holds (``wrapped``: CSFT's prompt prefix)."""
    from kto_lab.sd.families import family_of_pipeline

    return family_of_pipeline(getattr(pipe, "wrapped", pipe))


def denoiser(pipe):
    """The pipeline's denoiser: its UNet (SD3's world: its transformer)."""
    return _family(pipe).denoiser_of(pipe)


def set_denoiser(pipe, model) -> None:
    setattr(pipe, _family(pipe).denoiser_subfolder, model)


def image_size_of(pipe) -> int:
    """The pixel size a pipeline draws at: its denoiser's latent size times the VAE's down-sampling."""
    return denoiser(pipe).config.sample_size * pipe.vae_scale_factor


@torch.no_grad()
def sample(pipe, captions: Sequence[str], seeds: Sequence[int], *, batch_size: int = 64,
           steps: int = INFERENCE_STEPS, image_size: Optional[int] = None) -> np.ndarray:
    """``(N, 3, H, W)`` float images in [0, 1]; image i from ``torch.Generator().manual_seed(seeds[i])``, with the
    family's sampling arguments as the evaluation harness passes them (SD3: the T5 length it trains with)."""
    from kto_lab.eval.generate import family_sampling_kwargs

    if len(captions) != len(seeds):
        raise ValueError(f"sample: {len(captions)} captions but {len(seeds)} seeds")
    size = image_size or image_size_of(pipe)
    model = denoiser(pipe)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(captions), batch_size):
        caps = list(captions[start:start + batch_size])
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[start:start + batch_size]]
        res = pipe(prompt=caps, generator=gens, num_inference_steps=steps, guidance_scale=GUIDANCE_SCALE,
                   height=size, width=size, output_type="np", **family_sampling_kwargs(pipe))
        out.append(np.asarray(res.images, dtype=np.float32).transpose(0, 3, 1, 2))
    model.train(was_training)
    return np.clip(np.concatenate(out), 0.0, 1.0)


def eval_set(captions: Sequence[str], n_per_prompt: int, base_seed: int = 0):
    """Captions and seeds of the evaluation set, seeds as the harness draws them."""
    from kto_lab.eval.generate import image_seed

    caps, seeds = [], []
    for i, c in enumerate(captions):
        for k in range(n_per_prompt):
            caps.append(c)
            seeds.append(image_seed(base_seed, i, k, n_per_prompt))
    return caps, seeds


@dataclass
class Measurement:
    score: float  # mean user score (e.g. redness)
    fidelity: float  # mean fraction of named attributes right
    fidelity_all: float  # share of images with every named attribute right

    def to_dict(self):
        return {"score": self.score, "fidelity": self.fidelity, "fidelity_all": self.fidelity_all}


def per_image_scores(images: np.ndarray, captions: Sequence[str], user) -> Dict[str, np.ndarray]:
    """Per image: the user's ``score``, ``fidelity`` (fraction of named attributes right) and
    ``fidelity_all`` (every named attribute right)."""
    f = fidelity(images, list(captions))
    return {"score": np.asarray(user.score(images), dtype=np.float64), "fidelity": f["score"], "fidelity_all": f["all"]}


def measure(images: np.ndarray, captions: Sequence[str], user) -> Measurement:
    return Measurement(**{k: float(v.mean()) for k, v in per_image_scores(images, captions, user).items()})


def evaluate_models(
    models: Dict[str, object], captions: Sequence[str], out_dir: str | Path, *, user, n_per_prompt: int = 4,
    base_model: str = "base", batch_size: int = 64, progress: bool = False,
):
    """Generate, score and compare ``models`` (name -> pipeline) with the evaluation harness.

    Returns ``(win_rates, mean_scores)`` DataFrames: win rate (%) of every model over
    ``base_model`` per metric (the user's score and fidelity), and each model's mean scores.
    """
    import pandas as pd

    from kto_lab.eval.generate import generate_images
    from kto_lab.eval.prompts import Prompt
    from kto_lab.eval.protocol import load_scores, mean_scores, score_model, win_rates
    from kto_lab.eval.scorers import get_scorer

    out_dir = Path(out_dir)
    prompts = [Prompt(id=f"p{i:04d}", text=c) for i, c in enumerate(captions)]
    scorers = {user.scorer: get_scorer(user.scorer), "fidelity": FidelityScorer()}
    for name, pipe in models.items():
        size = image_size_of(pipe)
        generate_images(pipe, prompts, out_dir / name, model_name=name, n_per_prompt=n_per_prompt, base_seed=0,
                        batch_size=batch_size, num_inference_steps=INFERENCE_STEPS, guidance_scale=GUIDANCE_SCALE,
                        height=size, width=size, progress=progress)
        score_model(out_dir / name, scorers, batch_size=256, progress=progress)
    df = load_scores(out_dir, list(models))
    wins = pd.concat([win_rates(df, m, base_model, list(scorers), by_style=False)
                      for m in models if m != base_model], ignore_index=True) if len(models) > 1 else pd.DataFrame()
    means = mean_scores(df, list(scorers), by_style=False)
    return wins, means
