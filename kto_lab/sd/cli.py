"""``kto-lab train --config CONFIG.yaml [key=value ...]``: fine-tune Stable Diffusion.

Multi-GPU / multi-node: ``accelerate launch [--config_file kto_lab/configs/accelerate_deepspeed_zero2.yaml]
-m kto_lab.cli train --config C.yaml``. Bad keys or values fail before any model loads.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers, name: str, help: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help, description=help + ". " + __doc__.splitlines()[2].strip())
    p.add_argument("--config", help="YAML config (kto_lab/configs/*.yaml); defaults: the paper's")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. objective.beta=2000 optim.max_steps=100")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier run's files in output_dir first (default: refuse a used output_dir)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    import yaml
    from dataclasses import asdict

    from .config import load_train_config

    cfg = load_train_config(args.config, args.overrides)  # bad keys/values: one line from kto_lab.cli
    if args.print_config:
        print(yaml.safe_dump(asdict(cfg.resolved()), sort_keys=False))
        return 0
    from .trainer import Trainer

    result = Trainer(cfg, overwrite=args.overwrite).fit()  # TrainingDiverged: one line and exit 3, from kto_lab.cli
    print(f"done: {result.global_step} steps; weights: {result.weights}; metrics: {result.metrics_path}")
    return 0
