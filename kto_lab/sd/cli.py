"""``kto-lab train --config CONFIG [key=value ...]``: fine-tune Stable Diffusion (see DESCRIPTION)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Fine-tune Stable Diffusion with Diffusion-KTO, Diffusion-DPO, SFT, CSFT or BCE on Accelerate.
The config is a YAML file or a packaged config's name, overridden by key=value pairs; a bad key
or value stops before any model loads. Several GPUs or nodes:
  accelerate launch [--config_file kto_lab/configs/accelerate_deepspeed_zero2.yaml] -m kto_lab.cli train ...

examples:
  kto-lab train --config sd15_kto_lora data.train=[my_records.parquet] output_dir=runs/first
  kto-lab train --config sd15_kto_lora --print-config      # the resolved config, paper defaults filled in"""


def add_parser(subparsers, name: str, help: str) -> argparse.ArgumentParser:
    from ..config import CONFIG_DIR, config_help
    from .config import TrainConfig

    packaged = ", ".join(sorted(q.stem for q in CONFIG_DIR.glob("*.yaml") if not q.stem.startswith(("accelerate", "eval"))))
    p = subparsers.add_parser(name, help=help, description=DESCRIPTION,
                              epilog="config fields (key=default, then what it means):\n" + config_help(TrainConfig))
    p.add_argument("--config", help=f"a YAML file, or a packaged config's name ({packaged}: kto_lab/configs); "
                                    "without it, the paper's defaults")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config fields to override (listed below), e.g. objective.beta=2000 optim.max_steps=100")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier run's files in output_dir first (default: refuse a used output_dir)")
    p.set_defaults(func=run, config_fields=(TrainConfig, ""))  # unknown --options are named by its fields
    return p


def run(args) -> int:
    import yaml
    from dataclasses import asdict

    from .config import load_train_config

    cfg = load_train_config(args.config, args.overrides)  # bad keys/values: one line from kto_lab.cli
    if args.print_config:  # with the family's defaults where its model_index.json can be read
        from .families import resolve_family
        from .hub import pipeline_class_name

        readable = cfg.model.family != "auto" or pipeline_class_name(cfg.model.pretrained) is not None
        family = resolve_family(cfg.model.pretrained, cfg.model.family) if readable else None
        print(yaml.safe_dump(asdict(cfg.resolved(family)), sort_keys=False))
        return 0
    from .trainer import Trainer

    result = Trainer(cfg, overwrite=args.overwrite).fit()  # TrainingDiverged: one line and exit 3, from kto_lab.cli
    print(f"done: {result.global_step} steps; weights: {result.weights}; metrics: {result.metrics_path}")
    return 0
