"""What a cheaper Diffusion-KTO reference point costs and saves: ``objective.reference_point_fraction``.

    python benchmarks/reference_point.py --threads 1 --out reference_point.json

The reference point z_ref (Diffusion-KTO sec. 4.1) is estimated on every step from unrelated pairs:
one reference and one policy forward per pair, without grad. ``reference_point_fraction=f`` keeps
the first round(f x B) pairs of a batch of B. For each fraction, on the same models, batches and
seeds, this script runs ``--steps`` training steps and reports the median step time and the spread
of the logged ``z_ref`` (beta x reference point) over the steps:

    toy      the 2-D toy's MLP denoiser (toy/): pretrained, then fine-tuned with Diffusion-KTO for
             ``--finetune-steps`` so that the policy differs from its reference; batches of 512
             gamma-sampled points (ToyConfig), one step = ``objective_step`` -> backward -> AdamW.
    tiny_sd  the tiny UNet of ``benchmarks/sd_step.py --config tiny`` (random weights) through the
             real ``Trainer.step``: fine-tuned for ``--finetune-steps`` at learning rate 1e-4 (the LoRA
             study's, sec. 3.3) on random cached latents, then measured against the original UNet as the
             reference; batch 8.

The measured steps run at learning rate 1e-7 (the paper's, sec. A.1), so the weights, and with them
the quantity z_ref estimates, stay put: the spread is the estimator's sampling noise (batch draw,
noise, timesteps). With S steps the std itself is uncertain by about 1/sqrt(2(S-1)) (11 % at 40).
``1/sqrt(f)`` is the spread an average of independent pairs would have; z_ref is clamped at 0, so
when its mean is near 0 small estimates are cut and the mean rises as f falls.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))

MEASURE_LR = 1e-7  # the paper's learning rate (sec. A.1): the weights barely move while z_ref is sampled


def summarize(fraction: float, pairs: int, step_s: Sequence[float], z_ref: Sequence[float]) -> Dict[str, float]:
    return {
        "fraction": fraction, "pairs": pairs,
        "step_ms": 1000 * statistics.median(step_s[1:] or step_s),  # the first step warms up
        "z_ref_mean": statistics.fmean(z_ref), "z_ref_std": statistics.stdev(z_ref),
        "z_ref_zero_share": sum(z == 0.0 for z in z_ref) / len(z_ref), "steps": len(z_ref),
    }


def timed_steps(step: Callable[[int], float], steps: int) -> tuple:
    """Run ``step(i)`` (returns the step's z_ref) ``steps`` times; per-step seconds and z_ref values."""
    seconds, values = [], []
    for i in range(steps):
        t0 = time.perf_counter()
        values.append(step(i))
        seconds.append(time.perf_counter() - t0)
    return seconds, values


# ----------------------------------------------------------------------------------------------
# the toy
# ----------------------------------------------------------------------------------------------


def toy_rows(fractions: Sequence[float], steps: int, finetune_steps: int, seed: int) -> List[Dict[str, float]]:
    import dataclasses

    from kto_lab.data.sampler import GammaSampler
    from kto_lab.step import objective_step, unrelated_pair_count
    from toy.train import ToyConfig, finetune, make_feedback_for, pretrain

    cfg = ToyConfig(steps=finetune_steps, seed=seed).validate()
    pretrained = pretrain(cfg, seed)
    feedback = make_feedback_for(cfg, seed)
    tuned = finetune(cfg, "kto:kto", pretrained, feedback, seed).model
    reference = pretrained.requires_grad_(False)
    schedule = cfg.schedule()
    rows = []
    for f in fractions:
        ocfg = dataclasses.replace(cfg.objective("kto:kto"), reference_point_fraction=f).validate()
        policy = copy.deepcopy(tuned).train()
        opt = torch.optim.AdamW(policy.parameters(), lr=MEASURE_LR)
        sampler = GammaSampler(feedback.labels, cfg.gamma, seed=seed + 3)
        gen = torch.Generator().manual_seed(seed + 2)

        def step(i: int) -> float:
            idx = sampler.sample(cfg.batch_size)
            out = objective_step(ocfg, schedule, policy, feedback.x[idx], feedback.labels[idx],
                                 reference=reference, generator=gen)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            return float(out.metrics["z_ref"])

        seconds, values = timed_steps(step, steps)
        rows.append(summarize(f, unrelated_pair_count(cfg.batch_size, f), seconds, values))
    return rows


# ----------------------------------------------------------------------------------------------
# the tiny SD UNet through the real trainer
# ----------------------------------------------------------------------------------------------


def tiny_sd_rows(fractions: Sequence[float], steps: int, finetune_steps: int, seed: int,
                 batch_size: int = 8) -> List[Dict[str, float]]:
    from kto_lab.sd.components import Components
    from kto_lab.sd.trainer import Trainer
    from kto_lab.step import unrelated_pair_count
    from sd_step import MODEL_SETS, build_denoiser, build_text_encoders, build_vae, family, make_batch

    models = MODEL_SETS["tiny"]
    base = {"denoiser": build_denoiser(models, seed), "vae": build_vae(models, seed), **build_text_encoders(models, seed)}
    source = SimpleNamespace(manifest={"scaling_factor": float(base["vae"].config.scaling_factor)}, skipped=0)

    def batch(i: int):
        return make_batch(base, models, cached=True, pairs=False, batch_size=batch_size,
                          resolution=models.resolution, seed=i)

    def trainer(out: Path, policy, reference, lr: float, fraction: float) -> Trainer:
        cfg = {"output_dir": str(out), "cpu": True, "seed": seed,
               "model": {"pretrained": "random-weights-from-config", "family": models.family},
               "objective": {"objective": "kto", "reference_point_fraction": fraction},
               "optim": {"batch_size": batch_size, "learning_rate": lr, "warmup_steps": 0, "max_steps": 10**6},
               "logging": {"progress_bar": False}, "checkpoint": {"every": 0}}
        components = Components(denoiser=copy.deepcopy(policy), schedule=models.schedule(), reference_denoiser=reference,
                                family=family(models))
        return Trainer(cfg, components=components, source=source)

    rows = []
    with tempfile.TemporaryDirectory(prefix="kto_refpoint_") as tmp:
        tuning = trainer(Path(tmp) / "finetune", base["denoiser"], None, 1e-4, 1.0)
        for i in range(finetune_steps):
            tuning.step(batch(10_000 + i))
        tuned = copy.deepcopy(tuning.base_denoiser())
        tuning.close()
        for f in fractions:
            run = trainer(Path(tmp) / f"f{f}", tuned, base["denoiser"], MEASURE_LR, f)
            seconds, values = timed_steps(lambda i: float(run.step(batch(i))["z_ref"]), steps)
            run.close()
            rows.append(summarize(f, unrelated_pair_count(batch_size, f), seconds, values))
    return rows


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def markdown_table(rows: List[Dict[str, float]]) -> str:
    full = next((r for r in rows if r["fraction"] == 1.0), rows[0])
    lines = ["| fraction | pairs | step ms | x step of 1.0 | z_ref mean | z_ref std | std / std(1.0) | 1/sqrt(f) | z_ref = 0 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['fraction']:g} | {r['pairs']} | {r['step_ms']:.1f} | {r['step_ms'] / full['step_ms']:.2f} | "
            f"{r['z_ref_mean']:.4g} | {r['z_ref_std']:.3g} | {r['z_ref_std'] / full['z_ref_std']:.2f} | "
            f"{1 / math.sqrt(r['fraction']):.2f} | {r['z_ref_zero_share']:.0%} |")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="toy,tiny_sd", help="comma list from toy, tiny_sd")
    p.add_argument("--fractions", default="1,0.5,0.25,0.125", help="comma list of reference_point_fraction values")
    p.add_argument("--steps", type=int, default=40, help="measured steps per fraction (>= 2)")
    p.add_argument("--finetune-steps", type=int, default=30, help="KTO steps that move the policy off its reference")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a shared CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models or set(args.models) - {"toy", "tiny_sd"}:
        p.error(f"--models: choose from toy, tiny_sd; got {args.models}")
    try:
        args.fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError:
        p.error(f"--fractions must be numbers, got {args.fractions!r}")
    if not all(0 < f <= 1 for f in args.fractions):
        p.error(f"--fractions must lie in (0, 1], got {args.fractions}")
    if args.steps < 2 or args.finetune_steps < 0:
        p.error(f"--steps must be >= 2 and --finetune-steps >= 0, got {args.steps} and {args.finetune_steps}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from sd_step import cpu_name

    meta = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(["reference_point.py", *(sys.argv[1:] if argv is None else argv)]),
            "device_name": cpu_name(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "steps": args.steps, "finetune_steps": args.finetune_steps, "seed": args.seed}
    results = {}
    for name in args.models:
        run = toy_rows if name == "toy" else tiny_sd_rows
        results[name] = run(args.fractions, args.steps, args.finetune_steps, args.seed)
        print(f"\n# {name} on {meta['device_name']} ({meta['cpu_threads']} threads), {args.steps} steps per "
              f"fraction, {meta['date']}")
        print(markdown_table(results[name]), flush=True)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
