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


@pytest.mark.parametrize("argv, hint", [
    (["train", "--max_steps", "10"], "config fields are key=value: optim.max_steps=10"),
    (["train", "--config", "sd15_kto_lora", "--max-steps=10", "data.train=[a.csv]"], "optim.max_steps=10"),
    (["train", "--optim.learning_rate", "1e-4"], "config fields are key=value: optim.learning_rate=1e-4"),
    (["train", "--seed", "3"], "seed=3 or data.seed=3"),
    (["train", "--unet", "runs/a/unet"], "config fields are key=value: model.denoiser=runs/a/unet"),  # its old name
    (["train", "--betaa", "3"], "--betaa: did you mean objective.beta=?"),
    (["train", "--print_config"], "did you mean --print-config?"),
    (["train", "--lr", "1e-4"], "--lr is not an option nor a config field (kto-lab train --help lists them)"),
    (["eval", "run", "--n_per_prompt", "2"], "config fields are key=value: n_per_prompt=2"),
    (["synthetic", "sweep", "--plan", "frontier", "--base", "b", "--out", "o", "--seeds", "[0]"], "sweep.seeds=[0]"),
])
def test_an_unknown_option_names_the_config_field_it_means(argv, hint, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "unrecognized arguments" in err.splitlines()[-1] and hint in err, err


def test_version(capsys):
    import importlib.metadata

    import kto_lab

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"kto-lab {kto_lab.__version__}"
    assert importlib.metadata.version("kto-lab") == kto_lab.__version__  # one version: pyproject reads it


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_shows_no_rst_markup(command):
    """Descriptions come from docstrings (``kto-lab data``, :class:`~x.Y`): the terminal gets plain text."""
    for p in parsers(build_parser([command])):
        text = p.format_help()
        assert "`" not in text and ":class:" not in text and ":func:" not in text, (p.prog, text)
