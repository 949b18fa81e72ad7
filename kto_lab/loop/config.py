"""The config of ``kto-lab rounds`` / :func:`kto_lab.rounds`: one dataclass per part, checked before any model loads.

    base: runs/base_pipeline            # the model round 1 generates from (a diffusers pipeline)
    prompts: prompts.txt                # what each round draws for labeling (any kto_lab.eval.prompts format)
    eval_prompts: heldout.txt           # held-out prompts, evaluated after every round
    rounds: 4
    images_per_prompt: 4
    labeler: {kind: person}             # or scorer / user / callable
    train_config: sd15_kto_lora         # the trainer's config (a YAML path or a packaged name) ...
    train: {optim: {max_steps: 500}}    # ... and overrides on it; optim.max_steps is per round

The rounds own a few trainer fields (:data:`OWNED_TRAIN_FIELDS`: where the round trains, on what, from
which weights, against which reference); setting one under ``train`` is a one-line error naming the
rounds field to use instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..config import ConfigError, check_choice, check_range, load_config_from
from ..eval.prompts import PROMPT_FORMATS
from ..eval.run import DTYPES, ScorerSpec

LABELER_KINDS = ("person", "scorer", "user", "callable")
REFERENCES = ("previous", "base")
# Trainer fields a round sets itself -> what to set instead.
OWNED_TRAIN_FIELDS = {
    "output_dir": "out_dir (each round trains in OUT/round-K/train)",
    "data.train": "prompts and labeler (a round trains on every label so far)",
    "data.cache_dir": "nothing (each round caches its own table under its train directory when train_cache is true)",
    "model.pretrained": "base",
    "model.denoiser": "nothing (round K starts from round K-1's weights)",
    "model.reference": "reference (previous | base)",
    "checkpoint.resume": "nothing (an interrupted round resumes from its latest checkpoint)",
}
# Fields a continued rounds directory may change; every other field defines the rounds (rounds may only grow).
MAY_CHANGE = ("rounds", "labeler.name", "labeler.serve", "labeler.host", "labeler.port", "labeler.timeout",
              "labeler.poll", "generate.batch_size", "generate.device", "eval.batch_size", "progress_bar")


@dataclass
class LabelerConfig:
    """Who says like or dislike: a person, a scorer with a threshold or a quantile, a synthetic user, a function."""

    # person: a person at the labeling page (served by this command) or the notebook widget; the rounds
    # wait for them. scorer: one of kto_lab.eval's scorers (labeler.scorer) with a threshold or a quantile.
    # user: a synthetic user of kto_lab.synthetic.users (its scorer and quantile). callable: labeler.function.
    kind: str = "person"
    name: Optional[str] = None  # the labeler name written with each decision (person: default the login name)
    serve: bool = True  # person: serve the labeling page from this command while a round waits
    host: str = "127.0.0.1"  # person: the page's address (loopback; anything else needs the printed token)
    port: int = 8765  # person: the page's port (0 = any free one)
    timeout: Optional[float] = None  # person: seconds to wait for a round's labels (null: until all are in)
    poll: float = 1.0  # person: seconds between looks at the decision log
    scorer: ScorerSpec = field(default_factory=ScorerSpec)  # scorer: its name and local weights
    user: str = "red"  # user: the synthetic user's name (kto_lab.synthetic.users: red, contrast)
    threshold: Optional[float] = None  # scorer / user: like an image whose score is >= threshold
    # scorer / user: like an image whose score is above this quantile of round 1's scores (the bar is set by
    # what the base model draws and then kept, as a person's taste does not move with the model); a user's
    # own quantile (0.5) when neither this nor threshold is set.
    quantile: Optional[float] = None
    quantile_each_round: bool = False  # the quantile of each round's own scores instead (a like rate held fixed)
    # callable: "package.module:function", called as function(images, captions) -> one of like/dislike/skip
    # (or True/False/None) per image; kto_lab.rounds(..., labeler=fn) takes the function itself.
    function: Optional[str] = None

    def validate(self) -> "LabelerConfig":
        check_choice("labeler.kind", self.kind, LABELER_KINDS)
        if self.name is not None and not str(self.name).strip():
            raise ConfigError("labeler.name is empty; give a name or leave it unset")
        check_range("labeler.port", self.port, low=0, high=65535)
        if self.timeout is not None:
            check_range("labeler.timeout", self.timeout, low=0.0)
        check_range("labeler.poll", self.poll, low=0.0, low_open=True)
        if self.kind in ("scorer", "user"):
            if self.threshold is not None and self.quantile is not None:
                raise ConfigError("labeler.threshold and labeler.quantile are both set; give one")
            if self.threshold is not None:
                check_range("labeler.threshold", self.threshold)
            if self.quantile is not None:
                check_range("labeler.quantile", self.quantile, low=0.0, high=1.0, low_open=True, high_open=True)
        if self.kind == "scorer":
            self.scorer.validate("labeler.scorer")
            if self.threshold is None and self.quantile is None:
                raise ConfigError("labeler.kind=scorer needs labeler.threshold or labeler.quantile")
        if self.kind == "user":
            from ..synthetic.users import USERS

            check_choice("labeler.user", self.user, list(USERS))
        if self.function is not None and (self.function.count(":") != 1 or not all(self.function.split(":"))):
            raise ConfigError(f"labeler.function={self.function!r} must look like 'package.module:function'")
        return self


@dataclass
class GenerateConfig:
    """How every image of the rounds is drawn: the labeling images and the evaluation images alike."""

    num_inference_steps: int = 50  # sampler steps (SD's usual 50)
    guidance_scale: float = 7.5  # classifier-free guidance (SD's usual 7.5; 1 = none)
    height: Optional[int] = None  # null: the pipeline's default size
    width: Optional[int] = None
    # A diffusers scheduler class to sample with, built from the pipeline's scheduler config (e.g.
    # DDIMScheduler); null = the pipeline's own scheduler.
    sampler: Optional[str] = None
    batch_size: int = 8  # prompts per pipeline call
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"  # float32 | float16 | bfloat16

    def validate(self) -> "GenerateConfig":
        for name in ("num_inference_steps", "batch_size"):
            check_range(f"generate.{name}", getattr(self, name), low=1)
        check_range("generate.guidance_scale", self.guidance_scale, low=0.0)
        for name in ("height", "width"):
            if getattr(self, name) is not None:
                check_range(f"generate.{name}", getattr(self, name), low=8)
        check_choice("generate.dtype", self.dtype, DTYPES)
        if not (self.device in ("auto", "cpu") or self.device.startswith(("cuda", "mps"))):
            raise ConfigError(f"generate.device={self.device!r}; use auto, cpu, cuda, cuda:N or mps")
        if self.sampler is not None:
            import diffusers

            if not self.sampler.endswith("Scheduler") or not hasattr(diffusers, self.sampler):
                raise ConfigError(f"generate.sampler={self.sampler!r} is not a diffusers scheduler class "
                                  "(e.g. DDIMScheduler, DPMSolverMultistepScheduler); leave it unset for the pipeline's own")
        return self


@dataclass
class RoundEvalConfig:
    """After every round (and once for the base): the held-out prompts, scored."""

    n_per_prompt: int = 2  # images per held-out prompt
    seed: int = 1_000_000  # image k of prompt i uses seed + i * n_per_prompt + k, in every round (so rounds compare)
    scorers: List[ScorerSpec] = field(default_factory=list)  # scorers beyond the labeler's, by name with weights
    # The scorer reported as 'reward' in the round log; null: the labeler's scorer (scorer / user labelers)
    # or, for a person, the first of eval.scorers (none: the log has no reward column).
    reward: Optional[str] = None
    fidelity: Optional[str] = None  # the scorer reported as 'fidelity' (e.g. clip: does the image show the prompt?)
    batch_size: int = 16  # images per scorer call

    def validate(self) -> "RoundEvalConfig":
        check_range("eval.n_per_prompt", self.n_per_prompt, low=1)
        check_range("eval.batch_size", self.batch_size, low=1)
        check_range("eval.seed", self.seed, low=0)
        for i, s in enumerate(self.scorers):
            s.validate(f"eval.scorers[{i}]")
        return self

    def check_names(self, known: Sequence[str]) -> None:
        """``eval.reward`` and ``eval.fidelity`` name scorers that exist: ``known`` (the labeler's, and those
        given in Python) or one of ``eval.scorers``."""
        names = set(known) | {s.name for s in self.scorers}
        for name in ("reward", "fidelity"):
            value = getattr(self, name)
            if value is not None and value not in names:
                raise ConfigError(f"eval.{name}={value!r} is not one of the scorers {sorted(names)}; "
                                  "add it to eval.scorers")


@dataclass
class RoundsConfig:
    out_dir: str = "runs/rounds"  # one directory per round under it (round-00 is the base's evaluation)
    base: str = ""  # the base pipeline (a local diffusers directory or a hub id): round 1 generates from it
    prompts: str = ""  # the prompts each round draws images for (.txt, .jsonl, PartiPrompts .tsv, HPS dir, ...)
    eval_prompts: str = ""  # held-out prompts evaluated after every round; "" = no evaluation
    prompt_format: str = "auto"  # the format of both prompt files (auto: from the path)
    rounds: int = 4  # rounds of generate -> label -> train -> evaluate (1 = the paper's offline setting)
    images_per_prompt: int = 4  # N images of each prompt per round, for the labeler
    # Prompts per round: round k takes the next P prompts of the list (wrapping around); null = all, every round.
    prompts_per_round: Optional[int] = None
    # The reference of round k's training: previous = the weights round k starts from (round k-1's; the base
    # in round 1), base = the base model in every round. One round against the base is the paper's setting.
    reference: str = "previous"
    seed: int = 0  # generation seeds (round k's image j of prompt i: seed + offset of round k + i * N + j)
    labeler: LabelerConfig = field(default_factory=LabelerConfig)  # who says like or dislike
    generate: GenerateConfig = field(default_factory=GenerateConfig)  # how images are drawn
    # The trainer's config for every round: a YAML file or a packaged config's name (kto-lab train --config).
    train_config: Optional[str] = None
    # Overrides on train_config (nested, as in its YAML): objective, optim (max_steps is per round), lora, ...
    train: Dict[str, Any] = field(default_factory=dict)
    train_cache: bool = True  # cache each round's latents and text embeddings under its train directory
    eval: RoundEvalConfig = field(default_factory=RoundEvalConfig)  # the held-out evaluation after each round
    progress_bar: bool = True  # tqdm bars for generation, scoring and training

    def validate(self) -> "RoundsConfig":
        if not self.out_dir:
            raise ConfigError("out_dir must be set")
        if not self.base:
            raise ConfigError("base must name the base pipeline (a diffusers directory or hub id)")
        if not self.prompts:
            raise ConfigError("prompts must name a prompt file (one prompt a line, or any kto_lab.eval.prompts format)")
        check_choice("prompt_format", self.prompt_format, PROMPT_FORMATS)
        for name in ("prompts", "eval_prompts"):
            path = getattr(self, name)
            if path and not Path(path).exists():
                raise FileNotFoundError(f"{name}: no such prompt file or directory {path!r}")
        check_range("rounds", self.rounds, low=1)
        check_range("images_per_prompt", self.images_per_prompt, low=1)
        if self.prompts_per_round is not None:
            check_range("prompts_per_round", self.prompts_per_round, low=1)
        check_choice("reference", self.reference, REFERENCES)
        check_range("seed", self.seed, low=0)
        self.labeler.validate()
        self.generate.validate()
        self.eval.validate()
        self.train_config_for(Path(self.out_dir) / "round-01" / "train", [Path(self.out_dir) / "check.jsonl"])
        return self

    def labeler_scorers(self) -> List[str]:
        """The scorer the labeler judges with (scorer and user labelers), by name."""
        if self.labeler.kind == "scorer":
            return [self.labeler.scorer.name]
        if self.labeler.kind == "user":
            from ..synthetic.users import get_user

            return [get_user(self.labeler.user).scorer]
        return []

    def reward_scorer(self) -> Optional[str]:
        if self.eval.reward is not None:
            return self.eval.reward
        own = self.labeler_scorers()
        return own[0] if own else (self.eval.scorers[0].name if self.eval.scorers else None)

    def train_config_for(self, output_dir: Path, tables: List[Path], start: Optional[Path] = None,
                         reference: Optional[str] = None):
        """The validated :class:`~kto_lab.sd.config.TrainConfig` of one round: ``train_config`` + ``train``, then
        the fields the round owns (where it trains, on which tables, from which weights, against which reference)."""
        from ..config import _merge
        from ..sd.config import RENAMED_FIELDS, load_train_config
        from ..sd.run_dir import flatten

        if not isinstance(self.train, dict):
            raise ConfigError(f"train must be a mapping of trainer overrides, got {self.train!r}")
        for k in flatten(self.train):  # under the field's name today (``model.unet`` is ``model.denoiser``'s old name)
            key = next((f for f in OWNED_TRAIN_FIELDS if RENAMED_FIELDS.get(k, k) == f
                        or RENAMED_FIELDS.get(k, k).startswith(f + ".")), None)
            if key is not None:
                raise ConfigError(f"train.{k} is set by the rounds themselves; set {OWNED_TRAIN_FIELDS[key]}")
        own = {"output_dir": str(output_dir), "data": {"train": [str(t) for t in tables]},
               "model": {"pretrained": self.base, "denoiser": None if start is None else str(start), "reference": reference},
               "checkpoint": {"resume": "latest"}}
        if self.train_cache:
            own["data"]["cache_dir"] = str(Path(output_dir) / "cache")
        if not self.progress_bar:
            own["logging"] = {"progress_bar": False}
        try:
            cfg = load_train_config(self.train_config, _merge(self.train, own))
        except ConfigError as e:
            raise ConfigError(f"train: {e}") from None
        objective = cfg.objective.objective
        if objective == "csft":
            raise ConfigError("train.objective.objective=csft samples with a prompt prefix ('good image, '), which "
                              "the rounds' generator does not add; choose kto, dpo, sft or bce")
        if cfg.lora.enabled and self.reference == "base" and cfg.lora.reference == "disabled_adapters" and start is not None:
            raise ConfigError("reference=base with LoRA needs train.lora.reference=frozen_copy (disabled adapters "
                              "give the weights the round starts from, not the base)")
        return cfg

    def stored(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def load_rounds_config(config: Any = None, overrides: Sequence[str] | Dict[str, Any] = ()) -> RoundsConfig:
    """``RoundsConfig`` | YAML path | dict (+ ``key=value`` overrides) -> a validated ``RoundsConfig``."""
    return load_config_from(RoundsConfig, config, overrides)
