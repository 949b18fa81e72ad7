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
and 3), as does an interrupted one (Ctrl-C: exit 130; SIGTERM while training: 143); ``kto-lab --debug ...``
shows the traceback. An unrecognized ``--option`` gets a hint: the
``key=value`` of the config field it names (``--max_steps 10`` -> ``optim.max_steps=10``), or the
fields and options it nearly spells. Help texts are shown without the docstrings' RST markup.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
from typing import List, Optional

from . import __version__

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


def plain(text: str) -> str:
    """Docstring markup as a terminal shows it: ``:class:`~a.B``` -> ``B``, double backticks dropped,
    `single` ones as 'quotes'."""
    text = re.sub(r":[a-z]+:`~?([^`]*?)`", lambda m: m.group(1).rsplit(".", 1)[-1] if "~" in m.group(0)
                  else m.group(1), text)
    text = re.sub(r"``(.+?)``", r"\1", text, flags=re.S)
    return re.sub(r"`([^`\n]+)`", r"'\1'", text)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written, less RST markup (:func:`plain`); every option's help ends
    with its default (as argparse's ArgumentDefaultsHelpFormatter, but not for flags, required
    options or ``None``)."""

    def _fill_text(self, text, width, indent):
        return super()._fill_text(plain(text), width, indent)

    def _get_help_string(self, action):
        text = plain(action.help or "")
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
    parser.add_argument("--version", action="version", version=f"kto-lab {__version__}")
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
        p.set_defaults(parser=p)  # the deepest sub-command's parser: it names unknown arguments
    return parser


def unknown_hint(args: argparse.Namespace, unknown: List[str], argv: List[str]) -> str:
    """What unrecognized arguments probably meant. A sub-command taking ``key=value`` overrides
    declares its config with ``set_defaults(config_fields=(ConfigClass, "prefix."))``; ``--max_steps 10``,
    ``--max-steps=10`` and ``--optim.max_steps 10`` then suggest ``optim.max_steps=10`` (an old name, ``--unet``,
    the field it is now: ``model.denoiser=``), another ``--name`` the fields and options it nearly spells."""
    from .config import config_fields, renamed_fields

    cls, prefix = getattr(args, "config_fields", (None, ""))
    fields = [f.name for f in config_fields(cls, prefix) if not f.section] if cls is not None else []
    renamed = renamed_fields(cls, prefix) if cls is not None else {}  # an old name: the field it is now
    options = [o for a in args.parser._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for item in (u for u in unknown if u.startswith("--")):
        name, eq, value = item[2:].partition("=")
        name = name.replace("-", "_")
        if not eq:  # the value is the next word, unless that is another option
            at = argv.index(item) + 1 if item in argv else len(argv)
            value = argv[at] if at < len(argv) and not argv[at].startswith("-") else "VALUE"
        exact = [f for f in fields if f in (name, prefix + name) or f.rsplit(".", 1)[-1] == name]
        exact += [new for old, new in renamed.items() if old in (name, prefix + name) or old.rsplit(".", 1)[-1] == name]
        if exact:
            hints.append(f"config fields are key=value: {' or '.join(f'{f}={value}' for f in exact)}")
            continue
        near = difflib.get_close_matches(name, [f.rsplit(".", 1)[-1] for f in fields], n=3, cutoff=0.6)
        close = [f"{f}=" for f in fields if f.rsplit(".", 1)[-1] in near]
        close += difflib.get_close_matches("--" + item[2:].partition("=")[0], options, n=3, cutoff=0.75)
        if close:
            hints.append(f"--{name}: did you mean {', '.join(close)}?")
        elif fields:
            hints.append(f"--{name} is not an option nor a config field ({args.parser.prog} --help lists them)")
    return "; ".join(hints)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        hint = unknown_hint(args, unknown, argv)
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}" + (f"; {hint}" if hint else ""))
    if not hasattr(args, "func"):
        parser.parse_args([args.command, "--help"])
    from .config import UserError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM during training (kto_lab.sd.interrupts)
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        print(f"kto-lab {args.command}: interrupted{': ' + message if message else ''}", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    except (UserError, FileNotFoundError, NotADirectoryError, FloatingPointError) as exc:
        if args.debug:
            raise
        kind = "diverged" if isinstance(exc, FloatingPointError) else "error"
        message = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"kto-lab {args.command}: {kind}: {message}", file=sys.stderr)
        return 3 if kind == "diverged" else 2


if __name__ == "__main__":
    sys.exit(main())
