"""A finished run's model card, ``OUTPUT_DIR/README.md`` (``huggingface_hub.ModelCard``).

It says what the weights are and how they were made: base model, objective and its
hyper-parameters, data files and counts, steps, final metrics, the last validation images, and how to
load the LoRA or the denoiser (SD's UNet, SD3's transformer) with the family's diffusers pipeline.

It follows the Hub's model-card conventions: YAML front matter with ``base_model`` (the base's hub id
when it came from the Hub: given as ``org/name``, or a local folder inside a Hub cache,
``models--org--name``; a local base is called "local" and named by its folder's name, never its absolute
path), ``license`` (the base's, read from its own README's front matter when there is one, else
``other``), ``library_name: diffusers``, ``pipeline_tag``, ``tags`` and a ``widget`` of the validation
images. ``kto-lab push`` uploads it with the usage snippet pointed at the Hub repository (in the
upload only; the local file is not changed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

KEY_METRICS = ("loss", "rewards/accuracy", "rewards/margin", "rewards/pair_accuracy", "z_ref", "kl")
TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}

## Training

| setting | value |
|---|---|
{% for k, v in settings.items() %}| {{ k }} | {{ v }} |
{% endfor %}
## Final metrics (step {{ steps }})

| metric | value |
|---|---|
{% for k, v in metrics.items() %}| {{ k }} | {{ v }} |
{% endfor %}{{ validation }}
## Use it

```python
{{ usage }}
```
{{ note }}
`config.yaml` (the resolved training config) and `metrics.jsonl` (every logged step) are in this
folder; `kto-lab train --config config.yaml output_dir=ANOTHER_DIR` repeats the run.
"""


def data_counts(source) -> Dict[str, int]:
    """Desirable / undesirable records (or pairs) the run trained on, from its data source."""
    labels = getattr(source, "labels", None)
    if labels is not None and not getattr(source, "pairs", False):
        good = int((np.asarray(labels) > 0).sum())
        return {"desirable": good, "undesirable": len(labels) - good}
    table = getattr(source, "table", source)
    return {"pairs": len(table)} if hasattr(table, "__len__") else {}


def base_model_id(pretrained: str) -> Optional[str]:
    """The Hub id of a base model: ``pretrained`` itself when it is one (``org/name``, not a local path),
    or ``org/name`` of a local Hub-cache folder (``.../models--org--name/snapshots/<rev>``); else None."""
    p = Path(pretrained).expanduser()
    if not p.exists():
        return pretrained if pretrained.count("/") == 1 and not pretrained.startswith((".", "/", "~")) else None
    for part in reversed(p.resolve().parts):
        if part.startswith("models--") and part.count("--") >= 2:
            return "/".join(part[len("models--"):].split("--", 1))
    return None


def base_license(pretrained: str) -> Optional[str]:
    """The ``license`` of a local base model's own model card (its README.md front matter), if any."""
    readme = Path(pretrained).expanduser() / "README.md"
    if not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        value = ModelCard.load(readme).data.to_dict().get("license")
    except Exception:  # noqa: BLE001 -- a base's README that is not a model card: no license known
        return None
    return str(value) if value else None


def validation_images(output_dir: Path, prompts) -> tuple:
    """``(step, [(prompt, relative path)])`` of the last ``validation/step-*`` folder (written by the trainer's
    ``validate``: ``00.png`` is the first prompt's), or ``(None, [])``."""
    steps = sorted(d for d in (Path(output_dir) / "validation").glob("step-*") if d.is_dir())
    if not steps:
        return None, []
    last = steps[-1]
    images = []
    for f in sorted(last.glob("*.png")):
        i = int(f.stem) if f.stem.isdigit() else -1
        text = prompts[i] if 0 <= i < len(prompts) else f.stem
        images.append((text, f.relative_to(output_dir).as_posix()))
    digits = last.name[len("step-"):]
    return (int(digits) if digits.isdigit() else None), images


def _usage(base: str, location: str, lora: bool, csft: bool, family) -> str:
    prompt = "good image, a photo of a cat" if csft else "a photo of a cat"
    pipeline, model, sub = family.pipeline_class_name, family.denoiser_class_name, family.denoiser_subfolder
    if lora:
        load = (f'pipe = {pipeline}.from_pretrained("{base}", torch_dtype=torch.float16)\n'
                f'pipe.load_lora_weights("{location}")')
        head = f"import torch\nfrom diffusers import {pipeline}\n\n"
    else:
        load = (f'{sub} = {model}.from_pretrained("{location}", subfolder="{sub}", torch_dtype=torch.float16)\n'
                f'pipe = {pipeline}.from_pretrained("{base}", {sub}={sub}, torch_dtype=torch.float16)')
        head = f"import torch\nfrom diffusers import {pipeline}, {model}\n\n"
    return head + load + f'\npipe = pipe.to("cuda")\nimage = pipe("{prompt}").images[0]'


def write_model_card(output_dir: str | Path, config: Dict[str, Any], *, metrics: Dict[str, float],
                     counts: Dict[str, int], family, repo_id: Optional[str] = None) -> Path:
    """Write ``output_dir/README.md`` for a finished run with resolved ``config`` (a dict): :func:`model_card`."""
    path = Path(output_dir) / "README.md"
    tmp = path.with_name(".README.md.tmp")
    tmp.write_text(model_card(output_dir, config, metrics=metrics, counts=counts, family=family, repo_id=repo_id),
                   encoding="utf-8")
    os.replace(tmp, path)  # replaces a link at README.md itself, never the file it points to
    return path


def model_card(output_dir: str | Path, config: Dict[str, Any], *, metrics: Dict[str, float],
               counts: Dict[str, int], family, repo_id: Optional[str] = None) -> str:
    """The model card's text for the finished run in ``output_dir`` with resolved ``config`` (a dict) of model
    ``family`` (a :class:`~kto_lab.sd.families.ModelFamily`). ``repo_id``: where the usage snippet loads the
    weights from (default: ``output_dir``)."""
    from huggingface_hub import ModelCard, ModelCardData

    out = Path(output_dir)
    model, obj, optim, lora, data = (config[k] for k in ("model", "objective", "optim", "lora", "data"))
    name = obj["objective"]
    start = model.get("denoiser")  # where the policy started, if not from the pipeline's denoiser
    hub_id = base_model_id(model["pretrained"])
    local_name = Path(model["pretrained"]).expanduser().resolve().name
    base = hub_id or f"path/to/{local_name}"  # the snippet's from_pretrained argument; never a local absolute path
    base_text = f"`{hub_id}`" if hub_id else f"a local model (`{local_name}`; not on the Hub)"
    method = {"kto": "Diffusion-KTO", "dpo": "Diffusion-DPO", "sft": "SFT", "csft": "CSFT", "bce": "BCE"}[name]
    tuned = (f"a rank-{lora['rank']} LoRA (alpha {lora['alpha']:g}) on {', '.join(lora['target_modules'])}"
             if lora["enabled"] else f"the full {family.denoiser_name}")
    objective = {"kto": f"{method}, utility {obj['utility']}, beta {obj['beta']:g}, reference point "
                        f"{obj['reference_point']}, gamma {data['gamma']:g}",
                 "dpo": f"{method}, beta {obj['beta']:g}"}.get(name, method)
    what = tuned[0].upper() + tuned[1:]
    files = ", ".join(f"`{Path(p).name}`" for p in data["train"]) or f"the cache `{Path(data['cache_dir']).name}`"
    count_text = ", ".join(f"{v} {k}" for k, v in counts.items()) or "not recorded"
    settings = {
        "base model": base_text + (f" (policy initialised from `{Path(start).name}`)" if start else ""),
        "objective": objective,
        "fine-tuned": tuned,
        "data": f"{files}: {count_text}",
        "steps": f"{optim['max_steps']} optimizer steps, batch {optim['batch_size']} per process, gradient "
                 f"accumulation {optim['gradient_accumulation_steps']}",
        "optimizer": f"{optim['optimizer']}, learning rate {optim['learning_rate']:g} ({optim['lr_scheduler']}, "
                     f"{optim['warmup_steps']} warm-up steps), weight decay {optim['weight_decay']:g}",
        "precision": optim["mixed_precision"],
        "seed": config["seed"],
    }
    shown = {k: f"{metrics[k]:.4g}" for k in KEY_METRICS if k in metrics}
    step, images = validation_images(out, config.get("logging", {}).get("validation_prompts", []))
    license_ = base_license(model["pretrained"])
    card_data = ModelCardData(
        base_model=hub_id, license=license_ or "other", library_name="diffusers", pipeline_tag="text-to-image",
        tags=["kto-lab", "text-to-image", "stable-diffusion", "diffusers", name] + (["lora"] if lora["enabled"] else []),
        widget=[{"text": text, "output": {"url": path}} for text, path in images] or None,
    )
    note = ('\nCSFT conditions on a quality prefix: start prompts with "good image, ".\n' if name == "csft" else "")
    if not license_:
        note += ("\nLicense: the base model's (not found beside it, so the front matter says `other`); "
                 "these weights are a derivative of it.\n")
    validation = "" if not images else (
        f"\n## Validation images (step {step})\n\n" + "\n".join(f"![{text}]({path})" for text, path in images) + "\n")
    card = ModelCard.from_template(
        card_data, template_str=TEMPLATE, title=f"{method} fine-tune of {hub_id or local_name}",
        summary=f"{what} of {base_text}, fine-tuned with {method} by kto_lab from "
                f"{'preference pairs' if name == 'dpo' else 'per-image binary feedback'}.",
        settings=settings, steps=optim["max_steps"], metrics=shown or {"(none logged)": ""}, validation=validation,
        usage=_usage(base, repo_id or str(out), lora["enabled"], name == "csft", family), note=note,
    )
    return str(card)
