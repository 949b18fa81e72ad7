"""Time one seed of the toy Figure 6 (pretraining, every fine-tune, sampling), with its breakdown.

    .venv/bin/python benchmarks/toy_speed.py [--threads 1] [--steps N] [--pretrain-steps N] [--family flow]

The issue's target: under 2 minutes per seed on a 2-core CPU. The machine's load average is
printed too: on a shared machine the timings are only as good as the idle cores.
"""

import argparse
import os
import time

import torch

from toy import ToyConfig
from toy.run import run_seed


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: ToyConfig.threads)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--pretrain-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", default=None, help="ddpm (default) or flow (the flow-matching toy)")
    args = p.parse_args()
    kw = {k: v for k, v in (("threads", args.threads), ("steps", args.steps), ("pretrain_steps", args.pretrain_steps),
                            ("family", args.family)) if v is not None}
    cfg = ToyConfig(**kw).validate()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    result = run_seed(cfg, args.seed)
    total = time.perf_counter() - t0
    print(f"torch {torch.__version__}, threads={cfg.threads}, cpus={os.cpu_count()}, "
          f"load average before/after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f}")
    print(f"config: family={cfg.family} pretrain_steps={cfg.pretrain_steps} steps={cfg.steps} batch_size={cfg.batch_size} "
          f"hidden={cfg.hidden} n_samples={cfg.n_samples}")
    groups = {"pretrain": 0.0, "finetune": 0.0, "sample": 0.0}
    for name, sec in result.seconds.items():
        print(f"  {name:28s} {sec:7.2f} s")
        groups[name.split(":")[0]] += sec
    print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in groups.items()) + f", other {total - sum(groups.values()):.1f} s")
    print(f"one Figure 6 seed: {total:.1f} s (target < 120 s)")


if __name__ == "__main__":
    main()
