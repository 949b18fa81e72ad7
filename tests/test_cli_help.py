"""``--help``: every flag explained with its default; train's config fields generated from the dataclasses."""

import argparse

import pytest

from kto_lab.cli import COMMANDS, build_parser, main, parsers
from kto_lab.config import config_fields
from kto_lab.sd.config import TrainConfig


def test_every_train_config_field_has_help_text():
    """A field added to any section of TrainConfig needs a comment (above it or trailing): that
    comment is its line in `kto-lab train --help`."""
    missing = [f.name for f in config_fields(TrainConfig) if not f.help]
    assert not missing, f"config fields without a comment: {missing}"


def test_train_help_lists_every_field_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for f in config_fields(TrainConfig):
        assert (f"{f.name}:" if f.section else f"  {f.name}=") in text, f.name
    assert "  optim.max_steps=10000\n      optimizer steps (A.1: 10,000; LoRA study: 10,000)" in text
    assert "  optim.mixed_precision=no\n" in text
    assert "  lora.target_modules=null\n      The modules that get adapters; null = the family's" in text
    assert "packaged config" in text and "sd15_kto_lora" in text
    assert "Multi-GPU / multi-node: ``accelerate launch [--config_file" not in text  # no cut-off docstring line


def test_top_level_help_is_a_description_not_a_fragment(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "Each sub-command lives with the code it runs:" not in text
    assert "Diffusion-KTO" in text and "--debug" in text


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_has_help_and_shows_its_default(command):
    parser = build_parser([command])
    for p in parsers(parser):
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{p.prog}: {'/'.join(action.option_strings) or action.dest} has no help"
        p.format_help()  # every help string formats (a stray % would raise here)


def test_defaults_are_shown(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "images per prompt (paper: 5) (default: 5)" in text and "(default: float32)" in text
    assert "(default: None)" not in text
