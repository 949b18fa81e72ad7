"""The ``kto-lab`` command. Each sub-command lives with the code it runs:

    kto-lab toy figure6|figure9|ablations ...   -> toy.cli
    kto-lab train --config C.yaml [k=v ...]     -> kto_lab.sd.cli
    kto-lab push RUN_DIR REPO_ID                -> kto_lab.sd.push
    kto-lab data ...                            -> kto_lab.data.cli
    kto-lab eval ...                            -> kto_lab.eval.cli
    kto-lab synthetic ...                       -> kto_lab.synthetic.cli

Sub-command modules are imported lazily, so ``kto-lab toy`` never imports diffusers.
Bad input (a config error, a missing file) and a diverged run end with one line naming the
problem, not a traceback (exit 2 and 3); set ``KTO_LAB_TRACEBACK=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

# name -> (module with add_parser(subparsers) , help)
COMMANDS = {
    "toy": ("toy.cli", "2-D Gaussian toy: Figure 6, Figure 9, ablations"),
    "train": ("kto_lab.sd.cli", "fine-tune Stable Diffusion with any objective"),
    "push": ("kto_lab.sd.push", "upload a finished training run to the Hugging Face Hub"),
    "data": ("kto_lab.data.cli", "convert preference data to binary-feedback records"),
    "eval": ("kto_lab.eval.cli", "generate, score and compare models (win rates)"),
    "synthetic": ("kto_lab.synthetic.cli", "the synthetic shapes world: base model, synthetic users, comparison"),
}


def build_parser(argv: List[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kto-lab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = argv[0] if argv else None
    for name, (module, help_) in COMMANDS.items():
        if name == wanted:  # import only the command being run
            importlib.import_module(module).add_parser(sub, name, help_)
        else:
            sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.parse_args([args.command, "--help"])
    from .config import ConfigError
    from .sd.checkpoints import CheckpointError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, CheckpointError, FileNotFoundError, NotADirectoryError, FloatingPointError) as exc:
        if os.environ.get("KTO_LAB_TRACEBACK"):
            raise
        kind = "diverged" if isinstance(exc, FloatingPointError) else "error"
        print(f"kto-lab {args.command}: {kind}: {exc}", file=sys.stderr)
        return 3 if kind == "diverged" else 2


if __name__ == "__main__":
    sys.exit(main())
