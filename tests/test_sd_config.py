"""SD trainer config: paper defaults, early and clear errors (no model is loaded here)."""

from pathlib import Path

import pytest

from kto_lab.config import ConfigError
from kto_lab.sd.config import TrainConfig, load_train_config

CONFIGS = Path(__file__).resolve().parents[1] / "kto_lab" / "configs"


def test_paper_defaults_full_and_lora():
    full = load_train_config(None).resolved()
    assert (full.optim.learning_rate, full.optim.warmup_steps, full.optim.max_steps) == (1e-7, 1000, 10_000)  # A.1
    assert (full.objective.beta, full.data.gamma, full.optim.batch_size, full.optim.weight_decay) == (5000.0, 0.8, 2, 0.0)
    lora = load_train_config(None, ["lora.enabled=true"]).resolved()
    assert (lora.optim.learning_rate, lora.optim.warmup_steps, lora.lora.rank, lora.lora.alpha) == (1e-4, 500, 8, 8.0)
    assert lora.optim.weight_decay == 0.01
    explicit = load_train_config(None, ["lora.enabled=true", "optim.learning_rate=3e-5"]).resolved()
    assert explicit.optim.learning_rate == 3e-5


@pytest.mark.parametrize("override, named", [
    (["optim.lr=1"], "optim.lr"),
    (["lora.rank=0"], "lora.rank"),
    (["data.gamma=1.5"], "gamma"),
    (["objective.utility=nope"], "nope"),
    (["objective.objective=spin"], "spin"),
    (["optim.mixed_precision=fp8"], "optim.mixed_precision"),
    (["data.resolution=100"], "data.resolution"),
    (["lora.reference=copy"], "lora.reference"),
    (["model.reference=/x", "lora.enabled=true"], "frozen_copy"),
    (["model.compile=partial"], "model.compile"),
    (["model.compile_mode=fastest"], "model.compile_mode"),
    (["model.compile=regional", "model.compile_blocks=[]"], "model.compile_blocks"),
    (["objective.reference_point_fraction=0"], "reference_point_fraction"),
    (["objective.reference_point=none", "objective.reference_point_fraction=0.5"], "reference_point_fraction"),
])
def test_bad_values_name_the_field(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_train_config(None, override)


def test_config_errors_come_before_any_model_load(tmp_path):
    from kto_lab.sd.trainer import Trainer

    missing_model = tmp_path / "no_model_inside"  # passes the path check; loading it would fail
    missing_model.mkdir()
    (missing_model / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    missing_model = str(missing_model)
    with pytest.raises(ConfigError, match="optim.lr"):
        Trainer({"model": {"pretrained": missing_model}, "data": {"train": ["x.csv"]}}, overrides=["optim.lr=1"])
    with pytest.raises(ConfigError, match="data.train is empty"):
        Trainer({"model": {"pretrained": missing_model}})
    with pytest.raises(FileNotFoundError, match="checkpoint.resume"):
        Trainer({"model": {"pretrained": missing_model}, "data": {"train": ["x.csv"]},
                 "checkpoint": {"resume": str(tmp_path / "nope")}})
    # a missing record table is named before the (missing) model is loaded
    with pytest.raises(FileNotFoundError, match=r"data\.train.*no_such_table\.csv"):
        Trainer({"model": {"pretrained": missing_model}, "data": {"train": [str(tmp_path / "no_such_table.csv")]}})


@pytest.mark.parametrize("name", ["sd15_kto_full.yaml", "sd15_kto_lora.yaml", "sd15_dpo.yaml", "tiny_kto.yaml"])
def test_shipped_configs_load(name):
    cfg = load_train_config(CONFIGS / name)
    assert isinstance(cfg, TrainConfig)


def test_cli_rejects_unknown_key_with_exit_code(capsys):
    from kto_lab.cli import main

    assert main(["train", "--config", str(CONFIGS / "tiny_kto.yaml"), "optim.bogus=1"]) == 2
    assert "optim.bogus" in capsys.readouterr().err


def test_sd15_unet_config_is_sd15():
    import json

    cfg = json.loads((CONFIGS / "sd15_unet.json").read_text())
    assert cfg["block_out_channels"] == [320, 640, 1280, 1280] and cfg["cross_attention_dim"] == 768
    assert cfg["layers_per_block"] == 2 and cfg["sample_size"] == 64 and cfg["attention_head_dim"] == 8


@pytest.mark.parametrize("value, meaning", [(True, "full"), (False, "none"), ("regional", "regional"), ("none", "none")])
def test_model_compile_is_a_choice_and_reads_the_old_booleans(value, meaning):
    assert load_train_config(None, {"model": {"compile": value}}).model.compile == meaning
    assert load_train_config(None, [f"model.compile={str(value).lower()}"]).model.compile == meaning


def test_a_run_that_ends_inside_its_warm_up_is_a_one_line_warning():
    import warnings

    from kto_lab.sd.config import load_train_config

    def warned(*overrides):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_train_config("sd15_kto_lora", list(overrides)).resolved()
        return [str(w.message) for w in caught if "warm-up" in str(w.message)]

    [message] = warned("optim.max_steps=10")  # the README's first run: warm-up 500
    assert message == ("optim.warmup_steps=500 >= optim.max_steps=10: the run ends inside its warm-up, its learning rate "
                       "peaking at 1.8e-06 (1.8% of optim.learning_rate=0.0001); the weights will barely move (close "
                       "to a no-op): lower optim.warmup_steps or raise optim.max_steps")
    [message] = warned("optim.max_steps=400")  # inside the warm-up, but at 80 % of the rate: no "no-op"
    assert "peaking at 8e-05 (79.8%" in message and "no-op" not in message
    assert warned("optim.max_steps=501") == [] and warned("optim.max_steps=10", "optim.warmup_steps=0") == []
