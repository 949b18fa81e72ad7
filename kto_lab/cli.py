"""The ``kto-lab`` command. Each sub-command lives with the code it runs:

    kto-lab toy figure6|figure9|ablations ...   -> toy.cli
    kto-lab train --config C.yaml [k=v ...]     -> kto_lab.sd.cli
    kto-lab push RUN_DIR REPO_ID                -> kto_lab.sd.push
    kto-lab data ...                            -> kto_lab.data.cli
    kto-lab label serve|progress ...            -> kto_lab.label.cli
    kto-lab rounds --config C.yaml [k=v ...]    -> kto_lab.loop.cli
    kto-lab eval ...                            -> kto_lab.eval.cli
    kto-lab synthetic ...                       -> kto_lab.synthetic.cli

Sub-command modules are imported lazily, so ``kto-lab toy`` never imports diffusers.
Bad input (any :class:`kto_lab.config.UserError`: a config value, a file, a table row; or a
missing file) and a diverged run end with one line naming the problem, not a traceback (exit 2
and 3); ``kto-lab --debug ...`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

DESCRIPTION = """\
Align text-to-image diffusion models with per-image binary feedback: Diffusion-KTO and its
baselines (DPO, SFT, CSFT, BCE), from a 2-D toy to Stable Diffusion, with the papers' evaluation.
Run `kto-lab COMMAND --help` for a command's options."""

# name -> (module with add_parser(subparsers) , help)
COMMANDS = {
    "toy": ("toy.cli", "2-D Gaussian toy: Figure 6, Figure 9, ablations"),
    "train": ("kto_lab.sd.cli", "fine-tune Stable Diffusion with any objective"),
    "push": ("kto_lab.sd.push", "upload a finished training run to the Hugging Face Hub"),
    "data": ("kto_lab.data.cli", "convert preference data to binary-feedback records"),
    "label": ("kto_lab.label.cli", "label images by hand in a browser: likes and dislikes become records"),
    "rounds": ("kto_lab.loop.cli", "align a model to a labeler's taste in rounds: generate, label, train, evaluate"),
    "eval": ("kto_lab.eval.cli", "generate, score and compare models (win rates)"),
    "synthetic": ("kto_lab.synthetic.cli", "the synthetic shapes world: base model, synthetic users, comparison"),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; every option's help ends with its default (as
    argparse's ArgumentDefaultsHelpFormatter, but not for flags, required options or ``None``)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or action.required or action.default in (None, False, argparse.SUPPRESS):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            text += " (default: %(default)s)"
        return text


def parsers(parser: argparse.ArgumentParser):
    """``parser`` and every sub-command parser under it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield from parsers(sub)


def build_parser(argv: List[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kto-lab", description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_) in COMMANDS.items():
        if name == wanted:  # import only the command being run
            importlib.import_module(module).add_parser(sub, name, help_)
        else:
            sub.add_parser(name, help=help_, add_help=False)
    for p in parsers(parser):
        p.formatter_class = HelpFormatter
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.parse_args([args.command, "--help"])
    from .config import UserError

    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, NotADirectoryError, FloatingPointError) as exc:
        if args.debug:
            raise
        kind = "diverged" if isinstance(exc, FloatingPointError) else "error"
        message = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"kto-lab {args.command}: {kind}: {message}", file=sys.stderr)
        return 3 if kind == "diverged" else 2


if __name__ == "__main__":
    sys.exit(main())
