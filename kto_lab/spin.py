"""SPIN-Diffusion: self-play fine-tuning with the Diffusion-DPO objective.

Each iteration k (SPIN, Chen et al. 2024; SPIN-Diffusion, Yuan et al. 2024; the LoRA study's
sec. 3.2 (iii)):

1. for every caption of the real data, the current model ``theta_{k-1}`` draws an image: the
   *loser*; the real image of that caption is the *winner*;
2. train with Diffusion-DPO (:func:`kto_lab.objectives.dpo_loss`, through the SD trainer and
   :func:`kto_lab.step.objective_step`) on these pairs, starting from ``theta_{k-1}`` and with
   ``theta_{k-1}`` as the frozen reference;
3. the result is ``theta_k``; repeat.

Nothing here is a second copy of the loss: each iteration is one ordinary ``kto_lab.train``
run with ``objective.objective = dpo``, ``model.denoiser`` and ``model.reference`` set to the
previous iteration's denoiser (a full fine-tune's), and ``data.train`` a pair table written here.

The images are drawn by a caller-supplied ``generate(pretrained, denoiser_dir, captions, seeds)``
returning ``(N, 3, H, W)`` float arrays in [0, 1] (``denoiser_dir`` None = the pipeline's own
denoiser), so SPIN works for any pipeline the trainer can train.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

Generate = Callable[[str, Optional[str], Sequence[str], Sequence[int]], np.ndarray]


@dataclass
class SpinIteration:
    iteration: int
    denoiser: str  # the trained denoiser of this iteration (diffusers dir: OUTPUT_DIR/unet, .../transformer)
    reference: Optional[str]  # the denoiser it was trained against (None = the pipeline's own)
    pairs: str  # the pair table it was trained on
    last_metrics: Dict[str, float] = field(default_factory=dict)


def spin(
    train_config: Dict[str, Any],
    real_records: str | Path,
    out_dir: str | Path,
    generate: Generate,
    *,
    iterations: int = 3,
    pairs_per_iteration: Optional[int] = None,
    seed: int = 0,
    on_iteration: Optional[Callable[[SpinIteration], None]] = None,
) -> List[SpinIteration]:
    """Run ``iterations`` rounds of SPIN-Diffusion; return what each produced.

    ``train_config``: a ``TrainConfig`` as a dict (``model.pretrained`` the pipeline; optimiser,
    ``objective.beta`` ...); ``objective``, ``data.train``, ``model.denoiser``, ``model.reference``
    and ``output_dir`` are set here. ``real_records``: a record table whose desirable rows are
    the real (winner) images. ``pairs_per_iteration``: real images drawn per round (all if None).
    """
    from kto_lab.data.records import load_records, write_pairs
    from kto_lab.images import to_pil  # (3, H, W) floats in [0, 1] -> PIL, the ``generate`` layout

    if iterations < 1:
        raise ValueError(f"spin: iterations must be >= 1, got {iterations}")
    if pairs_per_iteration is not None and pairs_per_iteration < 1:
        raise ValueError(f"spin: pairs_per_iteration must be >= 1 (or None for all), got {pairs_per_iteration}")
    out_dir = Path(out_dir)
    table = load_records(real_records)
    real = np.flatnonzero(np.asarray(table.labels) > 0)
    if len(real) == 0:
        raise ValueError(f"spin: {real_records} has no desirable (real) record")
    pretrained = train_config["model"]["pretrained"]
    rng = np.random.default_rng(seed)
    denoiser_dir: Optional[str] = train_config.get("model", {}).get("denoiser")
    done: List[SpinIteration] = []
    for k in range(1, iterations + 1):
        it_dir = out_dir / f"iteration-{k}"
        (it_dir / "images").mkdir(parents=True, exist_ok=True)
        pick = real if pairs_per_iteration is None else rng.choice(real, size=min(pairs_per_iteration, len(real)),
                                                                  replace=False)
        captions = [table.captions[int(i)] for i in pick]
        seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=len(pick))]
        losers = generate(pretrained, denoiser_dir, captions, seeds)  # the current model's own images
        if losers is None or len(losers) != len(captions):
            got = "None" if losers is None else f"{len(losers)} images"
            raise ValueError(f"spin: generate returned {got} for {len(captions)} captions (iteration {k})")
        rows = []
        for j, (i, cap) in enumerate(zip(pick, captions)):
            winner = table.raw_image(int(i))
            if not isinstance(winner, str):  # bytes in a Parquet table: write them out
                w_path = it_dir / "images" / f"real{j:06d}.png"
                table.load_image(int(i)).save(w_path)
                winner = str(w_path)
            l_path = it_dir / "images" / f"self{j:06d}.png"
            to_pil(losers[j]).save(l_path)
            rows.append({"caption": cap, "image_w": str(Path(winner).resolve()), "image_l": f"images/self{j:06d}.png"})
        pairs = write_pairs(rows, it_dir / "pairs.csv")

        cfg = copy.deepcopy(train_config)
        cfg["output_dir"] = str(it_dir / "train")
        cfg.setdefault("objective", {})["objective"] = "dpo"
        cfg.setdefault("data", {})["train"] = [str(pairs)]
        cfg["data"].pop("cache_dir", None)  # new pairs every iteration
        cfg["model"]["denoiser"] = denoiser_dir
        cfg["model"]["reference"] = denoiser_dir  # the previous iteration (None: the pipeline's = theta_0)
        from kto_lab.sd.trainer import train

        result = train(cfg, overwrite=True)  # spin owns out_dir: a re-run redoes the iteration
        record = SpinIteration(k, str(result.weights), denoiser_dir, str(pairs), dict(result.last_metrics))
        (it_dir / "spin.json").write_text(json.dumps(record.__dict__, indent=2))
        done.append(record)
        if on_iteration is not None:
            on_iteration(record)
        denoiser_dir = record.denoiser
    return done
