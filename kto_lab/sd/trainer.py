"""Fine-tune Stable Diffusion with Diffusion-KTO, Diffusion-DPO, SFT, CSFT or BCE on 🤗 Accelerate.

    trainer = Trainer("kto_lab/configs/tiny_kto.yaml")      # or a TrainConfig / dict
    trainer.fit()                                            # or: kto_lab.train(config)

One step (:meth:`Trainer.step`) takes a batch dict (``kto_lab.sd.data``), turns it into latents
and the model family's conditioning (:class:`kto_lab.sd.encoding.BatchEncoder`, with the family of
:mod:`kto_lab.sd.families`; the encoders are skipped when the batch comes cached), and calls the shared
:func:`kto_lab.step.objective_step` with the family's denoiser (SD's UNet, SD3's transformer) as the policy
and, for KTO and DPO, the
reference: a frozen low-precision copy kept on the device (full fine-tune, or LoRA with
``lora.reference=frozen_copy``) or the same denoiser with its LoRA adapters disabled. The
reference point comes from unrelated pairs (captions rolled inside the batch; with one sample per
device, another process's or the previous micro-batch's captions) and is averaged across processes
(Diffusion-KTO sec. 4.1). Mixed precision, gradient accumulation and
multi-GPU / multi-node (DDP, DeepSpeed) come from ``accelerate launch``.

Host syncs: one per step, the loss's finiteness, read after the backward pass is queued and
before the update (so the device idles only while the optimizer step is launched). Metrics and
the gradient norm stay on the device, summed there, averaged over the processes and copied to
the host in one transfer on log steps (so a multi-GPU row describes every rank's samples). A
non-finite loss stops the run before the update, so the last checkpoint stays usable.

The run owns ``output_dir`` (``kto_lab.sd.run_dir``: claimed and locked before any model loads,
a resume is compared with the checkpoint's config); checkpoints are verified before a resume
(``kto_lab.sd.checkpoints``); a finished run writes a model card (``kto_lab.sd.model_card``).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import time
import weakref
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
import yaml

from .. import objectives as O
from ..config import ConfigError
from ..reference_point import cross_process_mean, needs_other_captions, next_process_cond
from ..step import map_cond, objective_step
from .checkpoints import CHECKPOINT_PREFIX, commit, link_or_copy, prune, raise_if_disk_full, write_manifest
from .components import (Components, LORA_WEIGHTS, add_lora, cast_trainable_to_fp32, check_model_config, frozen_reference,
                         load_components, load_lora, move, save_denoiser, save_lora)
from .config import TrainConfig, load_train_config
from .encoding import BatchEncoder, latent_scale, unwrap_model
from .families import resolve_family
from .interrupts import ASSUMED_WRITE_SPEED, SAVE_BUDGET_S, TrainingInterrupted, on_sigterm
from .run_dir import check_resume_path, claim_on_main, flatten
from .speed import compile_denoiser

Tensor = torch.Tensor
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TrainingDiverged(FloatingPointError):
    """The loss became NaN/inf; raised before the update, so the last checkpoint is intact."""


@dataclass
class TrainResult:
    output_dir: str
    global_step: int
    weights: Optional[str]  # output_dir/<the family's denoiser folder: unet, transformer> (full) or the LoRA file
    metrics_path: str
    last_metrics: Dict[str, float]
    skipped_images: int


def make_accelerator(cfg: TrainConfig, trackers: Sequence = ()):
    """The run's Accelerator, logging to ``logging.report_to`` and the given ``GeneralTracker``s
    (TensorBoard under ``OUTPUT_DIR/logs``). Outside a distributed launch, accelerate's
    process-wide state is reset first, so runs with another precision can follow in one kernel."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import ProjectConfiguration

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    out = Path(cfg.output_dir)
    return Accelerator(
        mixed_precision=cfg.optim.mixed_precision,
        gradient_accumulation_steps=cfg.optim.gradient_accumulation_steps,
        cpu=cfg.cpu,
        step_scheduler_with_optimizer=False,  # the LR schedule steps once per optimizer step, here
        log_with=[*cfg.logging.report_to, *trackers] or None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )


def make_optimizer(params, o, fused: bool = False):
    """The ``optim.optimizer`` over ``params`` (``o``: a resolved ``OptimConfig``). ``fused``: one CUDA kernel
    for the whole Adam/AdamW update. Adafactor with the official Diffusion-DPO SDXL script's settings."""
    if o.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=o.learning_rate, weight_decay=o.weight_decay, clip_threshold=1.0,
                         scale_parameter=False, relative_step=False)
    opt_cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(params, lr=o.learning_rate, betas=(o.adam_beta1, o.adam_beta2), weight_decay=o.weight_decay,
                   eps=o.adam_epsilon, **({"fused": True} if fused else {}))


class Trainer:
    """Built from a config; :meth:`step` runs one micro-batch, :meth:`fit` the whole run."""

    def __init__(self, config: Any, *, overrides=(), accelerator=None, components: Optional[Components] = None,
                 source=None, overwrite: bool = False, trackers: Sequence = ()):
        """``overwrite``: delete an earlier run's files in ``output_dir`` first (else a used
        directory is refused). ``trackers``: extra ``accelerate.tracking.GeneralTracker`` objects
        beside ``logging.report_to`` (with a given ``accelerator``, configure its ``log_with``)."""
        cfg = load_train_config(config, overrides).resolved()
        self.cfg = cfg
        check_resume_path(cfg)  # a bad path fails before loading
        family = components.family if components is not None else None
        if components is None:  # a missing local model, or one of another family, is named before anything loads
            family = check_model_config(cfg.model)
        elif family is None:  # from model_index.json: no model is loaded yet
            family = resolve_family(cfg.model.pretrained, cfg.model.family)
        self.family = family
        # the family's defaults where unset (resolution, flow timesteps); its options only (schedule.*)
        self.cfg = cfg = cfg.resolved(family)
        table, self.data_fingerprint = None, None
        if source is None:  # the table(s) and the cache, checked before any model loads
            table = self._check_data(cfg, family)
        cache_ready = bool(cfg.data.cache_dir) and (Path(cfg.data.cache_dir) / "cache.json").is_file()

        if accelerator is not None and (trackers or cfg.logging.report_to):
            raise ConfigError("logging.report_to and trackers= need an Accelerator built by kto_lab; "
                              "with your own, pass log_with= to it")
        self.accelerator = acc = accelerator or make_accelerator(cfg, trackers)
        # output_dir is this run's (new, resumed, or refused) before any model loads
        self.run = claim_on_main(cfg, acc, overwrite=overwrite, data=self.data_fingerprint)
        weakref.finalize(self, self.run.release)  # an abandoned Trainer frees its output_dir
        try:
            with on_sigterm(self._stop_now):  # while the models load: stop at once, releasing the lock
                self._build(cfg, acc, components, source, cache_ready, table)
        except BaseException:
            self.close()
            raise

    def _check_data(self, cfg: TrainConfig, family):
        """Open and check ``data.train`` (:func:`~kto_lab.sd.data.open_train_table`; only its rows, when a built
        cache is used), take its fingerprint (the run's and the cache's identity of the data) and check the
        cache directory (``auto`` resolved in ``cfg``). Returns the table to train on, if any."""
        from .cache import AUTO, check_cache_dir
        from .data import open_table, open_train_table

        d = cfg.data
        built = bool(d.cache_dir) and d.cache_dir != AUTO and (Path(d.cache_dir) / "cache.json").is_file()
        table = open_train_table(cfg) if not built else None
        rows = table if table is not None else (open_table(d.train, cfg.objective.objective, d.on_missing_image)
                                                if d.train else None)
        self.data_fingerprint = None if rows is None else rows.fingerprint()
        d.cache_dir = check_cache_dir(cfg, family, self.data_fingerprint)
        return table

    def _build(self, cfg: TrainConfig, acc, components: Optional[Components], source, cache_ready: bool,
               table=None) -> None:
        """Models, optimizer, data source (``table``: the checked table(s)); then the claimed checkpoint, if any."""
        from accelerate.utils import set_seed

        if getattr(acc.state, "deepspeed_plugin", None) is not None:
            acc.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.optim.batch_size
        set_seed(cfg.seed)
        if cfg.optim.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.device = acc.device
        self.weight_dtype = DTYPES.get(str(acc.mixed_precision), torch.float32)  # "no" -> fp32

        # --- models ----------------------------------------------------------------------
        family = self.family
        validating = cfg.logging.validation_every > 0 and bool(cfg.logging.validation_prompts)
        if components is None:
            need_encoders = validating or not cache_ready
            components = load_components(cfg.model, need_text=need_encoders, need_vae=need_encoders, family=family,
                                         resolution=cfg.data.resolution)
        self.components = c = components
        self.schedule = cfg.schedule.apply(c.schedule)  # schedule.* on the pipeline's schedule
        if cfg.schedule.prediction_type and c.scheduler_config is not None:  # validation samples what is trained
            c.scheduler_config = {**c.scheduler_config, "prediction_type": cfg.schedule.prediction_type}
        if c.vae is not None:  # fp32 by default (model.vae_dtype), as the official scripts encode
            vae_dtype = torch.float32 if cfg.model.vae_dtype == "fp32" else family.vae_dtype(c.vae, self.weight_dtype)
            move(c.vae.requires_grad_(False).eval(), self.device, vae_dtype)
        for encoder in family.text_encoders(c):
            if encoder is not None:
                move(encoder.requires_grad_(False).eval(), self.device, self.weight_dtype)
        # x0 = (z - shift) * scale: from the VAE, or from the cache's manifest below
        self.shift_factor, self.scaling_factor = latent_scale(c.vae.config) if c.vae is not None else (0.0, None)

        denoiser = c.denoiser
        needs_reference = O.NEEDS_REFERENCE[cfg.objective.objective]
        ref_dtype = self.weight_dtype if cfg.model.reference_dtype == "auto" else DTYPES[cfg.model.reference_dtype]
        self.reference_denoiser = None
        if cfg.lora.enabled:
            move(denoiser, self.device, self.weight_dtype)  # the frozen base in low precision
            if needs_reference and cfg.lora.reference == "frozen_copy":
                self.reference_denoiser = frozen_reference(c.reference_denoiser or denoiser, ref_dtype, self.device)
            add_lora(denoiser, cfg.lora.rank, cfg.lora.alpha, cfg.lora.target_modules)
            cast_trainable_to_fp32(denoiser)
        else:
            if needs_reference:  # copied before the policy moves: no transient fp32 copy on the device
                self.reference_denoiser = frozen_reference(c.reference_denoiser or denoiser, ref_dtype, self.device)
            move(denoiser, self.device, torch.float32).requires_grad_(True)
        denoiser.train()
        if cfg.model.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        if cfg.model.channels_last:  # in place: the optimizer below gets the same parameters
            for model in (denoiser, self.reference_denoiser):
                if model is not None:
                    model.to(memory_format=torch.channels_last)
        self.trainable = [p for p in denoiser.parameters() if p.requires_grad]

        o = cfg.optim
        optimizer = make_optimizer(self.trainable, o, fused=self.device.type == "cuda")
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(o.lr_scheduler, optimizer, num_warmup_steps=o.warmup_steps,
                                          num_training_steps=o.max_steps)
        self.denoiser, self.optimizer = acc.prepare(denoiser, optimizer)
        if cfg.model.compile != "none":
            self.compile_denoisers()
        acc.register_save_state_pre_hook(self._save_model_hook)
        acc.register_load_state_pre_hook(self._load_model_hook)

        self.policy = family.denoiser(self.denoiser)
        if not needs_reference:
            self.reference = None
        elif self.reference_denoiser is not None:
            self.reference = family.denoiser(self.reference_denoiser)
        else:
            self.reference = family.adapters_disabled_denoiser(self.denoiser)
        self.reduce_mean = cross_process_mean(acc)  # z_ref's mean over processes (kto_lab.reference_point)

        # Every random draw of a step comes from this generator (one stream per process).
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed * 1000 + acc.process_index)
        self.global_step = 0
        self.last_checkpoint: Optional[Path] = None
        self._last_save_seconds: Optional[float] = None  # how long this process's last checkpoint took
        self._sigterm = False  # a SIGTERM came during fit: stop after this step
        self._grad_norm: Optional[Tensor] = None
        self._lr = 0.0
        self._previous_cond = None  # unrelated captions for a one-sample batch on one process (_unrelated_cond)

        # --- data ------------------------------------------------------------------------
        if source is None:
            if cfg.data.cache_dir and not cache_ready:
                if acc.is_main_process:
                    from .cache import build_cache

                    build_cache(cfg, c, progress=cfg.logging.progress_bar)
                acc.wait_for_everyone()
            from .source import make_source

            source = make_source(cfg, family.tokenizers(c), rank=acc.process_index, table=table, family=family)
        self.source = source
        manifest = getattr(source, "manifest", None)
        if self.scaling_factor is None and manifest is not None:
            self.scaling_factor = float(manifest["scaling_factor"])
            self.shift_factor = float(manifest.get("shift_factor", 0.0))  # caches older than SD3 had none
        self.inputs = BatchEncoder(family, device=self.device, resolution=cfg.data.resolution,
                                   latent_mode=cfg.data.latent_mode, vae=c.vae, text_encoders=family.text_encoders(c),
                                   scaling_factor=self.scaling_factor, shift_factor=self.shift_factor)

        if self.run.checkpoint is not None:
            self.load_checkpoint(self.run.checkpoint)

    def compile_denoisers(self, how: Optional[str] = None, backend: str = "inductor") -> None:
        """``torch.compile`` the policy denoiser and a frozen reference copy as ``model.compile`` says
        (``how`` overrides it: none | regional | full), in place (:func:`kto_lab.sd.speed.compile_denoiser`):
        the denoisers, the adapters switch and the checkpoints keep seeing the same modules.
        ``backend``: torch.compile's (``benchmarks/sd_step.py --compile-backend``)."""
        m = self.cfg.model
        for model in (unwrap_model(self.denoiser), self.reference_denoiser):
            if model is not None:
                compile_denoiser(model, how or m.compile, mode=m.compile_mode, blocks=m.compile_blocks, backend=backend)

    # ------------------------------------------------------------------------------------
    # one step
    # ------------------------------------------------------------------------------------

    def _unrelated_cond(self, cond):
        """Captions for the unrelated pairs of a one-sample batch (rolling it would pair the sample with
        its own caption, sec. 4.1): with several processes, the next process's; with one, the previous
        micro-batch's (kept in checkpoints; the run's first micro-batch draws one extra batch for it).
        None for larger batches: ``objective_step`` rolls the batch's own."""
        if not needs_other_captions(self.cfg.objective, cond):
            return None
        if self.accelerator.num_processes > 1:
            return next_process_cond(cond, self.accelerator)
        if self._previous_cond is None:
            first = self.source.next_batch()
            self._previous_cond = self.inputs.cond(first, self.inputs.text(first))
        previous, self._previous_cond = self._previous_cond, map_cond(lambda c: c.detach(), cond)
        return previous

    def step(self, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """One micro-batch: loss (shared ``objective_step``), backward, and on the last micro-batch
        of an accumulation window, clipping, optimizer and LR-schedule steps."""
        acc, cfg = self.accelerator, self.cfg
        with acc.accumulate(self.denoiser):
            inputs = self.inputs(batch, self.generator)
            labels = batch["labels"].to(self.device)
            out = objective_step(cfg.objective, self.schedule, self.policy, inputs.x0, labels, inputs.cond,
                                 reference=self.reference, x0_loser=inputs.x0_loser, cond_loser=inputs.cond_loser,
                                 generator=self.generator, reduce_mean=self.reduce_mean,
                                 cond_unrelated=self._unrelated_cond(inputs.cond))
            acc.backward(out.loss)
            self._check_finite(out.metrics["loss"])  # the step's one host sync, before the update
            if acc.sync_gradients and cfg.optim.max_grad_norm > 0:
                norm = acc.clip_grad_norm_(self.trainable, cfg.optim.max_grad_norm)
                self._grad_norm = None if norm is None else norm.detach()
            self.optimizer.step()
            if acc.sync_gradients:
                self._lr = self.lr_scheduler.get_last_lr()[0]  # the rate this step used
                self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if acc.sync_gradients:
            self.global_step += 1
        return out.metrics  # 0-dim tensors on the device (O.metrics_to_floats)

    def _check_finite(self, loss: Tensor) -> None:
        bad = (~torch.isfinite(loss)).float()
        if self.accelerator.num_processes > 1:  # every rank must stop together
            bad = self.accelerator.reduce(bad, "sum")
        if bad.item() > 0:
            where = self.last_checkpoint or "none written yet"
            raise TrainingDiverged(
                f"non-finite loss ({loss.item()}) at step {self.global_step + 1} (objective {self.cfg.objective.objective}); "
                f"stopped before the update. Last checkpoint: {where} (usable). Start again with a lower "
                f"optim.learning_rate or objective.beta (another output_dir, or --overwrite): a resume keeps both."
            )

    # ------------------------------------------------------------------------------------
    # the run
    # ------------------------------------------------------------------------------------

    def fit(self, stop_at: Optional[int] = None) -> TrainResult:
        """Train to ``optim.max_steps`` (or stop early after optimizer step ``stop_at``, as an
        interruption would). Logs every ``logging.log_every`` steps, checkpoints every
        ``checkpoint.every``, renders validation images every ``logging.validation_every``.
        A finished run saves its weights and model card and calls :meth:`close`, as does an error."""
        from tqdm.auto import tqdm

        from .metrics_log import MetricsLogger

        cfg, acc = self.cfg, self.accelerator
        out = Path(cfg.output_dir)
        logger = None
        if acc.is_main_process:
            if not self.run.lock.held:  # fit after close(): the directory must still be free
                self.run.lock.acquire()
            out.mkdir(parents=True, exist_ok=True)
            try:  # first: a tracker that fails to start leaves no config.yaml (nor the lock) to block a rerun
                self._start_trackers()
            except BaseException:
                self.close()
                raise
            (out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
            logger = MetricsLogger(out, resume_step=self.global_step, trackers=acc.trackers)
        bar = tqdm(total=cfg.optim.max_steps, initial=self.global_step, desc=f"train {cfg.objective.objective}",
                   disable=not (acc.is_main_process and cfg.logging.progress_bar), dynamic_ncols=True)
        end = cfg.optim.max_steps if stop_at is None else min(stop_at, cfg.optim.max_steps)
        if acc.is_main_process and 0 < cfg.optim.max_steps <= self.global_step:
            print(f"kto_lab: the run in {out} finished at step {self.global_step} (optim.max_steps): nothing to "
                  f"train; raise optim.max_steps to train more steps", file=sys.stderr)
        self._sigterm = False
        try:
            with on_sigterm(self._stop_after_step if acc.num_processes == 1 else self._stop_now):
                weights, last = self._loop(end, bar, logger)
        except KeyboardInterrupt as exc:  # Ctrl-C: one line naming what to resume
            self.close()
            if isinstance(exc, TrainingInterrupted):
                raise
            raise TrainingInterrupted(f"stopped by Ctrl-C at step {self.global_step}; {self._resume_hint()}") from None
        except BaseException:
            self.close()
            raise
        finally:
            bar.close()
            if logger is not None:
                logger.close()
        if weights is not None:
            self.close()
        return TrainResult(str(out), self.global_step, weights, str(out / "metrics.jsonl"), last,
                           int(getattr(self.source, "skipped", 0)))

    def _loop(self, end: int, bar, logger):
        """The steps of :meth:`fit` up to ``end``, then the final weights and card at ``optim.max_steps``.
        Returns the weights' path (None before the end) and the last logged metrics."""
        cfg, acc = self.cfg, self.accelerator
        out = Path(cfg.output_dir)
        sums: Dict[str, Tensor] = {}  # on the device; NaN entries (a class absent from a batch) skipped
        counts: Dict[str, Tensor] = {}
        last: Dict[str, float] = {}
        while self.global_step < end:
            metrics = self.step(self.source.next_batch())
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + torch.nan_to_num(v, nan=0.0)
                counts[k] = counts.get(k, 0.0) + (~torch.isnan(v)).float()
            if not acc.sync_gradients:
                continue
            step = self.global_step
            bar.update(1)
            if step % cfg.logging.log_every == 0 or step == cfg.optim.max_steps:
                means = self._log_means(sums, counts)
                if self._grad_norm is not None:
                    means["grad_norm"] = self._grad_norm
                last = {k: v for k, v in O.metrics_to_floats(means).items() if not math.isnan(v)}
                last["lr"] = self._lr
                last["skipped_images"] = float(getattr(self.source, "skipped", 0))
                sums, counts = {}, {}
                if logger is not None:
                    logger.log(step, last)
                bar.set_postfix(loss=f"{last['loss']:.4g}")
            if cfg.checkpoint.every and (step % cfg.checkpoint.every == 0 or step == cfg.optim.max_steps):
                self.save_checkpoint()  # the last step too: a finished run can be extended (resume, more max_steps)
            if cfg.logging.validation_every and step % cfg.logging.validation_every == 0:
                self.validate(logger)
            if self._sigterm:
                self._stop_for_sigterm()
        weights = None
        if self.global_step >= cfg.optim.max_steps:
            weights = self.save_final()
            if acc.is_main_process:
                from .model_card import data_counts, write_model_card

                write_model_card(out, asdict(cfg), metrics=last, counts=data_counts(self.source), family=self.family)
        return weights, last

    # ------------------------------------------------------------------------------------
    # Ctrl-C and SIGTERM (kto_lab.sd.interrupts)
    # ------------------------------------------------------------------------------------

    def _resume_hint(self) -> str:
        where = getattr(self, "last_checkpoint", None) or self.run.checkpoint  # (the one being resumed, while loading)
        return (f"last checkpoint: {where} (resume with checkpoint.resume=latest)" if where is not None
                else "no checkpoint written yet")

    def _stop_now(self) -> None:
        raise TrainingInterrupted(f"stopped by SIGTERM at step {getattr(self, 'global_step', 0)}; {self._resume_hint()}",
                                  signal.SIGTERM)

    def _stop_after_step(self) -> None:
        self._sigterm = True

    def _stop_for_sigterm(self) -> None:
        """After the step during which SIGTERM came: a checkpoint if steps are unsaved and it fits (see
        :mod:`kto_lab.sd.interrupts`), then stop."""
        cfg = self.cfg
        if cfg.checkpoint.every and not self._checkpointed():
            state_bytes = 3 * 4 * sum(p.numel() for p in self.trainable)  # fp32 weights and two Adam moments
            expected = self._last_save_seconds if self._last_save_seconds is not None else state_bytes / ASSUMED_WRITE_SPEED
            if expected <= SAVE_BUDGET_S:
                self.save_checkpoint()
        raise TrainingInterrupted(f"stopped by SIGTERM after step {self.global_step}; {self._resume_hint()}",
                                  signal.SIGTERM)

    def _checkpointed(self) -> bool:
        """Whether :attr:`last_checkpoint` is of the current step."""
        last = self.last_checkpoint
        return last is not None and last.name == f"{CHECKPOINT_PREFIX}{self.global_step:07d}"

    def _start_trackers(self) -> None:
        """``accelerator.init_trackers`` once per run (main process), with the resolved config."""
        acc, cfg = self.accelerator, self.cfg
        if not acc.log_with or acc.trackers:
            return
        values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flatten(asdict(cfg)).items()}
        name = Path(cfg.output_dir).name
        acc.init_trackers(cfg.logging.project, config=values, init_kwargs={
            "wandb": {"name": name, "id": self.run.run_id, "resume": "allow"}, "mlflow": {"run_name": name}})

    def close(self) -> None:
        """End the trackers and release ``output_dir``'s lock. :meth:`fit` calls it when the run
        ends or fails; call it yourself for a Trainer you stop using mid-run."""
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers.clear()
        self.run.release()

    def _log_means(self, sums: Dict[str, Tensor], counts: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Per-metric means since the last log row, over the steps and over every process: sums and
        counts are reduced separately (one collective, log steps only), so a class absent from one
        rank's batches does not turn the mean into NaN. Every process must call this."""
        keys = list(sums)
        totals = torch.stack([torch.stack([sums[k] for k in keys]), torch.stack([counts[k] for k in keys])])
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(totals, "sum")
        return {k: totals[0, i] / totals[1, i] for i, k in enumerate(keys)}

    # ------------------------------------------------------------------------------------
    # checkpoints and weights
    # ------------------------------------------------------------------------------------

    def base_denoiser(self):
        """The policy denoiser itself, under accelerate's and torch.compile's wrappers (with its LoRA
        adapters, if any): what checkpoints save and what a caller evaluates mid-run."""
        return unwrap_model(self.accelerator.unwrap_model(self.denoiser))

    def _save_model_hook(self, models, weights, output_dir):
        if self.accelerator.is_main_process:
            for model in models:
                if self.cfg.lora.enabled:
                    save_lora(unwrap_model(model), output_dir, self.family)
                else:
                    save_denoiser(unwrap_model(model), Path(output_dir) / self.family.denoiser_subfolder)
                if weights:
                    weights.pop()

    def _load_model_hook(self, models, input_dir):
        from .components import load_denoiser

        while models:
            model = unwrap_model(models.pop())
            if self.cfg.lora.enabled:
                load_lora(model, input_dir, self.family)
            else:
                loaded = load_denoiser(Path(input_dir) / self.family.denoiser_subfolder, self.family)
                model.load_state_dict(loaded.state_dict())
                del loaded

    def state_dict(self) -> Dict[str, Any]:
        """This process's part of a checkpoint (beside accelerate's model/optimizer/RNG state)."""
        return {
            "global_step": self.global_step,
            "generator": self.generator.get_state(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "source": self.source.state_dict(),
            "previous_cond": map_cond(lambda c: c.cpu(), self._previous_cond),
        }

    def save_checkpoint(self) -> Path:
        """``output_dir/checkpoints/checkpoint-NNNNNNN``, written atomically: into a temp dir, its
        manifest last (run id, step, config, file sizes and checksums), then renamed; this run's
        checkpoints beyond ``checkpoint.keep`` are pruned. If the disk fills up, the temp dir is
        removed and :class:`CheckpointError` says so; the previous checkpoint stays usable."""
        acc = self.accelerator
        root = Path(self.cfg.output_dir) / "checkpoints"
        final = root / f"{CHECKPOINT_PREFIX}{self.global_step:07d}"
        tmp = root / f".tmp-{final.name}"
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        started = time.perf_counter()
        try:
            acc.save_state(str(tmp))
            torch.save(self.state_dict(), tmp / f"trainer_state_{acc.process_index}.pt")
            acc.wait_for_everyone()
            if acc.is_main_process:
                write_manifest(tmp, run_id=self.run.run_id, step=self.global_step, num_processes=acc.num_processes,
                               config=asdict(self.cfg), data=self.data_fingerprint)
                commit(tmp, final)
                prune(root, self.run.run_id, self.cfg.checkpoint.keep)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise_if_disk_full(exc, tmp, f"the last complete checkpoint is {self.last_checkpoint or 'none'}")
            raise
        acc.wait_for_everyone()
        self.last_checkpoint, self._last_save_seconds = final, time.perf_counter() - started
        return final

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue the run saved in ``path``: weights, optimizer, RNG, LR schedule, data position."""
        acc = self.accelerator
        path = Path(path)
        state_file = path / f"trainer_state_{acc.process_index}.pt"
        if not state_file.is_file():
            raise FileNotFoundError(f"{state_file} is missing: was {path} written by a run with as many processes?")
        acc.load_state(str(path))
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        self.global_step = int(state["global_step"])
        self.generator.set_state(state["generator"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.source.load_state_dict(state["source"])
        self._previous_cond = map_cond(lambda c: c.to(self.device), state.get("previous_cond"))
        self.last_checkpoint = path

    def save_final(self) -> Optional[str]:
        """``output_dir/<the family's denoiser folder>`` (``unet``, ``transformer``; diffusers format) or
        ``output_dir/pytorch_lora_weights.safetensors``. When a checkpoint of this step holds them (a run
        checkpoints its last step), they are hard links of its files: no second copy on disk (a copy where
        the file system has no hard links). Written under a temp name and renamed, so a full disk leaves
        nothing that looks finished and stops in one line, as a checkpoint does."""
        acc = self.accelerator
        acc.wait_for_everyone()
        out = Path(self.cfg.output_dir)
        lora, denoiser = self.cfg.lora.enabled, self.family.denoiser_subfolder
        name = LORA_WEIGHTS if lora else denoiser
        target, tmp = out / name, out / (".tmp-lora" if lora else f".tmp-{denoiser}")
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            saved = self.last_checkpoint / name if self._checkpointed() else None
            try:
                if saved is not None and saved.exists():
                    link_or_copy(saved, tmp / LORA_WEIGHTS if lora else tmp)
                elif lora:
                    save_lora(self.base_denoiser(), tmp, self.family)
                else:
                    save_denoiser(self.base_denoiser(), tmp)
                if lora:
                    os.replace(tmp / LORA_WEIGHTS, target)
                    shutil.rmtree(tmp)
                else:
                    commit(tmp, target)
            except Exception as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise_if_disk_full(exc, tmp, f"the last complete checkpoint is {self.last_checkpoint or 'none'}")
                raise
        acc.wait_for_everyone()
        return str(target)

    # ------------------------------------------------------------------------------------
    # validation images
    # ------------------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self, logger=None) -> Optional[Path]:
        """Images for ``logging.validation_prompts`` with a fixed seed (main process only)."""
        cfg, c, acc = self.cfg, self.components, self.accelerator
        if not acc.is_main_process or not cfg.logging.validation_prompts:
            return None
        if c.vae is None or any(e is None for e in self.family.text_encoders(c)) or c.scheduler_config is None:
            raise ValueError("validation images need the VAE, text encoder(s) and scheduler config")
        pipe = self.family.pipeline(c, self.base_denoiser(), self.family.sampling_scheduler(c.scheduler_config))
        pipe.set_progress_bar_config(disable=True)
        out = Path(cfg.output_dir) / "validation" / f"step-{self.global_step:07d}"
        out.mkdir(parents=True, exist_ok=True)
        images = []
        was_training = self.denoiser.training
        self.denoiser.eval()
        for i, prompt in enumerate(cfg.logging.validation_prompts):
            g = torch.Generator(device=self.device).manual_seed(cfg.logging.validation_seed + i)
            with acc.autocast():
                image = pipe(prompt, num_inference_steps=cfg.logging.validation_inference_steps,
                             guidance_scale=cfg.logging.validation_guidance_scale, generator=g,
                             height=cfg.data.resolution, width=cfg.data.resolution,
                             **self.family.sampling_kwargs()).images[0]  # e.g. SD3's T5 length, as trained
            image.save(out / f"{i:02d}.png")
            images.append(image)
        self.denoiser.train(was_training)
        if logger is not None:
            logger.log_images(self.global_step, "validation", images)
        return out


def train(config: Any, overrides=(), *, overwrite: bool = False, trackers: Sequence = (), **kwargs) -> TrainResult:
    """``kto_lab.train(config)``: build a :class:`Trainer` and run it to the end.

    ``config``: a ``TrainConfig``, a YAML path or a dict; ``overrides``: ``["objective.beta=2000"]``
    or a nested dict; keyword overrides use ``__`` for dots (``optim__max_steps=10``).
    ``overwrite=True`` deletes an earlier run's files in ``output_dir`` first; ``trackers``: extra
    ``accelerate`` ``GeneralTracker`` objects.
    """
    from ..config import _merge, _set_dotted, parse_overrides

    extra: Dict[str, Any] = {}
    for k, v in kwargs.items():
        _set_dotted(extra, k.replace("__", "."), v)
    if extra:
        base = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        overrides = _merge(base, extra)
    return Trainer(config, overrides=overrides, overwrite=overwrite, trackers=trackers).fit()
