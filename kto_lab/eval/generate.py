"""Generation for evaluation: N images per prompt per model, seeds shared across models, resumable.

Diffusion-KTO appendix A.2 generates 5 images per prompt and method. Image ``k`` of prompt
``i`` always uses ``torch.Generator().manual_seed(base_seed + i * N + k)`` (one generator per
image, so the latent noise does not depend on batching), hence every model compared starts
from the same noise for the same (prompt, k).

Each model writes ``<out>/<model>/images/<prompt_id>_<k>.png`` and appends one JSON line per
image to ``<out>/<model>/manifest.jsonl``::

    {"model", "prompt_id", "prompt", "style", "k", "seed", "file", "status": "ok" | "failed", "error", "nsfw",
     "generation"}

``generation`` is the key of everything else that defines the image (:func:`generation_settings`): the
weights' identity (a content fingerprint of the base pipeline's, denoiser's and LoRA's files,
:mod:`kto_lab.fingerprint`; a hub id by its name), the scheduler and its config, the number of steps, the
guidance scale, the size and the precision. ``<out>/<model>/generation.json`` maps each key to its
settings (and the paths they came from). Re-running skips an image only if its last manifest row is
``ok``, has this run's seed, prompt text and generation key, and its file exists (resume); failed images
are retried. Anything else is made again, and the run says so, naming what changed (another LoRA
behind the same model name, other steps or guidance, an edited prompt file, another ``n_per_prompt``,
base seed or prompt order): the models compared always share their noise and prompts, and a report
never shows an older model's images. The device is not part of the key (images made on a GPU and on a
CPU differ in their last bits, not in what they show).

A batch that raises is retried image by image; images that still fail are recorded
with ``status="failed"`` and their error, never silently dropped (the protocol counts them; see
:mod:`kto_lab.eval.protocol`). A full disk while an image is written stops the run in one line; the
images written before it are kept (run again to resume).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from kto_lab.eval.prompts import Prompt, check_unique_ids
from kto_lab.paths import write_text_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
GENERATION = "generation.json"


def weights_identity(weights: Optional[Dict[str, Optional[str]]], known: Optional[Dict] = None):
    """``({"pipeline", "denoiser", "lora"} -> fingerprint, file entries)`` of the paths a pipeline was loaded
    from (a local path by its files' content, :func:`kto_lab.fingerprint.fingerprint`; a hub id by name;
    a LoRA directory by its ``pytorch_lora_weights.safetensors``, the file that loads; a pipeline given as
    the denoiser by its denoiser folder)."""
    from kto_lab.fingerprint import fingerprint
    from kto_lab.sd.components import LORA_WEIGHTS
    from kto_lab.sd.families import DENOISER_FOLDERS

    identity, entries = {}, {}
    for part, path in (weights or {}).items():
        if path is None:
            identity[part] = None
            continue
        p = Path(path).expanduser()
        if part == "lora" and p.is_dir():
            p = p / LORA_WEIGHTS
        if part == "denoiser" and p.is_dir() and not (p / "config.json").is_file():
            p = next((p / s for s in DENOISER_FOLDERS if (p / s / "config.json").is_file()), p)
        if not p.exists():
            identity[part] = f"hub:{path}"
            continue
        digest, files = fingerprint(p, known)
        identity[part] = digest
        entries.update(files)
    return identity, entries


def family_sampling_kwargs(pipe) -> Dict[str, Any]:
    """The arguments ``pipe``'s model family samples with (:meth:`~kto_lab.sd.families.base.ModelFamily.sampling_kwargs`:
    SD3's T5 length); a wrapper's (``wrapped``, CSFT's prompt prefix) are its pipeline's; a pipeline of no known
    family (a test's stand-in) has none."""
    from kto_lab.config import ConfigError
    from kto_lab.sd.families import family_of_pipeline

    try:
        return dict(family_of_pipeline(getattr(pipe, "wrapped", pipe)).sampling_kwargs())
    except ConfigError:
        return {}


def generation_settings(pipe, weights_id: Dict[str, Any], *, num_inference_steps: int, guidance_scale: float,
                        height: Optional[int], width: Optional[int]) -> Dict[str, Any]:
    """Everything but the seed and prompt that defines an image (the module docstring); ``None`` height and
    width are the pipeline's default size (its config, part of the weights' identity). The family's sampling
    arguments (:func:`family_sampling_kwargs`) are part of it where it has any (``call``)."""
    scheduler = getattr(pipe, "scheduler", None)
    config = {k: v for k, v in dict(getattr(scheduler, "config", None) or {}).items() if not k.startswith("_")}
    dtype = getattr(pipe, "dtype", None)
    settings = {"weights": weights_id,
                "scheduler": None if scheduler is None else {"class": type(scheduler).__name__, **config},
                "steps": int(num_inference_steps), "guidance_scale": float(guidance_scale),
                "height": height, "width": width, "dtype": None if dtype is None else str(dtype)}
    call = family_sampling_kwargs(pipe)
    if call:  # absent where empty, so the keys of images made before this field stay as they were
        settings["call"] = call
    return settings


def generation_key(settings: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_generation_log(model_dir) -> Dict[str, Dict]:
    """``generation.json``: ``{"settings": key -> {"settings", "paths"}, "files": fingerprint cache}``."""
    path = Path(model_dir) / GENERATION
    try:
        log_ = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"settings": {}, "files": {}}
    return {"settings": dict(log_.get("settings", {})), "files": dict(log_.get("files", {}))}


def _changes(old: Optional[Dict], new: Dict, paths: Dict) -> str:
    """What differs between two generation settings, in words."""
    if old is None:
        return "settings not recorded (an earlier kto_lab, or another generation.json)"
    out = []
    for key in new["settings"]:
        a, b = old["settings"].get(key), new["settings"][key]
        if a == b:
            continue
        if key == "weights":
            for part in b:
                if (a or {}).get(part) != b[part]:
                    was, now = old.get("paths", {}).get(part), paths.get(part)
                    out.append(f"{part} weights {'changed' if was == now else 'replaced'} ({was!r} -> {now!r})"
                               if (was or now) else f"{part} weights changed")
        elif key == "scheduler":
            out.append(f"scheduler {(a or {}).get('class')} -> {(b or {}).get('class')} or its config")
        else:
            out.append(f"{key} {a!r} -> {b!r}")
    return ", ".join(out) or "settings changed"


def image_seed(base_seed: int, prompt_index: int, k: int, n_per_prompt: int) -> int:
    """The seed of image ``k`` of the ``prompt_index``-th prompt (shared across models)."""
    return int(base_seed + prompt_index * n_per_prompt + k)


def read_manifest(model_dir) -> List[Dict]:
    """The manifest's rows, last row per (prompt_id, k) winning (a retry supersedes a failure)."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        return []
    latest: Dict[Tuple[str, int], Dict] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by an interrupted run
            log.warning("%s line %d is not valid JSON; ignored", path, i + 1)
            continue
        latest[(row["prompt_id"], int(row["k"]))] = row
    return list(latest.values())


@dataclass
class SafetyChecker:
    """The Stable Diffusion safety checker (a CLIP-based NSFW classifier) used only to COUNT flagged
    images (Diffusion-KTO appendix F); images are kept as generated, never blacked out."""

    model: object
    feature_extractor: object

    @classmethod
    def from_pretrained(cls, path, feature_extractor_path=None, device="cpu") -> "SafetyChecker":
        """``path``: an SD pipeline directory holding ``safety_checker/`` and ``feature_extractor/``,
        or the ``safety_checker`` directory itself (then ``feature_extractor_path`` or its sibling)."""
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        p = Path(path).expanduser()
        if (p / "safety_checker").is_dir():
            p, fe = p / "safety_checker", Path(feature_extractor_path or p / "feature_extractor")
        else:
            fe = Path(feature_extractor_path or p.parent / "feature_extractor")
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"safety checker: {str(p)!r} has no config.json; expected an SD pipeline directory "
                                    f"with safety_checker/ or a StableDiffusionSafetyChecker directory")
        if not (fe / "preprocessor_config.json").is_file():
            raise FileNotFoundError(f"safety checker: {str(fe)!r} has no preprocessor_config.json; expected the "
                                    f"pipeline's feature_extractor/ directory")
        model = StableDiffusionSafetyChecker.from_pretrained(p).to(device).eval()
        return cls(model, CLIPImageProcessor.from_pretrained(fe))

    @torch.no_grad()
    def flags(self, images) -> List[bool]:
        pil = list(images)
        clip_input = self.feature_extractor(images=pil, return_tensors="pt")["pixel_values"]
        param = next(self.model.parameters())
        arrays = [np.asarray(im, dtype=np.float32) / 255.0 for im in pil]  # a copy: blacking-out is discarded
        _, flagged = self.model(clip_input=clip_input.to(param.device, param.dtype), images=arrays)
        return [bool(f) for f in flagged]


class _DiskFull:
    """Turns a full disk while writing ``path`` into one :class:`~kto_lab.config.UserError` naming it
    (what was written before is kept: a re-run resumes)."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        from kto_lab.config import UserError
        from kto_lab.sd.checkpoints import is_disk_full

        if exc is not None and isinstance(exc, OSError) and is_disk_full(exc):
            raise UserError(f"no space left on the device while writing {self.path}; free some space and run "
                            "again (the images already written are kept and skipped)") from None
        return False


def save_image(image, path: Path) -> None:
    """Write ``image`` as PNG through a temporary file (a file that exists is complete; a full disk is one
    line naming the file)."""
    tmp = path.with_name(path.name + ".tmp.png")
    with _DiskFull(path):
        try:
            image.save(tmp)
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def generate_images(
    pipe,
    prompts: Sequence[Prompt],
    model_dir,
    *,
    model_name: str,
    n_per_prompt: int = 5,
    base_seed: int = 0,
    batch_size: int = 4,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    height: Optional[int] = None,
    width: Optional[int] = None,
    safety_checker: Optional[SafetyChecker] = None,
    generator_device: str = "cpu",
    progress: bool = True,
    weights: Optional[Dict[str, Optional[str]]] = None,
) -> Dict[str, int]:
    """Generate the missing images of ``prompts`` x ``n_per_prompt`` into ``model_dir``.

    ``weights``: the paths ``pipe`` was loaded from, ``{"pipeline", "denoiser", "lora"}`` (they key the images,
    see the module docstring; None: the images are keyed on the sampling settings only).
    Returns counts ``{"ok", "failed", "skipped"}`` for this call (skipped = already done).
    """
    from tqdm.auto import tqdm

    check_unique_ids(prompts)
    model_dir = Path(model_dir)
    (model_dir / "images").mkdir(parents=True, exist_ok=True)
    record = read_generation_log(model_dir)
    weights_id, files = weights_identity(weights, record["files"])
    settings = generation_settings(pipe, weights_id, num_inference_steps=num_inference_steps,
                                   guidance_scale=guidance_scale, height=height, width=width)
    key = generation_key(settings)
    paths = {k: (None if v is None else str(v)) for k, v in (weights or {}).items()}
    rows = {(r["prompt_id"], int(r["k"])): r for r in read_manifest(model_dir)
            if r["status"] == "ok" and (model_dir / r["file"]).is_file()}
    todo, stale = [], {}
    for i, pr in enumerate(prompts):
        for k in range(n_per_prompt):
            seed = image_seed(base_seed, i, k, n_per_prompt)
            row = rows.get((pr.id, k))
            if row is not None and row.get("seed") == seed and row.get("prompt") == pr.text \
                    and row.get("generation") == key:
                continue
            todo.append((pr, k, seed))
            if row is not None and row.get("seed") == seed and row.get("prompt") == pr.text:
                old = row.get("generation")
                stale[old] = stale.get(old, 0) + 1
    for old, n in stale.items():
        log.warning("%s: %d image(s) were made with other settings (%s); making them again", model_name, n,
                    _changes(record["settings"].get(old), {"settings": settings}, paths))
    record["settings"][key] = {"settings": settings, "paths": paths}
    record["files"].update(files)
    with _DiskFull(model_dir / GENERATION):
        write_text_atomic(model_dir / GENERATION, json.dumps(record, indent=1, default=str))
    counts = {"ok": 0, "failed": 0, "skipped": len(prompts) * n_per_prompt - len(todo)}
    extra = {k: v for k, v in (("height", height), ("width", width)) if v is not None}
    extra.update(settings.get("call", {}))  # e.g. SD3's T5 length: the captions read as the family trains

    def run(items):
        gens = [torch.Generator(generator_device).manual_seed(seed) for _, _, seed in items]
        out = pipe(prompt=[pr.text for pr, _, _ in items], generator=gens, num_inference_steps=num_inference_steps,
                   guidance_scale=guidance_scale, output_type="pil", **extra)
        images = list(out.images)
        if len(images) != len(items):  # never lose an image silently: the batch is retried, then recorded failed
            raise ValueError(f"pipeline returned {len(images)} images for {len(items)} prompts")
        for im in images:
            arr = np.asarray(im)
            if arr.size == 0:
                raise ValueError("pipeline returned an empty image")
        return images

    with _DiskFull(model_dir / MANIFEST), open(model_dir / MANIFEST, "a", encoding="utf-8") as manifest, \
            tqdm(total=len(todo), desc=f"generate {model_name}", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            try:
                results = list(zip(batch, run(batch), [None] * len(batch)))
            except Exception as e:  # retry one by one, so one bad prompt does not fail its batch
                log.warning("batch failed (%s); retrying image by image", e)
                results = []
                for item in batch:
                    try:
                        results.append((item, run([item])[0], None))
                    except Exception as e1:  # noqa: BLE001 -- recorded in the manifest
                        results.append((item, None, f"{type(e1).__name__}: {e1}"))
            ok_images = [im for _, im, _ in results if im is not None]
            flags = iter(safety_checker.flags(ok_images)) if (safety_checker is not None and ok_images) else None
            for (pr, k, seed), image, error in results:
                rel = f"images/{pr.id}_{k}.png"
                row = {"model": model_name, "prompt_id": pr.id, "prompt": pr.text, "style": pr.style, "k": k,
                       "seed": seed, "file": rel, "status": "ok" if image is not None else "failed",
                       "error": error, "nsfw": None, "generation": key}
                if image is not None:
                    save_image(image, model_dir / rel)
                    if flags is not None:
                        row["nsfw"] = next(flags)
                    counts["ok"] += 1
                else:
                    counts["failed"] += 1
                manifest.write(json.dumps(row) + "\n")
            manifest.flush()
            bar.update(len(batch))
    if counts["failed"]:
        log.warning("%s: %d image(s) failed to generate; see %s", model_name, counts["failed"], model_dir / MANIFEST)
    return counts
