"""The Stable Diffusion trainer's config: one dataclass per section, paper defaults, early checks.

Defaults come from the Diffusion-KTO paper, appendix A.1 (full fine-tune of SD v1-5: Adam,
lr 1e-7, 1,000 warm-up steps, 10,000 steps, beta 5000, gamma 0.8, batch 2 per GPU on 4 GPUs)
and, for LoRA runs, from the LoRA study (lora-preference-alignment-study, sec. 3.3/4: rank 8,
AdamW with weight decay 0.01, lr 1e-4, 500 warm-up steps). Fields whose paper value depends
on full vs LoRA fine-tuning, or on the model family (SD 1.x/2.x, SDXL or SD3), default to ``None`` and
are resolved by :meth:`TrainConfig.resolved` from the family's defaults, which also refuses an option of the
other kind of noise schedule (DDPM vs rectified flow) and warns about a beta far outside the family's useful
range. A renamed key (``model.unet``, now ``model.denoiser``) is read under its new name with a one-line note.

Load with ``load_config(TrainConfig, "config.yaml", ["objective.beta=2000"])`` or
:func:`load_train_config`; every check runs before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence

from ..config import (ConfigError, check_choice, check_positive, check_range, load_config_from, renamed_fields,
                      warn_once, warn_outside)
from ..data.sampler import check_gamma
from ..objectives import FLOW_ONLY
from ..schedule import DEFAULT_FLOW_ERROR, PREDICTION_TYPES, FlowMatchingSchedule, NoiseSchedule
from ..step import ObjectiveConfig, flow_only_message
from . import metrics_log
from .encoding import LATENT_MODES
from .families import FAMILY_CHOICES
from .speed import COMPILE_ALIASES, COMPILE_CHOICES, COMPILE_MODES

MIXED_PRECISION = ("no", "fp16", "bf16")
REFERENCE_DTYPES = ("auto", "fp32", "fp16", "bf16")
LORA_REFERENCES = ("disabled_adapters", "frozen_copy")
MISSING_IMAGE_POLICIES = ("error", "skip")
OPTIMIZERS = ("adamw", "adam", "adafactor")
VAE_DTYPES = ("fp32", "auto")
CACHE_DTYPES = ("fp32", "fp16")
LR_SCHEDULERS = ("constant_with_warmup", "linear", "cosine")
MAX_SEED = 2**32 - 1  # numpy's (accelerate's set_seed) largest seed
# A run whose learning rate peaks below this share of optim.learning_rate is flagged as close to a no-op
# (issue 21: warm-up 500, max_steps 10 peaked at 1.8e-6 of 1e-4; the LoRA changed 98 of 61,440 pixel values
# of its images by one level).
NO_OP_LR_SHARE = 0.1


@dataclass
class ModelConfig:
    RENAMED: ClassVar[Dict[str, str]] = {"unet": "denoiser"}  # old key -> its name now (read with a note)

    # A diffusers SD 1.x/2.x, SDXL or SD3 pipeline: a local directory or a hub id (read with from_pretrained).
    pretrained: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    # The model family: auto = from model_index.json's _class_name (StableDiffusionPipeline -> sd,
    # StableDiffusionXLPipeline -> sdxl, StableDiffusion3Pipeline -> sd3); name it for a hub id that is
    # not cached offline.
    family: str = "auto"
    # Another VAE (a VAE dir or hub repo, or a pipeline dir with vae/), e.g. an fp16-safe SDXL VAE.
    vae: Optional[str] = None
    # Precision of the VAE encoder (training and cache). fp32 as the official KTO and diffusers SDXL
    # scripts; auto = the mixed-precision dtype (SDXL's own VAE stays fp32 under fp16: it overflows).
    vae_dtype: str = "fp32"
    # Start the policy from this denoiser instead of the pipeline's: a diffusers model dir (SD's UNet, SD3's
    # transformer), or a pipeline dir with one (unet/, transformer/). Formerly model.unet.
    denoiser: Optional[str] = None
    # The reference: None = a frozen copy of the initial policy (the paper). A path (denoiser dir or
    # pipeline dir) = that model, e.g. the previous SPIN iteration. Always a frozen copy then.
    reference: Optional[str] = None
    # Precision of a frozen reference copy kept on the device. auto = the mixed-precision dtype
    # (bf16/fp16), fp32 without mixed precision. The official DPO script swaps it CPU<->GPU; we don't.
    reference_dtype: str = "auto"
    gradient_checkpointing: bool = False  # recompute activations in the backward: less memory, one more forward
    # torch.compile the policy denoiser (and a frozen reference copy) in place after accelerate.prepare:
    # none | regional (each repeated block, compiled once per shape) | full (the whole denoiser);
    # true/false read as full/none. The first step pays the compilation. Off until a GPU measurement
    # says which helps (benchmarks/README.md; kto_lab.sd.speed).
    compile: str = "none"
    # torch.compile's mode: default | reduce-overhead (CUDA graphs) | max-autotune | max-autotune-no-cudagraphs.
    compile_mode: str = "default"
    # Block classes that compile=regional compiles one by one; null = the family's (SD, SDXL: ResnetBlock2D,
    # BasicTransformerBlock, where diffusers' own _repeated_blocks has only the latter; SD3: JointTransformerBlock).
    compile_blocks: Optional[List[str]] = None
    # Keep the denoisers' weights (and so their convolutions' activations) in the channels-last memory
    # format, as MLPerf's SD recipe does; off until measured on a GPU.
    channels_last: bool = False

    def validate(self) -> "ModelConfig":
        if not self.pretrained:
            raise ConfigError("model.pretrained must name a pipeline directory or hub id")
        check_choice("model.reference_dtype", self.reference_dtype, REFERENCE_DTYPES)
        check_choice("model.family", self.family, FAMILY_CHOICES)
        check_choice("model.vae_dtype", self.vae_dtype, VAE_DTYPES)
        self.compile = COMPILE_ALIASES.get(str(self.compile).lower(), self.compile)
        check_choice("model.compile", self.compile, COMPILE_CHOICES)
        check_choice("model.compile_mode", self.compile_mode, COMPILE_MODES)
        if isinstance(self.compile_blocks, str):
            self.compile_blocks = [self.compile_blocks]
        if self.compile == "regional" and self.compile_blocks == []:
            raise ConfigError("model.compile_blocks is empty; model.compile=regional needs block class names")
        return self


@dataclass
class DataConfig:
    # Binary-feedback record table(s) (CSV/JSONL/Parquet: image, caption, label); for objective=dpo
    # a pair table (kto_lab.data.records.load_pairs). Not needed when cache_dir holds a cache.
    train: List[str] = field(default_factory=list)
    resolution: Optional[int] = None  # None: the family's (SD 1.5: 512; SDXL: 1024, its paper sec. 2.3)
    center_crop: bool = True  # False: random crop
    random_flip: bool = False  # mirror images horizontally at random (not with cache_dir)
    on_missing_image: str = "error"  # error: stop naming the file | skip: skip it, count it
    gamma: float = 0.8  # share of desirable samples (sec. 4.2, A.1: 0.8)
    # Share of captions replaced by the empty caption (classifier-free guidance's unconditional
    # model); the official KTO and Diffusion-DPO scripts use 0.2 (--proportion_empty_prompts).
    caption_dropout: float = 0.0
    # Optional cache of VAE latent moments and text embeddings (kto_lab.sd.cache): built once,
    # then a training step runs only the denoisers. Built here if the directory does not exist.
    cache_dir: Optional[str] = None
    cache_shard_size: int = 1024  # records per cache shard file
    # Storage dtype of the cached VAE moments and text embeddings: fp32 keeps what the VAE gave;
    # fp16 halves the disk (docs/training.md measures the difference).
    cache_dtype: str = "fp32"
    latent_mode: str = "sample"  # sample the VAE posterior (diffusers / official scripts) or take its mode
    seed: int = 0  # sampling, crops and flips (each process adds 1000 x its rank)

    def validate(self) -> "DataConfig":
        if self.resolution is not None:
            check_range("data.resolution", self.resolution, low=8)
            if self.resolution % 8:
                raise ConfigError(f"data.resolution={self.resolution} must be a multiple of 8 (the VAE's down-sampling factor)")
        check_range("data.caption_dropout", self.caption_dropout, low=0.0, high=1.0)
        check_choice("data.cache_dtype", self.cache_dtype, CACHE_DTYPES)
        check_choice("data.on_missing_image", self.on_missing_image, MISSING_IMAGE_POLICIES)
        try:
            check_gamma(self.gamma)
        except ConfigError as e:
            raise ConfigError(f"data.{e}") from None
        check_range("data.cache_shard_size", self.cache_shard_size, low=1)
        check_range("data.seed", self.seed, low=0, high=MAX_SEED)
        check_choice("data.latent_mode", self.latent_mode, LATENT_MODES)
        if isinstance(self.train, str):
            self.train = [self.train]
        if self.cache_dir and self.random_flip:
            raise ConfigError("data.random_flip=true cannot be used with data.cache_dir (latents are cached unflipped)")
        return self


@dataclass
class OptimConfig:
    max_steps: int = 10_000  # optimizer steps (A.1: 10,000; LoRA study: 10,000)
    batch_size: int = 2  # per device (A.1: 2 per GPU x 4 GPUs)
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    learning_rate: Optional[float] = None  # None: 1e-7 full (A.1), 1e-4 LoRA (LoRA study 3.3)
    warmup_steps: Optional[int] = None  # None: 1000 full (A.1), 500 LoRA (LoRA study 3.3)
    lr_scheduler: str = "constant_with_warmup"  # constant_with_warmup (A.1) | linear | cosine (to 0 at max_steps)
    # AdamW with weight_decay 0 is Adam (A.1); adafactor: Diffusion-DPO's SDXL optimizer (its sec. 5.1,
    # "to save memory"), with the official script's settings (no relative step, clip threshold 1)
    optimizer: str = "adamw"
    weight_decay: Optional[float] = None  # None: 0.0 full (Adam, A.1), 0.01 LoRA (LoRA study 3.3)
    adam_beta1: float = 0.9  # Adam's first-moment decay (torch's default; A.1 names no other)
    adam_beta2: float = 0.999  # Adam's second-moment decay (torch's default)
    adam_epsilon: float = 1e-8  # Adam's epsilon (torch's default)
    max_grad_norm: float = 1.0  # clipping as in diffusers' and Diffusion-DPO's scripts; 0 = off
    mixed_precision: str = "no"  # no | fp16 | bf16 (bf16 on A100/H100)
    allow_tf32: bool = True  # TF32 matmuls on Ampere+ GPUs (faster fp32)

    def validate(self) -> "OptimConfig":
        check_range("optim.max_steps", self.max_steps, low=1)
        check_range("optim.batch_size", self.batch_size, low=1)
        check_range("optim.gradient_accumulation_steps", self.gradient_accumulation_steps, low=1)
        if self.learning_rate is not None:
            check_positive("optim.learning_rate", self.learning_rate)
        if self.warmup_steps is not None:
            check_range("optim.warmup_steps", self.warmup_steps, low=0)
        if self.weight_decay is not None:
            check_range("optim.weight_decay", self.weight_decay, low=0.0)
        check_choice("optim.lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        check_choice("optim.optimizer", self.optimizer, OPTIMIZERS)
        check_range("optim.adam_beta1", self.adam_beta1, low=0.0, high=1.0, high_open=True)
        check_range("optim.adam_beta2", self.adam_beta2, low=0.0, high=1.0, high_open=True)
        check_positive("optim.adam_epsilon", self.adam_epsilon)
        check_range("optim.max_grad_norm", self.max_grad_norm, low=0.0)
        check_choice("optim.mixed_precision", self.mixed_precision, MIXED_PRECISION)
        return self


@dataclass
class LoraConfig:
    enabled: bool = False  # true: train LoRA adapters only (the LoRA study); false: the full denoiser (A.1)
    rank: int = 8  # LoRA study 3.1: rank 8 in the UNet's attention
    alpha: Optional[float] = None  # None: = rank (scale 1, diffusers' examples)
    # The modules that get adapters; null = the family's (SD, SDXL, SD3: to_k, to_q, to_v, to_out.0, the
    # attention projections; SD3's shipped config adds the text stream's, as diffusers' SD3 LoRA script)
    target_modules: Optional[List[str]] = None
    # The reference of a LoRA run: the same denoiser with adapters disabled (exact, no extra memory,
    # a few % slower) or a frozen low-precision copy of the base denoiser (more memory, faster).
    reference: str = "disabled_adapters"

    def validate(self) -> "LoraConfig":
        check_range("lora.rank", self.rank, low=1)
        if self.alpha is not None:
            check_positive("lora.alpha", self.alpha)
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError("lora.target_modules is empty")
        check_choice("lora.reference", self.reference, LORA_REFERENCES)
        return self


@dataclass
class ScheduleConfig:
    # DDPM families (SD 1.x/2.x, SDXL) only: train with this prediction type instead of the scheduler
    # config's (epsilon | v_prediction | sample), as diffusers' --prediction_type; null = the pipeline's.
    prediction_type: Optional[str] = None
    # Flow-matching families (SD3) only: the training timestep density (SD3 sec. 3.1): logit_normal
    # (SD3's default and best) | uniform | mode; null = logit_normal. SD3's shift comes from its scheduler.
    density: Optional[str] = None
    logit_mean: Optional[float] = None  # flow only: the logit-normal mean m (SD3 sec. 3.1: 0); null = 0
    logit_std: Optional[float] = None  # flow only: the logit-normal std s (SD3 sec. 3.1: 1); null = 1
    mode_scale: Optional[float] = None  # flow only: the "mode" density's scale (SD3 sec. 3.1; diffusers 1.29); null = 1.29

    KINDS: ClassVar[tuple] = (NoiseSchedule, FlowMatchingSchedule)  # each names the fields above it takes (OPTIONS)

    def validate(self) -> "ScheduleConfig":
        if self.prediction_type is not None:
            check_choice("schedule.prediction_type", self.prediction_type, PREDICTION_TYPES)
        self._options(FlowMatchingSchedule(), FlowMatchingSchedule.OPTIONS)  # checked where the schedule checks them
        return self

    def _options(self, schedule, names):
        """``schedule`` with the options ``names`` set here; a bad value is one line naming ``schedule.<field>``."""
        try:
            return schedule.with_options(**{k: getattr(self, k) for k in names if getattr(self, k) is not None})
        except ConfigError as e:
            raise ConfigError(f"schedule.{e}") from None

    def check_family(self, family) -> None:
        """An option of another kind of schedule than the family's is a mistake, not something to ignore: one line."""
        kind = family.schedule_type
        for other in self.KINDS:
            wrong = [k for k in other.OPTIONS if k not in kind.OPTIONS and getattr(self, k) is not None]
            if wrong:
                raise ConfigError(f"schedule.{wrong[0]}={getattr(self, wrong[0])!r} is a {other.KIND} option, but "
                                  f"{family.pipeline_class_name} ({family.name}) is a {kind.KIND} model{kind.EXPLAIN}; "
                                  f"leave schedule.{', schedule.'.join(wrong)} unset")

    def apply(self, schedule):
        """``schedule`` (the pipeline's, of its family's kind) with the options of its kind set here."""
        return self._options(schedule, type(schedule).OPTIONS)


@dataclass
class LoggingConfig:
    MOVED: ClassVar[Dict[str, str]] = {"tensorboard": "logging.report_to=[tensorboard]"}

    log_every: int = 10  # optimizer steps between metric rows (the only host syncs for metrics)
    # Experiment trackers through accelerate, beside metrics.jsonl/.csv: any of tensorboard, wandb,
    # mlflow (each an extra: pip install "kto-lab[wandb]"); [all] = every one of them installed; [] = none
    # (like diffusers' report_to).
    report_to: List[str] = field(default_factory=list)
    project: str = "kto-lab"  # the trackers' project (W&B project, MLflow experiment, folder under OUTPUT_DIR/logs)
    progress_bar: bool = True  # a tqdm bar on the main process
    validation_prompts: List[str] = field(default_factory=list)  # prompts rendered every validation_every steps
    validation_every: int = 0  # optimizer steps; 0 = off
    validation_inference_steps: int = 25  # sampler steps per validation image (DPM-Solver++; SD3: its flow Euler sampler)
    # The validation images' guidance; null = the family's (SD, SDXL, SD3: classifier-free guidance 7.5)
    validation_guidance_scale: Optional[float] = None
    validation_seed: int = 0  # image i uses seed + i

    def validate(self) -> "LoggingConfig":
        check_range("logging.log_every", self.log_every, low=1)
        names = [name for name in self.report_to if name != "none"]
        if "all" in names:  # as diffusers' --report_to all: every tracker that is installed
            names = [n for n in names if n != "all"] + [n for n in metrics_log.TRACKER_PACKAGES
                                                        if metrics_log.tracker_installed(n)]
        self.report_to = list(dict.fromkeys(names))
        for name in self.report_to:
            check_choice("logging.report_to", name, metrics_log.TRACKER_PACKAGES)
            if not metrics_log.tracker_installed(name):
                raise ConfigError(f"logging.report_to: {name} is not installed; pip install 'kto-lab[{name}]'")
            metrics_log.check_tracker(name)
        check_range("logging.validation_every", self.validation_every, low=0)
        check_range("logging.validation_inference_steps", self.validation_inference_steps, low=1)
        if self.validation_guidance_scale is not None:
            check_range("logging.validation_guidance_scale", self.validation_guidance_scale, low=0.0)
        return self


@dataclass
class CheckpointConfig:
    every: int = 1000  # optimizer steps; 0 = only the final save
    keep: int = 2  # newest checkpoints kept (0 = keep all)
    resume: Optional[str] = None  # "latest" (newest under output_dir/checkpoints) or a checkpoint dir

    def validate(self) -> "CheckpointConfig":
        check_range("checkpoint.every", self.every, low=0)
        check_range("checkpoint.keep", self.keep, low=0)
        return self


@dataclass
class TrainConfig:
    output_dir: str = "runs/sd"  # checkpoints, metrics, config.yaml and the final weights
    seed: int = 0  # model init (LoRA) and the per-step noise and timesteps
    cpu: bool = False  # force CPU even if a GPU is visible (torchrun CPU runs, tests)
    model: ModelConfig = field(default_factory=ModelConfig)  # the base pipeline, the policy's start, the reference
    data: DataConfig = field(default_factory=DataConfig)  # the feedback table(s), images, gamma sampling, cache
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # the loss and its hyper-parameters
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimizer, schedule, batch, precision
    lora: LoraConfig = field(default_factory=LoraConfig)  # LoRA adapters (the LoRA study) instead of a full fine-tune
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # training noise/timestep options (DDPM or flow)
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # metrics, progress bar, validation images
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # cadence, pruning, resume

    def validate(self) -> "TrainConfig":
        if not self.output_dir:
            raise ConfigError("output_dir must be set")
        check_range("seed", self.seed, low=0, high=MAX_SEED)
        for name in ("model", "data", "optim", "lora", "schedule", "logging", "checkpoint"):
            getattr(self, name).validate()
        try:
            self.objective.validate()
        except (ValueError, ConfigError) as e:
            raise ConfigError(f"objective: {e}") from None
        self._expand_home()
        if self.model.reference is not None and self.lora.enabled and self.lora.reference == "disabled_adapters":
            raise ConfigError(
                "model.reference is set but lora.reference=disabled_adapters uses the base denoiser; "
                "set lora.reference=frozen_copy to use the given reference"
            )
        return self

    def _expand_home(self) -> None:
        """``~`` in a path field is the user's home (a shell expands it only at a word's start, so
        ``output_dir=~/runs/x`` would otherwise make a folder named ``~``)."""
        def home(path: Optional[str]) -> Optional[str]:
            return None if path is None else os.path.expanduser(path)

        self.output_dir = home(self.output_dir)
        self.data.train = [home(p) for p in self.data.train]
        self.data.cache_dir = home(self.data.cache_dir)
        self.checkpoint.resume = home(self.checkpoint.resume)
        for name in ("pretrained", "denoiser", "reference", "vae"):
            setattr(self.model, name, home(getattr(self.model, name)))

    def resolved(self, family=None) -> "TrainConfig":
        """A copy with the mode-dependent paper defaults filled in (full: A.1; LoRA: the study), and with
        ``family`` (a :class:`~kto_lab.sd.families.ModelFamily`) the family's defaults where unset (resolution,
        compile blocks, LoRA targets, validation guidance, the schedule's timestep options, a flow family's
        ``objective.flow_error``); a ``schedule.*`` option of another kind of schedule, ``objective.flow_error`` or
        a flow-only objective on a DDPM family are one-line errors, a beta outside the family's useful range (per
        ``flow_error``; DiffusionNFT's own) a one-line warning."""
        cfg = dataclasses.replace(self, optim=dataclasses.replace(self.optim), lora=dataclasses.replace(self.lora),
                                  data=dataclasses.replace(self.data), schedule=dataclasses.replace(self.schedule),
                                  model=dataclasses.replace(self.model), logging=dataclasses.replace(self.logging))
        if family is not None:
            if cfg.data.resolution is None:
                cfg.data.resolution = family.default_resolution
            if cfg.model.compile_blocks is None:
                cfg.model.compile_blocks = list(family.compile_blocks)
            if cfg.lora.target_modules is None:
                cfg.lora.target_modules = list(family.lora_target_modules)
            if cfg.logging.validation_guidance_scale is None:
                cfg.logging.validation_guidance_scale = family.validation_guidance_scale
            cfg.schedule.check_family(family)
            for k, v in family.schedule_type.default_options().items():  # what the run uses, in config.yaml
                if getattr(cfg.schedule, k) is None:
                    setattr(cfg.schedule, k, v)
            _check_objective_family(cfg.objective, family)
            if family.schedule_type.FLOW_MATCHING:  # the error the run uses, in config.yaml and the resume check
                cfg.objective = dataclasses.replace(cfg.objective, flow_error=cfg.objective.flow_error or DEFAULT_FLOW_ERROR)
            beta_range = family.beta_range_for(cfg.objective.flow_error)
            if beta_range and cfg.objective.objective in ("kto", "dpo"):
                warn_outside("objective.beta", cfg.objective.beta, *beta_range)
            if cfg.objective.objective == "nft":
                warn_outside("objective.beta", cfg.objective.beta, *NFT_BETA_RANGE, NFT_BETA_SOURCE)
        lora = cfg.lora.enabled
        if cfg.optim.learning_rate is None:
            cfg.optim.learning_rate = 1e-4 if lora else 1e-7
        if cfg.optim.warmup_steps is None:
            cfg.optim.warmup_steps = 500 if lora else 1000
        if cfg.optim.weight_decay is None:
            cfg.optim.weight_decay = 0.01 if lora else 0.0
        if cfg.lora.alpha is None:
            cfg.lora.alpha = float(cfg.lora.rank)
        message = schedule_warning(cfg.optim)
        if message:
            warn_once(message)
        return cfg


# DiffusionNFT's beta mixes velocities (kto_lab.objectives.nft_implicit_policies); its paper and NVlabs' configs
# use 0.1 and 1 (config/nft.py). Outside this band (10x margin) a one-line warning: SD's 5000 would barely move.
NFT_BETA_RANGE = (0.01, 10.0)
NFT_BETA_SOURCE = "for DiffusionNFT (its paper and NVlabs' configs use 0.1-1; not measured on SD3)"


def _check_objective_family(objective: ObjectiveConfig, family) -> None:
    """A flow-only objective or objective.flow_error on a DDPM family: one line, before any model loads."""
    if objective.objective in FLOW_ONLY and not family.schedule_type.FLOW_MATCHING:
        raise ConfigError(f"objective.{flow_only_message(objective.objective)} ({family.pipeline_class_name}, {family.name})")
    if objective.flow_error is not None and not family.schedule_type.FLOW_MATCHING:
        raise ConfigError(f"objective.flow_error={objective.flow_error!r} is a flow-matching option, but "
                          f"{family.pipeline_class_name} ({family.name}) is a DDPM model (its error is its own "
                          "prediction type's); leave objective.flow_error unset")


def schedule_warning(o: OptimConfig) -> Optional[str]:
    """What to say about a run that ends inside its warm-up (``optim.warmup_steps >= optim.max_steps``; None
    otherwise). The warm-up of every schedule here (diffusers') is linear from 0, optimizer step k using
    ``(k - 1) / warmup_steps`` of ``learning_rate``, so the peak is ``(max_steps - 1) / warmup_steps`` of it;
    below :data:`NO_OP_LR_SHARE` the run is also called close to a no-op. After the warm-up every schedule
    starts at the full rate, so a run longer than its warm-up gets no warning."""
    if o.warmup_steps < o.max_steps:
        return None
    share = (o.max_steps - 1) / o.warmup_steps
    message = (f"optim.warmup_steps={o.warmup_steps} >= optim.max_steps={o.max_steps}: the run ends inside its warm-up, "
               f"its learning rate peaking at {share * o.learning_rate:.2g} ({share:.1%} of optim.learning_rate="
               f"{o.learning_rate:g})")
    if share < NO_OP_LR_SHARE:
        message += "; the weights will barely move (close to a no-op)"
    return message + ": lower optim.warmup_steps or raise optim.max_steps"


def load_train_config(config: Any = None, overrides: Sequence[str] | Dict[str, Any] = ()) -> TrainConfig:
    """``TrainConfig`` | YAML path | dict (+ overrides) -> a validated ``TrainConfig``."""
    return load_config_from(TrainConfig, config, overrides)


# dotted old name -> new name of each renamed field (a resumed run's checkpoint may hold the old names)
RENAMED_FIELDS = renamed_fields(TrainConfig)
