"""A finished run's model card, ``OUTPUT_DIR/README.md`` (``huggingface_hub.ModelCard``).

It says what the weights are and how they were made: base model, objective and its
hyper-parameters, data files and counts, steps, final metrics, and how to load the LoRA or
the UNet (SD3: the transformer) with the family's diffusers pipeline. ``kto-lab push`` writes it
again with the Hub repository id.
"""

from __future__ import annotations

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
{% endfor %}
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
                     counts: Dict[str, int], repo_id: Optional[str] = None, family=None) -> Path:
    """Write ``output_dir/README.md`` for a finished run with resolved ``config`` (a dict).
    ``repo_id``: where the usage snippet loads the weights from (default: ``output_dir``); ``family``: the
    run's :class:`~kto_lab.sd.families.ModelFamily` (default: ``model.family`` if named, else SD 1.x/2.x)."""
    from huggingface_hub import ModelCard, ModelCardData

    from .families import FAMILIES

    out = Path(output_dir)
    model, obj, optim, lora, data = (config[k] for k in ("model", "objective", "optim", "lora", "data"))
    family = family or FAMILIES.get(model.get("family"), FAMILIES["sd"])
    base, name = model["pretrained"], obj["objective"]
    is_hub_id = not Path(base).exists() and base.count("/") == 1
    method = {"kto": "Diffusion-KTO", "dpo": "Diffusion-DPO", "sft": "SFT", "csft": "CSFT", "bce": "BCE",
              "nft": "DiffusionNFT"}[name]
    whole = "UNet" if family.denoiser_subfolder == "unet" else family.denoiser_subfolder
    tuned = (f"a rank-{lora['rank']} LoRA (alpha {lora['alpha']:g}) on {', '.join(lora['target_modules'])}"
             if lora["enabled"] else f"the full {whole}")
    objective = {"kto": f"{method}, utility {obj['utility']}, beta {obj['beta']:g}, reference point "
                        f"{obj['reference_point']}, gamma {data['gamma']:g}",
                 "dpo": f"{method}, beta {obj['beta']:g}", "nft": f"{method}, beta {obj['beta']:g}"}.get(name, method)
    if obj.get("flow_error"):
        objective += f", {obj['flow_error']} errors"
    what = tuned[0].upper() + tuned[1:]
    files = ", ".join(f"`{Path(p).name}`" for p in data["train"]) or f"the cache `{data['cache_dir']}`"
    count_text = ", ".join(f"{v} {k}" for k, v in counts.items()) or "not recorded"
    settings = {
        "base model": f"`{base}`" + (f" (policy initialised from `{model['unet']}`)" if model.get("unet") else ""),
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
    card_data = ModelCardData(
        base_model=base if is_hub_id else None, library_name="diffusers", pipeline_tag="text-to-image",
        tags=["kto-lab", "text-to-image", "stable-diffusion", "diffusers", name] + (["lora"] if lora["enabled"] else []),
    )
    note = ('\nCSFT conditions on a quality prefix: start prompts with "good image, ".\n' if name == "csft" else "")
    card = ModelCard.from_template(
        card_data, template_str=TEMPLATE, title=f"{method} fine-tune of {base}",
        summary=f"{what} of `{base}`, fine-tuned with {method} by kto_lab from "
                f"{'preference pairs' if name == 'dpo' else 'per-image binary feedback'}.",
        settings=settings, steps=optim["max_steps"], metrics=shown or {"(none logged)": ""},
        usage=_usage(base, repo_id or str(out), lora["enabled"], name == "csft", family), note=note,
    )
    path = out / "README.md"
    card.save(path)
    return path
