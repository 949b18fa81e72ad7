"""A whole evaluation from one config: generate -> score -> compare -> tables and figures.

    from kto_lab.config import load_config
    from kto_lab.eval.run import EvalConfig, run_evaluation
    cfg = load_config(EvalConfig, "eval.yaml", ["n_per_prompt=2"])
    result = run_evaluation(cfg)        # result.wins, result.means, result.paths

The same as ``kto-lab eval run --config eval.yaml n_per_prompt=2``. Defaults follow the paper
(appendix A.2: 5 images per prompt; SD's usual 50 steps, guidance 7.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Dict, List, Optional, Sequence

import pandas as pd

from kto_lab.config import ConfigError, check_choice, check_range, to_dict
from kto_lab.eval.prompts import PROMPT_FORMATS
from kto_lab.eval.scorers import MODEL_SCORERS, Scorer, check_scorer_options, get_scorer, known_scorers
from kto_lab.eval.stats import CI_METHODS, MIN_PROMPTS
from kto_lab.paths import check_not_input, safe_name

DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class ModelSpec:
    """A model to evaluate: a base pipeline, optionally with a fine-tuned denoiser or a LoRA."""

    RENAMED: ClassVar[Dict[str, str]] = {"unet": "denoiser"}  # old key -> its name now (read with a note)

    name: str = ""
    pipeline: str = ""  # local diffusers pipeline dir (or hub id when online), e.g. SD v1-5
    # a fine-tuned denoiser directory (diffusers format: a run's OUTPUT_DIR/unet, SD3's OUTPUT_DIR/transformer)
    denoiser: Optional[str] = None
    lora: Optional[str] = None  # pytorch_lora_weights.safetensors or its directory

    def validate(self, where: str) -> None:
        safe_name(self.name, f"{where}.name")  # it names the model's folder under out_dir
        if not self.pipeline:
            raise ConfigError(f"{where}.pipeline is required (a diffusers pipeline directory)")
        if self.denoiser and self.lora:
            raise ConfigError(f"{where}: give denoiser or lora, not both")
        if (Path(self.pipeline) / "model_index.json").is_file():  # an unsupported family fails before any model loads
            from kto_lab.sd.families import resolve_family

            resolve_family(self.pipeline, field=f"{where}.pipeline")


@dataclass
class ScorerSpec:
    """A scorer by registry name with its local weights (see kto_lab.eval.model_scorers)."""

    name: str = "redness"
    path: Optional[str] = None  # model dir / weights file
    processor_path: Optional[str] = None  # PickScore / CLIP: processor dir if not in path
    clip_path: Optional[str] = None  # aesthetic: CLIP ViT-L/14 dir; HPS v2: CLIP ViT-H-14 dir (config + processor)
    med_config: Optional[str] = None  # ImageReward

    def kwargs(self) -> Dict[str, str]:
        return {k: v for k, v in (("path", self.path), ("processor_path", self.processor_path),
                                  ("clip_path", self.clip_path), ("med_config", self.med_config)) if v is not None}

    def validate(self, where: str) -> None:
        check_choice(f"{where}.name", self.name, known_scorers())
        check_scorer_options(self.name, list(self.kwargs()), where)
        if self.name in MODEL_SCORERS and not self.path:
            raise ConfigError(f"{where}: scorer {self.name!r} needs path= (its local weights; nothing is downloaded)")
        if self.name in ("aesthetic", "hpsv2") and not self.clip_path:
            raise ConfigError(f"{where}: scorer {self.name!r} needs clip_path= (its CLIP directory)")


@dataclass
class EvalConfig:
    prompts: str = ""  # PartiPrompts .tsv | HPS v2 dir of <style>.json | Pick-a-Pic .parquet | .txt
    prompt_format: str = "auto"  # auto (from the path) | partiprompts | hps | pickapic | text | jsonl
    limit: Optional[int] = None  # first n prompts (quick runs)
    per_style: Optional[int] = None  # n random prompts per style (the paper's user study, A.2: 25 per HPS style)
    per_style_seed: int = 0  # the seed of that random draw
    models: List[ModelSpec] = field(default_factory=list)  # each {name, pipeline[, denoiser | lora]}
    # pairs to compare as "a:b"; empty: the FIRST model against each of the others
    compare: List[str] = field(default_factory=list)
    scorers: List[ScorerSpec] = field(default_factory=lambda: [ScorerSpec("redness")])  # each {name[, path, ...]}
    out_dir: str = "eval_out"  # images, manifests, scores, tables and figures
    n_per_prompt: int = 5  # appendix A.2: 5 images per prompt and method, median-scoring one wins
    seed: int = 0  # image k of prompt i uses seed + i * n_per_prompt + k, for every model
    batch_size: int = 4  # prompts per pipeline call
    num_inference_steps: int = 50  # SD's usual sampling steps
    guidance_scale: float = 7.5  # SD's usual classifier-free guidance
    height: Optional[int] = None  # None: the pipeline's default size
    width: Optional[int] = None
    device: str = "auto"  # auto | cpu | cuda | cuda:0 ...
    dtype: str = "float32"  # float32 | float16 | bfloat16
    safety_checker: Optional[str] = None  # SD pipeline dir with safety_checker/ + feature_extractor/ (appendix F)
    # bootstrap (over prompts) | wilson | normal | paper (normal approximation over all images, Diffusion-KTO
    # Tables 3-5); the report shows the paper's interval beside the chosen one either way
    ci_method: str = "bootstrap"
    n_bootstrap: int = 2000  # resamples of the bootstrap CI
    on_failure: str = "loss"  # a prompt with no image counts as a loss ("loss") or is left out ("exclude")
    # median scores closer than a scorer's tolerance tie (count half); overrides per metric, e.g. {redness: 0.001}
    # (defaults: kto_lab.eval.scorers.TIE_TOLERANCE, docs/evaluation.md)
    tie_tolerance: Dict[str, float] = field(default_factory=dict)
    min_prompts: int = MIN_PROMPTS  # no win-rate interval from fewer prompts (docs/evaluation.md)
    score_batch_size: int = 16  # images per scorer call

    def validate(self) -> "EvalConfig":
        if not self.prompts:
            raise ConfigError("prompts is required (a prompt file or directory)")
        check_choice("prompt_format", self.prompt_format, PROMPT_FORMATS)
        if not self.models:
            raise ConfigError("models must list at least one model (name, pipeline[, denoiser | lora])")
        names = [m.name for m in self.models]
        for i, m in enumerate(self.models):
            m.validate(f"models[{i}]")
        if len(set(names)) != len(names):
            raise ConfigError(f"models have duplicate names: {names}")
        for pair in self.comparisons():
            for n in pair:
                if n not in names:
                    raise ConfigError(f"compare: model {n!r} is not in models {names}")
        if not self.scorers:
            raise ConfigError("scorers must list at least one scorer")
        for i, s in enumerate(self.scorers):
            s.validate(f"scorers[{i}]")
        for name in ("n_per_prompt", "batch_size", "num_inference_steps", "n_bootstrap", "score_batch_size",
                     "min_prompts"):
            check_range(name, getattr(self, name), low=1)
        for metric, tol in self.tie_tolerance.items():
            check_range(f"tie_tolerance[{metric!r}]", tol, low=0)
        check_range("guidance_scale", self.guidance_scale, low=0)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("ci_method", self.ci_method, CI_METHODS)
        check_choice("on_failure", self.on_failure, ("loss", "exclude"))
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith(("cuda", "mps"))):
            raise ConfigError(f"device={self.device!r}; use auto, cpu, cuda, cuda:N or mps")
        return self

    def comparisons(self) -> List[tuple]:
        if self.compare:
            out = []
            for c in self.compare:
                if c.count(":") != 1:
                    raise ConfigError(f"compare entry {c!r} must look like 'model_a:model_b'")
                out.append(tuple(c.split(":")))
            return out
        return [(self.models[0].name, m.name) for m in self.models[1:]]


@dataclass
class EvalResult:
    scores: pd.DataFrame
    wins: pd.DataFrame
    means: pd.DataFrame
    nsfw: pd.DataFrame
    generation: Dict[str, Dict[str, int]]
    paths: Dict[str, Path]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# Files an evaluation writes directly under its out_dir (a model's files go to out_dir/<model>/).
REPORT_FILES = ("report.md", "win_rates.csv", "mean_scores.csv", "nsfw.csv", "win_rates.png", "score_distributions.png")
RUN_FILES = ("config.yaml", "prompts.jsonl") + REPORT_FILES


def _is_eval_config(path: Path) -> bool:
    import yaml

    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(saved, dict) and set(saved) <= {f.name for f in fields(EvalConfig)}


def check_out_dir(out_dir, field: str, *, inputs: Dict[str, object], writes: Sequence[str] = RUN_FILES,
                  models: Sequence[str] = ()) -> Path:
    """``out_dir`` may hold this evaluation: a folder (or none yet), not a training run's output_dir (an
    evaluation there replaced its config.yaml), not an input or inside one, and none of the inputs is a file
    it writes (``writes``, e.g. ``prompts.jsonl``) or a model's folder ``out_dir/<model>`` (``models``). One
    ConfigError naming ``field`` otherwise."""
    from kto_lab.sd.families import DENOISER_FOLDERS
    from kto_lab.sd.run_dir import used_by

    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{field}={str(out_dir)!r} is a file; give a folder (made if missing) for the images and "
                          "the report")
    if out.is_dir():
        run_files = [name for name in used_by(out)
                     if not (name == "config.yaml" and _is_eval_config(out / name))
                     and not (name in DENOISER_FOLDERS and (out / name / "manifest.jsonl").is_file())]
        if run_files:
            raise ConfigError(f"{field}={str(out_dir)!r} is a training run's folder (it holds {run_files}); an "
                              "evaluation there would replace the run's files: choose another folder")
    check_not_input(out, inputs, field, replaces=[*writes, *models])
    return out


def eval_inputs(cfg: "EvalConfig") -> Dict[str, object]:
    """The paths an evaluation reads, by the config field that names them."""
    inputs: Dict[str, object] = {"prompts": cfg.prompts, "safety_checker": cfg.safety_checker}
    for i, m in enumerate(cfg.models):
        inputs.update({f"models[{i}].pipeline": m.pipeline, f"models[{i}].denoiser": m.denoiser, f"models[{i}].lora": m.lora})
    for i, s in enumerate(cfg.scorers):
        inputs.update({f"scorers[{i}].{k}": v for k, v in s.kwargs().items()})
    return inputs


def build_scorers(specs: List[ScorerSpec], device: str = "cpu", batch_size: int = 16) -> Dict[str, Scorer]:
    out = {}
    for s in specs:
        kwargs = s.kwargs()
        if s.name in MODEL_SCORERS:
            kwargs.update(device=device, batch_size=batch_size)
        out[s.name] = get_scorer(s.name, **kwargs)
    return out


def generate_all(cfg: EvalConfig, prompts, progress: bool = True) -> Dict[str, Dict[str, int]]:
    import torch

    from kto_lab.eval.generate import SafetyChecker, generate_images
    from kto_lab.sd.models import check_model_paths, load_pipeline

    for i, m in enumerate(cfg.models):  # every model's paths before the first one loads
        check_model_paths(m.pipeline, m.denoiser, m.lora, prefix=f"models[{i}].")
    device = resolve_device(cfg.device)
    dtype = None if cfg.dtype == "float32" else getattr(torch, cfg.dtype)
    checker = SafetyChecker.from_pretrained(cfg.safety_checker, device=device) if cfg.safety_checker else None
    counts = {}
    for m in cfg.models:
        pipe = load_pipeline(m.pipeline, torch_dtype=dtype, denoiser_path=m.denoiser, lora_path=m.lora).to(device)
        pipe.set_progress_bar_config(disable=True)
        counts[m.name] = generate_images(
            pipe, prompts, Path(cfg.out_dir) / m.name, model_name=m.name, n_per_prompt=cfg.n_per_prompt,
            base_seed=cfg.seed, batch_size=cfg.batch_size, num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale, height=cfg.height, width=cfg.width, safety_checker=checker,
            progress=progress, weights={"pipeline": m.pipeline, "denoiser": m.denoiser, "lora": m.lora},
        )
        del pipe
    return counts


def compare_all(cfg: EvalConfig, scores: pd.DataFrame, metrics: List[str], make_plots: bool = True):
    from kto_lab.eval.protocol import mean_scores, nsfw_shares, win_rates
    from kto_lab.eval.report import plot_score_distributions, plot_win_rates, write_report

    wins = pd.concat([win_rates(scores, a, b, metrics, method=cfg.ci_method, on_failure=cfg.on_failure,
                                n_bootstrap=cfg.n_bootstrap, seed=cfg.seed, tie_tolerances=cfg.tie_tolerance,
                                min_prompts=cfg.min_prompts) for a, b in cfg.comparisons()]
                     or [pd.DataFrame()], ignore_index=True)
    means = mean_scores(scores, metrics)
    nsfw = nsfw_shares(scores)
    paths = write_report(cfg.out_dir, wins, means, nsfw)
    if make_plots:
        if len(wins):
            paths["win_rates_png"] = Path(cfg.out_dir) / "win_rates.png"
            plot_win_rates(wins, paths["win_rates_png"])
        paths["scores_png"] = Path(cfg.out_dir) / "score_distributions.png"
        plot_score_distributions(scores, metrics, paths["scores_png"])
    return wins, means, nsfw, paths


def run_evaluation(cfg: EvalConfig, *, progress: bool = True, make_plots: bool = True) -> EvalResult:
    """Generate (resumable), score, compare; write tables and figures under ``cfg.out_dir``."""
    import yaml

    from kto_lab.eval.prompts import load_prompts, save_prompts
    from kto_lab.eval.protocol import load_scores, score_model

    cfg.validate()
    out = check_out_dir(cfg.out_dir, "out_dir", inputs=eval_inputs(cfg), models=[m.name for m in cfg.models])
    prompts = load_prompts(cfg.prompts, cfg.prompt_format, limit=cfg.limit, per_style=cfg.per_style,
                           per_style_seed=cfg.per_style_seed)
    scorers = build_scorers(cfg.scorers, resolve_device(cfg.device), cfg.score_batch_size)  # fail before generating
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    save_prompts(prompts, out / "prompts.jsonl")
    generation = generate_all(cfg, prompts, progress)
    for m in cfg.models:
        score_model(out / m.name, scorers, batch_size=cfg.score_batch_size, progress=progress)
    scores = load_scores(out, [m.name for m in cfg.models])
    # older runs in out_dir may hold other prompts, or more images per prompt: keep this run's N
    scores = scores[scores["prompt_id"].isin({p.id for p in prompts}) & (scores["k"] < cfg.n_per_prompt)]
    wins, means, nsfw, paths = compare_all(cfg, scores, list(scorers), make_plots)
    return EvalResult(scores, wins, means, nsfw, generation, paths)
