"""The README's first run, as a new user meets it: the evaluation config it names is shipped
(``kto-lab eval init``) and matches the training command above it."""

import re
from pathlib import Path

import pytest
import yaml

from kto_lab.cli import main
from kto_lab.config import load_config
from kto_lab.eval.run import EvalConfig

REPO = Path(__file__).resolve().parents[1]


def test_eval_init_writes_the_template_of_the_readme_first_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "init"]) == 0
    assert "kto-lab eval run --config eval.yaml" in capsys.readouterr().out
    cfg = load_config(EvalConfig, tmp_path / "eval.yaml")  # every key is an EvalConfig field, and valid
    readme = (REPO / "README.md").read_text()
    train = re.search(r"kto-lab train --config (\S+) .*output_dir=(\S+)\nkto-lab eval init", readme)
    trained = yaml.safe_load((REPO / "kto_lab" / "configs" / f"{train.group(1)}.yaml").read_text())
    kto, base = cfg.models
    assert kto.lora == train.group(2) and kto.pipeline == base.pipeline == trained["model"]["pretrained"]
    assert "kto-lab eval init" in readme and "kto-lab eval run --config eval.yaml" in readme

    (tmp_path / "eval.yaml").write_text("mine")
    assert main(["eval", "init"]) == 2  # an existing file is kept
    assert (tmp_path / "eval.yaml").read_text() == "mine"
    assert "already exists" in capsys.readouterr().err
