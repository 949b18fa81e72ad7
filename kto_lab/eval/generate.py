"""Generation for evaluation: N images per prompt per model, seeds shared across models, resumable.

Diffusion-KTO appendix A.2 generates 5 images per prompt and method. Image ``k`` of prompt
``i`` always uses ``torch.Generator().manual_seed(base_seed + i * N + k)`` (one generator per
image, so the latent noise does not depend on batching), hence every model compared starts
from the same noise for the same (prompt, k).

Each model writes ``<out>/<model>/images/<prompt_id>_<k>.png`` and appends one JSON line per
image to ``<out>/<model>/manifest.jsonl``::

    {"model", "prompt_id", "prompt", "style", "k", "seed", "file", "status": "ok" | "failed", "error", "nsfw"}

Re-running skips images whose last manifest row is ``ok``, has this run's seed and prompt text
and whose file exists (resume), and retries the failed ones; an image made with another seed (an
earlier run with another ``n_per_prompt``, base seed or prompt order) or from another text (an
edited prompt file) is made again, so the models compared always share their noise and prompts.
A batch that raises is retried image by image; images that still fail are recorded
with ``status="failed"`` and their error, never silently dropped (the protocol counts them; see
:mod:`kto_lab.eval.protocol`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from kto_lab.eval.prompts import Prompt, check_unique_ids

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"


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
) -> Dict[str, int]:
    """Generate the missing images of ``prompts`` x ``n_per_prompt`` into ``model_dir``.

    Returns counts ``{"ok", "failed", "skipped"}`` for this call (skipped = already done).
    """
    from tqdm.auto import tqdm

    check_unique_ids(prompts)
    model_dir = Path(model_dir)
    (model_dir / "images").mkdir(parents=True, exist_ok=True)
    done = {(r["prompt_id"], int(r["k"]), r.get("seed"), r.get("prompt")) for r in read_manifest(model_dir)
            if r["status"] == "ok" and (model_dir / r["file"]).is_file()}
    todo = []
    for i, pr in enumerate(prompts):
        for k in range(n_per_prompt):
            seed = image_seed(base_seed, i, k, n_per_prompt)
            if (pr.id, k, seed, pr.text) not in done:
                todo.append((pr, k, seed))
    counts = {"ok": 0, "failed": 0, "skipped": len(prompts) * n_per_prompt - len(todo)}
    extra = {k: v for k, v in (("height", height), ("width", width)) if v is not None}

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

    with open(model_dir / MANIFEST, "a", encoding="utf-8") as manifest, \
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
                       "error": error, "nsfw": None}
                if image is not None:
                    tmp = model_dir / (rel + ".tmp.png")
                    image.save(tmp)
                    tmp.replace(model_dir / rel)  # atomic: a file that exists is complete
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
