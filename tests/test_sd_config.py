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


TRAIN_CONFIGS = ["sd15_dpo.yaml", "sd15_kto_full.yaml", "sd15_kto_lora.yaml", "sd3_kto_lora.yaml", "sdxl_kto_full.yaml",
                 "sdxl_kto_lora.yaml", "tiny_kto.yaml"]


def test_no_packaged_config_shares_one_cache_path_across_datasets():
    """Issue 21, 1: sd15/sdxl/sd3_kto_lora fixed cache_dir: runs/cache_sd15_records, so a second dataset trained
    on the first one's latents and labels. A packaged config caches per dataset and model (auto) or not at all."""
    import yaml

    assert sorted(TRAIN_CONFIGS) == sorted(p.name for p in CONFIGS.glob("*.yaml")
                                           if p.name not in ("eval_template.yaml", "accelerate_deepspeed_zero2.yaml"))
    for name in TRAIN_CONFIGS:
        assert load_train_config(CONFIGS / name).data.cache_dir in (None, "auto"), name
        assert yaml.safe_load((CONFIGS / name).read_text()).get("data", {}).get("cache_dir") in (None, "auto"), name


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


def test_the_family_fills_what_it_decides():
    """resolution, compile blocks, LoRA targets, validation guidance and the schedule's options: null until the
    family is known, then the family's; a value set in the config stays."""
    from kto_lab.sd.families import FAMILIES

    plain = load_train_config(None).resolved()
    assert (plain.data.resolution, plain.model.compile_blocks, plain.lora.target_modules,
            plain.logging.validation_guidance_scale, plain.schedule.density) == (None, None, None, None, None)
    for f in FAMILIES.values():
        cfg = load_train_config(None).resolved(f)
        assert cfg.data.resolution == f.default_resolution and cfg.model.compile_blocks == list(f.compile_blocks)
        assert cfg.lora.target_modules == list(f.lora_target_modules)
        assert cfg.logging.validation_guidance_scale == f.validation_guidance_scale == 7.5  # the CFG families' 7.5
        assert {k: getattr(cfg.schedule, k) for k in f.schedule_type.default_options()} == \
            f.schedule_type.default_options()
    mine = load_train_config(None, ["logging.validation_guidance_scale=3.0", "lora.target_modules=[to_q]",
                                    "model.compile_blocks=[ResnetBlock2D]"]).resolved(FAMILIES["sd3"])
    assert (mine.logging.validation_guidance_scale, mine.lora.target_modules, mine.model.compile_blocks) == \
        (3.0, ["to_q"], ["ResnetBlock2D"])


def test_a_renamed_key_is_read_under_its_new_name_with_a_one_line_note():
    import warnings

    from kto_lab.eval.run import EvalConfig

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_train_config(None, ["model.unet=/runs/a/unet"])
    assert cfg.model.denoiser == "/runs/a/unet"
    notes = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert notes == ["model.unet is now called model.denoiser: read as model.denoiser"]
    with pytest.raises(ConfigError, match=r"model\.unet and model\.denoiser are both set: .* keep only model\.denoi"):
        load_train_config(None, ["model.unet=/a", "model.denoiser=/b"])
    from kto_lab.config import load_config

    evaluation = load_config(EvalConfig, None, {"prompts": "p.txt", "models": [{"name": "a", "pipeline": "p",
                                                                                 "unet": "/runs/a/unet"}]})
    assert evaluation.models[0].denoiser == "/runs/a/unet"  # an evaluation config's models[i].unet too


def test_print_config_shows_the_familys_defaults(tiny_sd3_path, capsys):
    import yaml

    from kto_lab.cli import main

    assert main(["train", "--print-config", f"model.pretrained={tiny_sd3_path}"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["compile_blocks"] == ["JointTransformerBlock"] and printed["data"]["resolution"] == 1024
    assert printed["schedule"]["density"] == "logit_normal"
    assert main(["train", "--print-config"]) == 0  # a hub id that is not cached: the family's fields stay null
    assert yaml.safe_load(capsys.readouterr().out)["lora"]["target_modules"] is None


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
