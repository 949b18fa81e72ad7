"""Benchmark one training step of Stable Diffusion 1.5's or SDXL's UNet, or SD3's transformer: kto_lab's
trainer vs an official-script-like baseline.

    python benchmarks/sd_step.py --config sd15 --device cuda --batch-size 8,16,32 --compile none,regional --out sd15.json
    python benchmarks/sd_step.py --config sdxl --device cuda --batch-size 4 --out sdxl_b4.json
    python benchmarks/sd_step.py --config sd3 --device cuda --batch-size 1,2,3,4 --grad-checkpointing --configs kto_lora_disabled
    python benchmarks/sd_step.py --config tiny --device cpu --batch-size 2 --steps 2 --out tiny.json
    python benchmarks/sd_step.py --config tiny_sdxl --device cpu --batch-size 2 --steps 2 --out tiny_sdxl.json
    python benchmarks/sd_step.py --config tiny_sd3 --device cpu --batch-size 2 --steps 2 --out tiny_sd3.json

What one *step* is: one micro-batch through ``Trainer.step`` (latents and text embeddings ->
:func:`kto_lab.step.objective_step` -> backward -> grad clipping -> optimizer step), i.e. the real
trainer with its real optimisations. Configurations (``--configs``):

    kto_full            Diffusion-KTO, full fine-tune; frozen low-precision reference copy on the device
    kto_lora_disabled   Diffusion-KTO, LoRA rank 8; reference = the same UNet with adapters disabled
    kto_lora_copy       Diffusion-KTO, LoRA rank 8; reference = a frozen low-precision copy of the base
    dpo                 Diffusion-DPO, full fine-tune (batch = pairs: 2x the images of a KTO batch)
    official_like       a mimic of the official Diffusion-KTO script's per-step work (train_kto_sd_v1.5.py
                        in jacklishufan/diffusion-kto): VAE encode of the pixel batch in fp32 and a text
                        encoder forward (SDXL: both) on every step; the reference weights live on the CPU (diffusers'
                        EMAModel) and are swapped into the policy UNet around the reference forward
                        (store: GPU->CPU, copy_to: CPU->GPU, restore: CPU->GPU). Its loss goes through
                        the same ``objective_step``, so only the systems differ.

Switches that apply to the kto_lab configurations (the baseline always runs the official way: no
cache, no checkpointing, no compile): ``--no-cache`` (feed pixels + token ids: the trainer encodes
them each step with its bf16 VAE/text encoder, instead of cached VAE moments + text embeddings),
``--grad-checkpointing``, ``--compile none,regional,full`` (the trainer's ``model.compile``, each
choice a row), ``--compile-mode``, ``--channels-last``, ``--precision`` (the accelerate mixed
precision: bf16 | fp16 | no). ``--batch-size 8,16,32`` runs every configuration, the baseline
included, at each batch size. ``--profile FILE`` writes a torch.profiler summary per row (top
operators and kernels by device time, time per operator group, device idle share) to JSON.

Measured per configuration: samples/s (KTO: images, DPO: pairs), peak GPU memory
(``torch.cuda.max_memory_allocated`` from after the models are built to the end of the timed steps,
so weights + optimizer state + activations), FLOPs per step counted by
``torch.utils.flop_counter.FlopCounterMode`` over one eager step (all matmul/conv/attention FLOPs:
policy forward+backward, no-grad reference and unrelated-pair forwards, and VAE/text encoding when
not cached; gradient-checkpointing recompute is *not* counted: model FLOPs, not hardware FLOPs),
achieved TFLOP/s = FLOPs / step time, the share of the device's dense peak (MFU), and the speed-up
over ``official_like`` at the same batch size in the same run; for compiled rows, the time of the
first step after compiling (what compilation costs before training starts, with an empty inductor
cache per row unless ``TORCHINDUCTOR_CACHE_DIR`` is set). A configuration that runs out of device
memory gives a row with ``error`` instead of stopping the run. Weights are random: throughput does
not depend on them. The encoders (VAE, text towers) are built for real only where a configuration runs
them (``--no-cache`` or ``official_like``); otherwise on the meta device, for the shapes of the cached
conditioning alone (SD3's T5-XXL encoder would take 19 GB of host memory in fp32).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import gc
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from kto_lab.objectives import REFERENCE_POINTS
from kto_lab.sd.speed import COMPILE_CHOICES, COMPILE_MODES

BENCH_DIR = Path(__file__).resolve().parent
CONFIG_DIR = BENCH_DIR / "configs"
CONFIGS = ("kto_full", "kto_lora_disabled", "kto_lora_copy", "dpo", "official_like")
BASELINE = "official_like"
PRECISIONS = ("bf16", "fp16", "no")


@dataclass(frozen=True)
class ModelSet:
    """Where the architectures of one benchmark size come from (configs only, random weights)."""

    family: str  # a name in kto_lab.sd.families.FAMILIES
    denoiser: str  # a JSON in benchmarks/configs or the name of one in kto_lab/configs
    vae: str
    text_encoder: str
    resolution: int  # pixels; latents are resolution / VAE downsampling
    default_batch_size: int
    schedule: Callable[[], Any]  # the training schedule its pipeline's scheduler config gives
    text_encoder_2: Optional[str] = None  # SDXL's and SD3's second text tower
    text_encoder_3: Optional[str] = None  # SD3's T5 encoder
    lora_targets: Optional[Tuple[str, ...]] = None  # LoRA target modules; None: the family's (to_q/k/v/out.0)
    baseline_checkpointing: bool = False  # the official script checkpoints this model's gradients always (SDXL)


def ddpm_schedule():
    """SD 1.x's and SDXL's DDPM: scaled_linear, 1000 steps, epsilon prediction."""
    from kto_lab.schedule import NoiseSchedule

    return NoiseSchedule.scaled_linear(1000)


def flow_schedule():
    """SD3's rectified flow: shift 3, logit-normal timesteps."""
    from kto_lab.schedule import FlowMatchingSchedule

    return FlowMatchingSchedule(shift=3.0)


# diffusers' SD3 LoRA script's targets, as kto_lab/configs/sd3_kto_lora.yaml: both streams of every joint block
SD3_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


MODEL_SETS = {
    # SD 1.5: the UNet config shipped with kto_lab, VAE and CLIP ViT-L/14 text tower from benchmarks/configs.
    "sd15": ModelSet("sd", "sd15_unet.json", "sd15_vae.json", "sd15_text_encoder.json", 512, 8, ddpm_schedule),
    "tiny": ModelSet("sd", "tiny_unet.json", "tiny_vae.json", "tiny_text_encoder.json", 32, 2, ddpm_schedule),
    # SDXL base: its UNet config shipped with kto_lab; CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text towers.
    "sdxl": ModelSet("sdxl", "sdxl_unet.json", "sdxl_vae.json", "sd15_text_encoder.json", 1024, 4, ddpm_schedule,
                     "sdxl_text_encoder_2.json", baseline_checkpointing=True),
    "tiny_sdxl": ModelSet("sdxl", "tiny_sdxl_unet.json", "tiny_vae.json", "tiny_text_encoder.json", 32, 2,
                          ddpm_schedule, "tiny_text_encoder_2.json", baseline_checkpointing=True),
    # SD3 medium: its transformer config shipped with kto_lab; CLIP ViT-L/14 and ViT-bigG/14 (with projections)
    # and the T5 v1.1 XXL encoder.
    "sd3": ModelSet("sd3", "sd3_transformer.json", "sd3_vae.json", "sd15_text_encoder.json", 1024, 4, flow_schedule,
                    "sdxl_text_encoder_2.json", "sd3_text_encoder_3.json", SD3_LORA_TARGETS),
    "tiny_sd3": ModelSet("sd3", "tiny_sd3_transformer.json", "tiny_sd3_vae.json", "tiny_text_encoder.json", 32, 2,
                         flow_schedule, "tiny_text_encoder_2.json", "tiny_sd3_text_encoder_3.json", SD3_LORA_TARGETS),
}

# Dense (no sparsity) peak tensor-core TFLOP/s per GPU from NVIDIA's datasheets. "tf32" is what fp32
# matmuls run at with allow_tf32 (the trainer's default). First match of the device name wins.
PEAK_TFLOPS: List[tuple] = [
    ("H200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7}),
    ("H100 PCIe", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0}),
    ("H100 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7}),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0}),
]


# ----------------------------------------------------------------------------------------------
# models from configs
# ----------------------------------------------------------------------------------------------


def _config_path(name: str) -> Path:
    from kto_lab.sd.components import CONFIG_DIR as KTO_CONFIG_DIR

    for d in (CONFIG_DIR, KTO_CONFIG_DIR):
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(f"model config {name!r} is in neither {CONFIG_DIR} nor {KTO_CONFIG_DIR}")


def _read_config(name: str) -> Dict[str, Any]:
    return {k: v for k, v in json.loads(_config_path(name).read_text()).items() if k != "_comment"}


def build_denoiser(models: ModelSet, seed: int = 0):
    from kto_lab.sd.components import denoiser_from_config

    return denoiser_from_config(_read_config(models.denoiser), seed=seed)


def build_vae(models: ModelSet, seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL.from_config(_read_config(models.vae))


def family(models: ModelSet):
    from kto_lab.sd.families import FAMILIES

    return FAMILIES[models.family]


def build_text_encoders(models: ModelSet, seed: int = 0) -> Dict[str, Any]:
    """The family's text encoders by component name (``text_encoder`` [, ``text_encoder_2``, ``text_encoder_3``])."""
    import transformers

    torch.manual_seed(seed)
    configs = (models.text_encoder, models.text_encoder_2, models.text_encoder_3)
    out = {}
    for tower, name in zip(family(models).towers, configs):
        cls = getattr(transformers, tower.encoder_class)
        out[tower.encoder] = cls(cls.config_class.from_dict(_read_config(name)))
    return out


# ----------------------------------------------------------------------------------------------
# synthetic batches (what the data source / latent cache would deliver, on the host)
# ----------------------------------------------------------------------------------------------


def make_batch(base: Dict[str, Any], models: ModelSet, *, cached: bool, pairs: bool, batch_size: int,
               resolution: int, gamma: float = 0.8, seed: int = 0, pin: bool = False) -> Dict[str, torch.Tensor]:
    """A batch in the trainer's format for the model family of ``models``. Cached: fp32 VAE moments + the
    family's text conditioning (``kto_lab.sd.cache``); not cached: pixels in [-1, 1] + token ids. SDXL
    adds each image's size and crop (the whole image, uncropped). Labels: desirable with probability
    ``gamma`` (sec. 4.2)."""
    from kto_lab.sd.data import CroppedImage, geometry

    fam = family(models)
    vae = base["vae"].config
    whole = CroppedImage(None, (resolution, resolution), (0, 0))  # each image's geometry: uncropped
    g = torch.Generator().manual_seed(seed)
    b, h = batch_size, resolution // 2 ** (len(vae.block_out_channels) - 1)
    batch: Dict[str, torch.Tensor] = {"labels": (torch.rand(b, generator=g) < gamma).long()}
    ids = {t.ids_key: torch.randint(0, base[t.encoder].config.vocab_size,
                                    (b, t.max_length or base[t.encoder].config.max_position_embeddings), generator=g)
           for t in fam.towers}
    for s in (("", "_l") if pairs else ("",)):
        if cached:
            mean = torch.randn(b, vae.latent_channels, h, h, generator=g)
            logvar = torch.full_like(mean, -6.0)
            batch["latent_moments" + s] = torch.cat([mean, logvar], 1)
        else:
            batch["pixel_values" + s] = torch.rand(b, 3, resolution, resolution, generator=g) * 2 - 1
        batch.update(geometry([whole] * b, fam.image_keys, s))
    if cached:  # the text parts' shapes from one encode of one caption (on the meta device, shapes only)
        with torch.no_grad():
            text = fam.encode_ids([base[t.encoder] for t in fam.towers], {k: v[:1] for k, v in ids.items()})
        batch.update({k: torch.randn((b,) + v.shape[1:], generator=g) for k, v in text.items()})
    else:
        batch.update(ids)
    if pin:
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return batch


# ----------------------------------------------------------------------------------------------
# kto_lab configurations: the real Trainer
# ----------------------------------------------------------------------------------------------


def train_config(name: str, args, output_dir: str, batch_size: int) -> Dict[str, Any]:
    """The ``TrainConfig`` (as a dict) of one kto_lab configuration; everything else is the paper default.
    ``model.compile`` stays off: :func:`measure` compiles after its eager FLOP-counting step."""
    lora = name.startswith("kto_lora")
    targets = MODEL_SETS[args.config].lora_targets
    return {
        "output_dir": output_dir,
        "cpu": args.device == "cpu",
        "seed": args.seed,
        "model": {"pretrained": "random-weights-from-config", "family": MODEL_SETS[args.config].family,
                  "gradient_checkpointing": args.grad_checkpointing, "compile_mode": args.compile_mode,
                  "channels_last": args.channels_last},
        "data": {"resolution": args.resolution},
        "objective": {"objective": "dpo" if name == "dpo" else "kto", "reference_point": args.reference_point,
                      "reference_point_fraction": args.reference_point_fraction},
        "optim": {"batch_size": batch_size, "mixed_precision": args.precision, "max_steps": 1_000_000,
                  "warmup_steps": 0, "optimizer": args.optimizer},
        "lora": {"enabled": lora, "reference": "frozen_copy" if name == "kto_lora_copy" else "disabled_adapters",
                 **({"target_modules": list(targets)} if targets else {})},
        "logging": {"progress_bar": False},
        "checkpoint": {"every": 0},
    }


def build_trainer(name: str, args, base: Dict[str, Any], output_dir: str, batch_size: int, batch: Dict[str, Any]):
    """A ``kto_lab.sd.trainer.Trainer`` on fresh copies of the base models. With the cache only the
    denoiser is given (as a cached run loads it); without, also the VAE and text encoder. Its stand-in
    data source serves ``batch`` (a one-sample KTO step draws a batch once, for its unrelated captions)."""
    from kto_lab.sd.components import Components
    from kto_lab.sd.encoding import latent_scale
    from kto_lab.sd.trainer import Trainer

    cached = not args.no_cache
    fam = family(MODEL_SETS[args.config])
    encoders = {} if cached else {t.encoder: copy.deepcopy(base[t.encoder]) for t in fam.towers}
    components = Components(denoiser=copy.deepcopy(base["denoiser"]), schedule=MODEL_SETS[args.config].schedule(),
                            family=fam, vae=None if cached else copy.deepcopy(base["vae"]), **encoders)
    shift, scale = latent_scale(base["vae"].config)
    source = SimpleNamespace(manifest={"scaling_factor": scale, "shift_factor": shift}, skipped=0, next_batch=lambda: batch)
    return Trainer(train_config(name, args, output_dir, batch_size), components=components, source=source)


@contextmanager
def checkpointing_paused(model):
    """Gradient checkpointing off inside the block (so the FLOP count has no recompute), restored after."""
    from kto_lab.sd.encoding import unwrap_model

    base = unwrap_model(model)
    was = bool(getattr(base, "is_gradient_checkpointing", False))
    if was:
        base.disable_gradient_checkpointing()
    try:
        yield
    finally:
        if was:
            base.enable_gradient_checkpointing()


# ----------------------------------------------------------------------------------------------
# the official-script-like baseline
# ----------------------------------------------------------------------------------------------


class OfficialLikeStep:
    """The per-step work of the official Diffusion-KTO script for a full fine-tune, with the loss of
    :func:`kto_lab.step.objective_step`:

    * VAE (fp32, as the script: "vae.to(device, dtype=torch.float32)") encodes the pixel batch, posterior sample;
    * the text encoder(s) (in the mixed-precision dtype, as the script) embed the token ids; SDXL: both
      towers, and the images' size/crop time ids (the family's conditioning, as in the trainer);
    * the reference is a diffusers ``EMAModel`` holding the reference weights on the CPU; its forward runs
      the policy UNet after ``store`` (policy weights GPU->CPU), ``copy_to`` (reference CPU->GPU), and is
      followed by ``restore`` (policy CPU->GPU): three full-UNet transfers per step;
    * AdamW (or `--optimizer adafactor`, the official SDXL script's) on the fp32 UNet under accelerate's autocast,
      gradient clipping at 1.0; SDXL: gradient checkpointing, as the official Diffusion-DPO script always does.

    Not mimicked: the script also casts the policy UNet to the mixed-precision dtype around the reference
    forward (``ref_unet.to(device, dtype=weight_dtype)``), which would turn the trained weights into bf16;
    here the reference forward runs the fp32 weights under autocast like the policy.
    """

    def __init__(self, args, base: Dict[str, Any]):
        from accelerate import Accelerator
        from diffusers.training_utils import EMAModel

        from kto_lab.sd.config import OptimConfig
        from kto_lab.sd.encoding import BatchEncoder
        from kto_lab.sd.trainer import DTYPES, make_optimizer
        from kto_lab.step import ObjectiveConfig

        self.acc = acc = Accelerator(mixed_precision=args.precision, cpu=args.device == "cpu")
        self.device = acc.device
        weight_dtype = DTYPES.get(args.precision, torch.float32)  # "no" -> fp32
        if torch.cuda.is_available() and args.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # the script's --allow_tf32
        models = MODEL_SETS[args.config]
        fam = family(models)
        vae = copy.deepcopy(base["vae"]).to(self.device, torch.float32).requires_grad_(False).eval()
        text_encoders = [copy.deepcopy(base[t.encoder]).to(self.device, weight_dtype).requires_grad_(False).eval()
                         for t in fam.towers]
        # posterior samples of the fp32 VAE, (z - shift) * scale, and the family's conditioning, as the trainer
        self.inputs = BatchEncoder(fam, device=self.device, resolution=args.resolution, vae=vae,
                                   text_encoders=text_encoders)
        denoiser = copy.deepcopy(base["denoiser"]).to(self.device, torch.float32).train()
        if models.baseline_checkpointing:  # the official Diffusion-DPO script checkpoints SDXL always
            denoiser.enable_gradient_checkpointing()
        self.reference_weights = EMAModel(copy.deepcopy(base["denoiser"]).parameters())  # stays on the CPU
        self.params = [p for p in denoiser.parameters()]
        optimizer = make_optimizer(self.params, OptimConfig(optimizer=args.optimizer, learning_rate=1e-7,
                                                            weight_decay=0.0))
        self.denoiser, self.optimizer = acc.prepare(denoiser, optimizer)
        self.policy = fam.denoiser(self.denoiser)
        self.schedule = MODEL_SETS[args.config].schedule()
        self.objective = ObjectiveConfig(objective="kto", reference_point=args.reference_point,
                                         reference_point_fraction=args.reference_point_fraction).validate()
        self.generator = torch.Generator(device=self.device).manual_seed(args.seed)

    def reference(self, x_t, t, cond):
        self.reference_weights.store(self.params)  # policy weights -> CPU
        self.reference_weights.copy_to(self.params)  # reference weights CPU -> GPU
        try:
            with torch.no_grad():
                return self.policy(x_t, t, cond)
        finally:
            self.reference_weights.restore(self.params)  # policy weights CPU -> GPU

    def step(self, batch: Dict[str, torch.Tensor]) -> Dict[str, float]:
        from kto_lab.step import objective_step

        with torch.no_grad():
            inputs = self.inputs(batch, self.generator)
        labels = batch["labels"].to(self.device)
        # the official script rolls the prompts inside the batch: at batch 1 that is the sample's own caption
        # (the trainer would use the previous micro-batch's; the work per step is the same)
        own = inputs.cond if inputs.x0.shape[0] == 1 else None
        out = objective_step(self.objective, self.schedule, self.policy, inputs.x0, labels, inputs.cond,
                             reference=self.reference, generator=self.generator, cond_unrelated=own)
        self.acc.backward(out.loss)
        self.acc.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return out.metrics


# ----------------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------------


def _register_cpu_attention_flops() -> None:
    """torch's flop counter knows the CUDA attention kernels but not CPU flash attention; count it the same way."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is None or fwd in fc.flop_registry:
        return

    @fc.register_flop_formula(fwd)
    def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query, key, value)

    if bwd is not None:
        @fc.register_flop_formula(bwd)
        def _cpu_sdpa_bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_backward_flop_count(grad_out, query, key, value)


def count_flops(step: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_peak_tflops(device: str, precision: str, override: Optional[float]) -> Optional[float]:
    if override:
        return float(override)
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    kind = "tf32" if precision == "no" else precision
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peaks[kind]
    return None


# Operator groups of the profile summary: the first pattern that matches an operator's name wins.
OP_GROUPS = (
    ("attention", r"attention|sdpa|flash|efficient_attention"),
    ("convolution", r"conv|cudnn"),
    ("matmul", r"\bmm\b|addmm|bmm|matmul|gemm|linear"),
    ("norm", r"norm"),
    ("optimizer", r"adam|foreach"),
    ("copy/cast", r"copy|_to_copy|aten::to\b|clone|contiguous"),
    ("compiled graphs", r"compiled|triton"),
)


def _us(event, kind: str) -> float:
    """An averaged profiler event's total time in microseconds (``self_device``/``self_cpu``)."""
    return float(getattr(event, f"{kind}_time_total", 0.0) or 0.0)


def profile_summary(step: Callable[[], Any], steps: int, device: str, top: int = 20) -> Dict[str, Any]:
    """``torch.profiler`` over ``steps`` steps: operators ranked by self device time (self CPU
    time on CPU), the top device kernels, time per operator group, and the device's idle share
    of the wall time. Times are per step, in ms."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    _sync(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    wall_ms = 1000 * (time.perf_counter() - start) / steps
    events = prof.key_averages()
    kind = "self_device" if cuda else "self_cpu"
    ops = sorted((e for e in events if e.device_type == DeviceType.CPU), key=lambda e: -_us(e, kind))
    kernels = sorted((e for e in events if e.device_type != DeviceType.CPU), key=lambda e: -_us(e, "self_device"))
    busy_ms = sum(_us(e, "self_device") for e in kernels) / 1000 / steps if cuda else None
    op_total_ms = sum(_us(e, kind) for e in ops) / 1000 / steps
    groups: Dict[str, float] = {}
    for e in ops:
        group = next((g for g, pattern in OP_GROUPS if re.search(pattern, e.key.lower())), "other")
        groups[group] = groups.get(group, 0.0) + _us(e, kind) / 1000 / steps

    def rows(evs, k):
        return [{"name": e.key, "calls_per_step": e.count / steps, "ms_per_step": _us(e, k) / 1000 / steps,
                 "share": _us(e, k) / 1000 / steps / op_total_ms if op_total_ms else None} for e in evs[:top]]

    return {
        "steps": steps, "ranked_by": f"{kind.replace('_', ' ')} time", "wall_ms_per_step": wall_ms,
        "device_busy_ms_per_step": busy_ms, "device_idle_share": 1 - busy_ms / wall_ms if cuda else None,
        "op_ms_per_step": op_total_ms,
        "groups_ms_per_step": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        "top_ops": rows(ops, kind), "top_kernels": rows(kernels, "self_device") if cuda else [],
    }


def measure(name: str, args, base: Dict[str, Any], output_dir: str, batch_size: int, compile_how: str,
            profiles: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Build one configuration, count its FLOPs, compile it (``compile_how``), time its first step,
    warm it up, time ``args.steps`` steps; profile it into ``profiles`` if given."""
    official = name == BASELINE
    cached = not (official or args.no_cache)
    batch = make_batch(base, MODEL_SETS[args.config], cached=cached, pairs=name == "dpo", batch_size=batch_size,
                       resolution=args.resolution, seed=args.seed, pin=args.device == "cuda")
    if args.device == "cuda":
        torch.cuda.empty_cache()
    runner = OfficialLikeStep(args, base) if official else build_trainer(name, args, base, output_dir, batch_size, batch)
    after_build = torch.cuda.memory_allocated() if args.device == "cuda" else None

    with checkpointing_paused(runner.denoiser):  # eager, no recompute: model FLOPs
        flops = count_flops(lambda: runner.step(batch))
    if compile_how != "none":
        runner.compile_denoisers(compile_how, backend=args.compile_backend)  # after the count: compiled kernels are invisible to it
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    runner.step(batch)  # compiles, if compiling
    _sync(args.device)
    first_step_s = time.perf_counter() - start
    for _ in range(args.warmup):
        runner.step(batch)
    _sync(args.device)
    start = time.perf_counter()
    for _ in range(args.steps):
        metrics = runner.step(batch)
    _sync(args.device)
    step_s = (time.perf_counter() - start) / args.steps
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
    if profiles is not None:
        profiles[f"{name}/batch{batch_size}/compile-{compile_how}"] = profile_summary(
            lambda: runner.step(batch), args.profile_steps, args.device)

    pairs = name == "dpo"
    peak = device_peak_tflops(args.device, args.precision, args.peak_tflops)
    achieved = flops / step_s / 1e12
    row = {
        "config": name,
        "objective": "dpo" if pairs else "kto",
        "lora": name.startswith("kto_lora"),
        "reference": {"kto_lora_disabled": "disabled_adapters", "kto_lora_copy": "frozen_copy",
                      BASELINE: "cpu_swap"}.get(name, "frozen_copy"),
        "cache": cached,
        "precision": args.precision,
        "grad_checkpointing": bool(args.grad_checkpointing and not official),
        "compile": compile_how,
        "compile_mode": args.compile_mode if compile_how != "none" else None,
        "channels_last": bool(args.channels_last and not official),
        "reference_point_fraction": args.reference_point_fraction,
        "batch_size": batch_size,
        "images_per_sample": 2 if pairs else 1,
        "step_s": step_s,
        "first_step_s": first_step_s,
        "compile_s": first_step_s - step_s if compile_how != "none" else None,
        "samples_per_s": batch_size / step_s,
        "images_per_s": batch_size * (2 if pairs else 1) / step_s,
        "peak_mem_gib": peak_mem,
        "mem_after_build_gib": after_build / 2**30 if after_build is not None else None,
        "tflop_per_step": flops / 1e12,
        "achieved_tflops": achieved,
        "peak_tflops": peak,
        "mfu": achieved / peak if peak else None,
        "loss": float(metrics["loss"]),
    }
    return row


def run_configuration(name: str, args, base: Dict[str, Any], tmp: str, batch_size: int, compile_how: str,
                      profiles: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """:func:`measure`, with out-of-memory turned into a row with ``error``, and the device memory
    and compiled code freed after. A compiled configuration starts from an empty inductor cache
    (its compile time is a first run's) unless ``TORCHINDUCTOR_CACHE_DIR`` was set by the user."""
    if compile_how != "none" and not args.keep_inductor_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix=f"inductor_{name}_b{batch_size}_", dir=tmp)
    try:
        return measure(name, args, base, tempfile.mkdtemp(prefix="run_", dir=tmp), batch_size, compile_how, profiles)
    except torch.cuda.OutOfMemoryError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
        return {"config": name, "batch_size": batch_size, "compile": compile_how, "error": f"out of memory: {first_line}"}
    finally:
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
        if compile_how != "none":
            torch._dynamo.reset()


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(MODEL_SETS), default="sd15", help="model sizes (default sd15)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", default=None, help="per step (KTO: images; DPO: pairs); a comma list runs "
                   "each (e.g. 8,16,32). Default: 8 for sd15, 4 for sdxl and sd3, 2 for the tiny ones")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the FLOP-counting step")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list from {', '.join(CONFIGS)}")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help="mixed precision (default bf16 on cuda, no on cpu)")
    p.add_argument("--compile", nargs="?", const="regional", default="none",
                   help=f"model.compile of the kto_lab configurations, a comma list from {', '.join(COMPILE_CHOICES)} "
                        "(each a row); --compile alone = regional")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default", help="model.compile_mode")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (aot_eager: no code "
                   "generation, for smoke runs on CPU)")
    p.add_argument("--keep-inductor-cache", action="store_true", help="reuse the inductor cache (default: an "
                   "empty one per compiled row, so its compile time is a first run's)")
    p.add_argument("--channels-last", action="store_true", help="model.channels_last in the kto_lab configurations")
    p.add_argument("--grad-checkpointing", action="store_true", help="gradient checkpointing in the kto_lab configurations")
    p.add_argument("--no-cache", action="store_true", help="kto_lab configurations encode pixels/token ids every step")
    p.add_argument("--optimizer", choices=("adamw", "adafactor"), default="adamw",
                   help="of every configuration, baseline included (Diffusion-DPO trains SDXL with adafactor)")
    p.add_argument("--reference-point", choices=REFERENCE_POINTS, default="unrelated",
                   help="KTO reference point of every configuration (the paper, sec. 4.1: unrelated; "
                        "the official script computes the cheaper batch mean)")
    p.add_argument("--reference-point-fraction", type=float, default=1.0,
                   help="objective.reference_point_fraction of every KTO configuration (1 = the paper)")
    p.add_argument("--resolution", type=int, default=None, help="pixels (default 512 for sd15, 1024 for sdxl and sd3, "
                   "32 for the tiny ones)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for the MFU column "
                   "(default: from the GPU's name; none on CPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice; "
                   "1 is much faster on a CPU shared with other jobs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--profile", default=None, help="write a torch.profiler summary of every row to this JSON")
    p.add_argument("--profile-steps", type=int, default=3, help="profiled steps per row (after the timed ones)")
    args = p.parse_args(argv)

    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown or not names:
        p.error(f"--configs: unknown {unknown or 'empty list'}; choose from {', '.join(CONFIGS)}")
    args.configs = list(dict.fromkeys(names))
    models = MODEL_SETS[args.config]
    try:
        args.batch_sizes = ([models.default_batch_size] if args.batch_size is None
                            else [int(b) for b in str(args.batch_size).split(",") if b.strip()])
    except ValueError:
        p.error(f"--batch-size must be integers, got {args.batch_size!r}")
    args.compiles = list(dict.fromkeys(c.strip() for c in args.compile.split(",") if c.strip()))
    if not args.compiles or set(args.compiles) - set(COMPILE_CHOICES):
        p.error(f"--compile: choose from {', '.join(COMPILE_CHOICES)}; got {args.compile!r}")
    if not 0 < args.reference_point_fraction <= 1:
        p.error(f"--reference-point-fraction must lie in (0, 1], got {args.reference_point_fraction}")
    if args.reference_point_fraction != 1 and args.reference_point != "unrelated":
        p.error("--reference-point-fraction applies only to --reference-point unrelated")
    args.resolution = models.resolution if args.resolution is None else args.resolution
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "no")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    for flag in ("steps", "resolution", "profile_steps"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.resolution % 8:
        p.error(f"--resolution must be a multiple of 8, got {args.resolution}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible (use --device cpu --config tiny)")
    return args


def markdown_table(rows: List[Dict[str, Any]]) -> str:
    cols = [("config", "config", "{}"), ("batch", "batch_size", "{}"), ("compile", "compile", "{}"),
            ("cache", "cache", "{}"), ("samples/s", "samples_per_s", "{:.3g}"),
            ("step ms", "step_s", "ms"), ("first step s", "first_step_s", "{:.1f}"), ("peak GiB", "peak_mem_gib", "{:.2f}"),
            ("TFLOP/step", "tflop_per_step", "{:.3g}"), ("TFLOP/s", "achieved_tflops", "{:.3g}"),
            ("MFU", "mfu", "{:.1%}"), ("x official", "speedup_vs_official", "{:.2f}")]

    def fmt(v, spec):
        if v is None:
            return "n/a"
        if spec == "ms":
            return f"{1000 * v:.1f}"
        return spec.format(v)

    lines = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "error" in r:  # e.g. out of memory: the row says so in the first free column
            cells = [r["config"], r["batch_size"], r["compile"], r["error"]] + [""] * (len(cols) - 4)
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
            continue
        lines.append("| " + " | ".join(fmt(r.get(key), spec) for _, key, spec in cols) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import diffusers
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    models = MODEL_SETS[args.config]
    torch.manual_seed(args.seed)
    encoding = args.no_cache or BASELINE in args.configs  # else the encoders serve only the cached shapes
    with torch.device("cpu" if encoding else "meta"):
        encoders = {"vae": build_vae(models, args.seed), **build_text_encoders(models, args.seed)}
    base = {"denoiser": build_denoiser(models, args.seed), **encoders}  # on the host; each configuration copies them
    meta = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name if argv is None else "sd_step.py",
                                                      *(sys.argv[1:] if argv is None else argv)]),
        "config": args.config, "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else cpu_name(),
        "cpu_threads": torch.get_num_threads(), "resolution": args.resolution, "batch_sizes": args.batch_sizes,
        "steps": args.steps, "warmup": args.warmup, "precision": args.precision, "compile": args.compiles,
        "compile_mode": args.compile_mode, "compile_backend": args.compile_backend,
        "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR") if args.keep_inductor_cache else "empty per row",
        "channels_last": args.channels_last, "reference_point": args.reference_point,
        "reference_point_fraction": args.reference_point_fraction, "torch": torch.__version__,
        "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "unet_params_m": sum(p.numel() for p in base["denoiser"].parameters()) / 1e6,  # the denoiser's (any family)
    }
    rows: List[Dict[str, Any]] = []
    profiles: Optional[Dict[str, Any]] = {} if args.profile else None
    with tempfile.TemporaryDirectory(prefix="kto_bench_") as tmp:
        for batch_size in args.batch_sizes:
            for name in args.configs:
                for compile_how in (["none"] if name == BASELINE else args.compiles):  # the baseline never compiles
                    print(f"[sd_step] {name} batch {batch_size} compile {compile_how} ...", file=sys.stderr, flush=True)
                    rows.append(run_configuration(name, args, base, tmp, batch_size, compile_how, profiles))
                    write_results(args, meta, rows, profiles)  # a run cut short keeps the rows so far
    print(f"# {meta['config']} on {meta['device_name']} ({meta['device']}), {args.resolution}px, precision "
          f"{args.precision}, {args.steps} timed steps, {meta['date']}")
    print(markdown_table(rows))
    for path in (args.out, args.profile):
        if path:
            print(f"wrote {path}")
    return 0


def write_results(args, meta: Dict[str, Any], rows: List[Dict[str, Any]], profiles: Optional[Dict[str, Any]]) -> None:
    """Fill in ``x official`` (vs the baseline at the same batch size) and write the JSON files."""
    official = {r["batch_size"]: r["samples_per_s"] for r in rows if r["config"] == BASELINE and "error" not in r}
    for r in rows:
        if "error" not in r:
            r["speedup_vs_official"] = r["samples_per_s"] / official[r["batch_size"]] if r["batch_size"] in official else None
    for path, payload in ((args.out, {"meta": meta, "results": rows}), (args.profile, {"meta": meta, "profiles": profiles})):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    sys.exit(main())
