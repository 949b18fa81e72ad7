"""``kto-lab rounds --config CONFIG [key=value ...]``: rounds of generate -> label -> train -> evaluate."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Align a model to a labeler's taste in rounds: each round generates N images per prompt from the current
model, gets a like or a dislike for each (a person at the page this command serves, a scorer with a
threshold or a quantile, a synthetic user, or a Python function), trains from the previous round's
weights on every label so far, and evaluates on held-out prompts. Each round is a directory of OUT;
run the same command again to resume an interrupted round or to add rounds (rounds=N). The round log:
OUT/round_log.jsonl, .csv, .png. A person who does not finish within labeler.timeout ends the command
with exit status 4; the labels so far are kept.

examples:
  kto-lab rounds --config my_rounds.yaml                                  # a person labels at the printed URL
  kto-lab rounds --config my_rounds.yaml labeler.kind=scorer labeler.scorer.name=redness labeler.quantile=0.5
  kto-lab rounds --config my_rounds.yaml rounds=6                         # two more rounds"""

EXIT_PENDING = 4


def add_parser(subparsers, name: str, help: str) -> argparse.ArgumentParser:
    from ..config import config_help
    from .config import RoundsConfig

    p = subparsers.add_parser(name, help=help, description=DESCRIPTION,
                              epilog="config fields (key=default, then what it means):\n" + config_help(RoundsConfig))
    p.add_argument("--config", help="a YAML file of RoundsConfig fields (listed below)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config fields to override, e.g. rounds=2")
    p.add_argument("--print-config", action="store_true", help="print the config and exit")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    import sys

    from .config import load_rounds_config

    cfg = load_rounds_config(args.config, args.overrides)  # bad keys/values: one line from kto_lab.cli
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.stored(), sort_keys=False))
        return 0
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    from .labelers import LabelsPending
    from .rounds import ROUND_LOG, Rounds

    try:
        rows = Rounds(cfg).run()
    except LabelsPending as exc:
        print(f"kto-lab rounds: stopped waiting: {exc}", file=sys.stderr)
        return EXIT_PENDING
    last = rows[-1]
    print(f"done: {last['round']} round(s), {last['labels_spent']} labels spent; log: {cfg.out_dir}/{ROUND_LOG}.csv")
    return 0
